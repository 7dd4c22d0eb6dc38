package placement

import (
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
)

// compiled is the indexed, read-only form of a State. Nodes are sorted by
// name, so "lowest index" is "first by name" and every tie-break by index
// is a tie-break by name. Groups keep their input order (so a compiled
// state can be extended by one group without renumbering the others).
type compiled struct {
	st       State
	nodes    []cnode
	groups   []*cgroup // shared with the states extended from this one: read-only
	classes  []cclass
	sites    []string
	nodeIdx  map[string]int32
	groupIdx groupIndex
	assign0  []int32 // initial assignment, -1 = not running
	lost0    []bool  // assigned to a node the state does not know
	rank     []int32 // position of each group in placement order
	totCPU   int64   // capacity of all nodes that take work
	totMem   int64
}

type cnode struct {
	name           string
	site           int32
	cpuCap, memCap int64
	// wLoad / capacity, for loadScore.
	cpuScale, memScale float64
	overcommit         float64
	up                 bool
	draining           bool
	witness            bool
	labels             map[string]string
}

type cgroup struct {
	name     string
	cpu, mem int64
	prio     int
	ha       bool
	anyOwner bool    // no possible owners and no required labels
	owners   []int32 // ascending, when !anyOwner
	ownerSet []uint64
	pref     []int32 // preferred owners in order
	classes  []cref
	prefSite int32 // -1: no preference; -2: a site no node is in
	homeSite int32 // the site of the node it runs on in the State; -1: none
	dirty    int64
	src      Group
}

type cref struct {
	c            int32
	hard, across bool
}

type member struct {
	g            int32
	hard, across bool
}

type cclass struct {
	name    string
	members []member
}

func compile(st State) *compiled {
	c := &compiled{st: st, nodeIdx: map[string]int32{}, groupIdx: groupIndex{base: make(map[string]int32, len(st.Groups))}}
	ns := make([]Node, 0, len(st.Nodes))
	seen := map[string]bool{}
	for _, n := range st.Nodes {
		if n.Name == "" || seen[n.Name] {
			continue
		}
		seen[n.Name] = true
		ns = append(ns, n)
	}
	sort.SliceStable(ns, func(i, j int) bool { return ns[i].Name < ns[j].Name })
	siteIdx := map[string]int32{}
	for _, n := range ns {
		s, ok := siteIdx[n.Site]
		if !ok {
			s = int32(len(c.sites))
			siteIdx[n.Site] = s
			c.sites = append(c.sites, n.Site)
		}
		oc := n.CPUOvercommit
		if oc <= 0 {
			oc = 1
		}
		cn := cnode{
			name: n.Name, site: s, memCap: max(n.MemoryBytes, 0), overcommit: oc,
			cpuCap: int64(float64(max(n.CPUMillis, 0)) * oc),
			up:     n.Up, draining: n.Draining, witness: n.Witness, labels: n.Labels,
		}
		if cn.cpuCap > 0 {
			cn.cpuScale = wLoad / float64(cn.cpuCap)
		}
		if cn.memCap > 0 {
			cn.memScale = wLoad / float64(cn.memCap)
		}
		c.nodeIdx[n.Name] = int32(len(c.nodes))
		c.nodes = append(c.nodes, cn)
		if cn.up && !cn.draining && !cn.witness {
			c.totCPU += cn.cpuCap
			c.totMem += cn.memCap
		}
	}
	// One array holds the groups compiled here, for locality; the
	// pointers let an extension share them instead of copying them.
	cgs := make([]cgroup, 0, len(st.Groups))
	for _, g := range st.Groups {
		if g.Name == "" {
			continue
		}
		if _, dup := c.groupIdx.base[g.Name]; dup {
			continue
		}
		c.groupIdx.base[g.Name] = int32(len(cgs))
		cgs = append(cgs, c.cgroupOf(g, siteIdx))
	}
	c.groups = make([]*cgroup, len(cgs))
	for i := range cgs {
		c.groups[i] = &cgs[i]
	}
	c.assign0 = make([]int32, len(c.groups))
	c.lost0 = make([]bool, len(c.groups))
	for i := range c.groups {
		c.assign0[i] = -1
		c.groups[i].homeSite = -1
		if nn, ok := st.Assign[c.groups[i].name]; ok {
			if n, ok := c.nodeIdx[nn]; ok {
				c.assign0[i] = n
				c.groups[i].homeSite = c.nodes[n].site
			} else {
				c.lost0[i] = true
			}
		}
	}
	c.index()
	return c
}

// cgroupOf resolves names to indices. Unknown node names in
// PossibleOwners are dropped: a group whose possible owners are all
// unknown can run nowhere, which is what its author asked for.
func (c *compiled) cgroupOf(g Group, siteIdx map[string]int32) cgroup {
	cg := cgroup{
		name: g.Name, cpu: max(g.CPUMillis, 0), mem: max(g.MemoryBytes, 0),
		prio: g.Priority, ha: g.HA, dirty: max(g.DirtyRateBytesPerSec, 0), prefSite: -1, homeSite: -1, src: g,
	}
	cg.anyOwner = len(g.PossibleOwners) == 0 && len(g.RequireLabels) == 0 && len(g.AvoidNodes) == 0 && len(g.CannotRun) == 0
	if !cg.anyOwner {
		allowed := make([]bool, len(c.nodes))
		if len(g.PossibleOwners) == 0 {
			for i := range allowed {
				allowed[i] = true
			}
		}
		for _, o := range g.PossibleOwners {
			if n, ok := c.nodeIdx[o]; ok {
				allowed[n] = true
			}
		}
		for _, o := range g.AvoidNodes {
			if n, ok := c.nodeIdx[o]; ok {
				allowed[n] = false
			}
		}
		for o := range g.CannotRun {
			if n, ok := c.nodeIdx[o]; ok {
				allowed[n] = false
			}
		}
		cg.ownerSet = make([]uint64, (len(c.nodes)+63)/64)
		for n := range allowed {
			if allowed[n] && hasLabels(c.nodes[n].labels, g.RequireLabels) {
				cg.owners = append(cg.owners, int32(n))
				cg.ownerSet[n/64] |= 1 << (n % 64)
			}
		}
	}
	seenPref := map[int32]bool{}
	for _, p := range g.PreferredOwners {
		if n, ok := c.nodeIdx[p]; ok && !seenPref[n] {
			seenPref[n] = true
			cg.pref = append(cg.pref, n)
		}
	}
	if g.PreferredSite != "" {
		cg.prefSite = -2
		if s, ok := siteIdx[g.PreferredSite]; ok {
			cg.prefSite = s
		}
	}
	return cg
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// index builds the class membership lists and the placement order.
func (c *compiled) index() {
	classIdx := map[string]int32{}
	c.classes = c.classes[:0]
	for gi := range c.groups {
		g := c.groups[gi]
		g.classes = g.classes[:0:0]
		for _, cl := range g.src.AntiAffinity {
			if cl.Name == "" {
				continue
			}
			ci, ok := classIdx[cl.Name]
			if !ok {
				ci = int32(len(c.classes))
				classIdx[cl.Name] = ci
				c.classes = append(c.classes, cclass{name: cl.Name})
			}
			g.classes = append(g.classes, cref{c: ci, hard: cl.Hard, across: cl.AcrossSites})
			c.classes[ci].members = append(c.classes[ci].members, member{g: int32(gi), hard: cl.Hard, across: cl.AcrossSites})
		}
	}
	// Members by name, so that whatever reads "the first member" (the
	// reason a node is forbidden) does not depend on input order.
	for ci := range c.classes {
		ms := c.classes[ci].members
		sort.Slice(ms, func(i, j int) bool { return c.groups[ms[i].g].name < c.groups[ms[j].g].name })
	}
	order := make([]int32, len(c.groups))
	for i := range order {
		order[i] = int32(i)
	}
	size := make([]float64, len(c.groups))
	for i := range c.groups {
		size[i] = c.size(int32(i))
	}
	sort.Slice(order, func(i, j int) bool {
		return orderLess(c.groups[order[i]], c.groups[order[j]], size[order[i]], size[order[j]])
	})
	c.rank = make([]int32, len(c.groups))
	for r, g := range order {
		c.rank[g] = int32(r)
	}
}

// orderLess is the placement order: priority first (the lower first),
// then the larger first, then by name. sa and sb are a's and b's sizes.
func orderLess(a, b *cgroup, sa, sb float64) bool {
	if a.prio != b.prio {
		return a.prio < b.prio
	}
	if sa != sb {
		return sa > sb
	}
	return a.name < b.name
}

// before reports whether group a comes before b in the placement order.
func (c *compiled) before(a, b int32) bool {
	return orderLess(c.groups[a], c.groups[b], c.size(a), c.size(b))
}

// size is a group's demand as a fraction of the cluster, in its larger
// dimension: the measure first-fit decreasing sorts by.
func (c *compiled) size(g int32) float64 {
	gg := c.groups[g]
	var a, b float64
	if c.totCPU > 0 {
		a = float64(gg.cpu) / float64(c.totCPU)
	}
	if c.totMem > 0 {
		b = float64(gg.mem) / float64(c.totMem)
	}
	return math.Max(a, b)
}

// withGroup returns a compiled state in which g replaces the group of the
// same name (which must not be running) or is appended. Existing group
// indices do not change, so plans computed on c remain meaningful.
//
// An appended group, the leader's case for every start, shares c's
// groups and index and adds to them: copying 10,000 groups for each
// admission was half of its cost (BenchmarkAdmitChain).
func (c *compiled) withGroup(g Group) (*compiled, int32) {
	siteIdx := map[string]int32{}
	for i, s := range c.sites {
		siteIdx[s] = int32(i)
	}
	nc := *c
	cg := c.cgroupOf(g, siteIdx)
	if gi, ok := c.groupIdx.get(g.Name); ok {
		// A stopped group of the name: its spec may differ in anything
		// the index reads, so the index is built again, over copies,
		// since index writes each group's classes.
		cgs := make([]cgroup, len(c.groups))
		nc.groups = make([]*cgroup, len(c.groups))
		for i, og := range c.groups {
			cgs[i] = *og
			nc.groups[i] = &cgs[i]
		}
		cg.homeSite = c.groups[gi].homeSite
		cgs[gi] = cg
		nc.classes = nil
		nc.index()
		return &nc, gi
	}
	gi := int32(len(c.groups))
	nc.groups = append(c.groups[:gi:gi], &cg)
	nc.groupIdx = c.groupIdx.with(g.Name, gi)
	nc.assign0 = append(c.assign0[:gi:gi], -1)
	nc.lost0 = append(c.lost0[:gi:gi], false)
	nc.indexLast()
	return &nc, gi
}

// indexLast is index for a state that differs from the one it was
// extended from by its last group, appended: the new group joins its
// classes, and takes its place in the order.
func (c *compiled) indexLast() {
	gi := int32(len(c.groups) - 1)
	g := c.groups[gi]
	if len(g.src.AntiAffinity) > 0 {
		c.classes = append([]cclass(nil), c.classes...)
		for _, cl := range g.src.AntiAffinity {
			if cl.Name == "" {
				continue
			}
			ci := int32(slices.IndexFunc(c.classes, func(cc cclass) bool { return cc.name == cl.Name }))
			if ci < 0 {
				ci = int32(len(c.classes))
				c.classes = append(c.classes, cclass{name: cl.Name})
			}
			g.classes = append(g.classes, cref{c: ci, hard: cl.Hard, across: cl.AcrossSites})
			// Members by name, as index orders them; a copy, as the
			// list is shared with the state extended from.
			ms := c.classes[ci].members
			at, _ := slices.BinarySearchFunc(ms, g.name, func(m member, name string) int { return strings.Compare(c.groups[m.g].name, name) })
			c.classes[ci].members = slices.Insert(slices.Clip(ms), at, member{g: gi, hard: cl.Hard, across: cl.AcrossSites})
		}
	}
	// Its position is the count of groups before it in the order; those
	// at or after that position move down one.
	var at int32
	for o := range gi {
		if c.before(o, gi) {
			at++
		}
	}
	rank := make([]int32, len(c.groups))
	for o, r := range c.rank[:gi] {
		if r >= at {
			r++
		}
		rank[o] = r
	}
	rank[gi] = at
	c.rank = rank
}

// groupIndex finds a group by name: base, shared with the states
// extended from this one, and the names appended since, few, in added.
// Copying a map of 10,000 names for each admission cost more than the
// admission's search.
type groupIndex struct {
	base  map[string]int32
	added map[string]int32
}

func (x groupIndex) get(name string) (int32, bool) {
	if i, ok := x.added[name]; ok {
		return i, true
	}
	i, ok := x.base[name]
	return i, ok
}

// with is x with name at i. The added names are merged into a new base
// once they are many, so that a copy stays small and a base is copied
// once per maxAdded extensions.
func (x groupIndex) with(name string, i int32) groupIndex {
	const maxAdded = 64
	if len(x.added) >= maxAdded {
		base := make(map[string]int32, len(x.base)+len(x.added)+1)
		maps.Copy(base, x.base)
		maps.Copy(base, x.added)
		base[name] = i
		return groupIndex{base: base}
	}
	added := make(map[string]int32, len(x.added)+1)
	maps.Copy(added, x.added)
	added[name] = i
	return groupIndex{base: x.base, added: added}
}

// engine is a mutable placement state over a compiled snapshot: who runs
// where, what is used, which nodes are failed. Every change goes through
// move, which logs it, so a what-if (a failure set, a candidate move) is
// applied and rolled back in time proportional to what it changed.
type engine struct {
	c        *compiled
	assign   []int32
	lost     []bool
	cpuUsed  []int64
	memUsed  []int64
	up       []bool
	eligible []bool
	failed   []bool
	log      []undo
	// failedWord is how reasons name a node in failed: "failed" in restart
	// plans, "excluded" for Place's Exclude.
	failedWord string

	// searchBudget is what is left of the exact search's budget in the
	// current reserve check.
	searchBudget int

	// scratch for prepare: valid where the stamp equals e.stamp.
	stamp       uint32
	forbidStamp []uint32
	forbidBy    []int32 // the member that forbids the node
	softStamp   []uint32
	softCnt     []int32
	prefStamp   []uint32
	prefRank    []int32
	siteStamp   []uint32
	siteCnt     []int32
}

type undo struct {
	g, from int32
	lost    bool
}

func newEngine(c *compiled) *engine {
	nN := len(c.nodes)
	e := &engine{
		c:           c,
		assign:      append([]int32(nil), c.assign0...),
		lost:        append([]bool(nil), c.lost0...),
		cpuUsed:     make([]int64, nN),
		memUsed:     make([]int64, nN),
		up:          make([]bool, nN),
		eligible:    make([]bool, nN),
		failed:      make([]bool, nN),
		forbidStamp: make([]uint32, nN),
		forbidBy:    make([]int32, nN),
		softStamp:   make([]uint32, nN),
		softCnt:     make([]int32, nN),
		prefStamp:   make([]uint32, nN),
		prefRank:    make([]int32, nN),
		siteStamp:   make([]uint32, len(c.sites)),
		siteCnt:     make([]int32, len(c.sites)),
		failedWord:  "failed",
	}
	for i, n := range c.nodes {
		e.up[i] = n.up
		e.eligible[i] = n.up && !n.draining && !n.witness
	}
	for g, n := range e.assign {
		if n >= 0 {
			e.cpuUsed[n] += c.groups[g].cpu
			e.memUsed[n] += c.groups[g].mem
		}
	}
	return e
}

// clone copies the mutable state so that a read-only snapshot (inside a
// Reserve) can answer what-ifs without being changed.
func (e *engine) clone() *engine {
	nN := len(e.c.nodes)
	return &engine{
		c:           e.c,
		assign:      append([]int32(nil), e.assign...),
		lost:        append([]bool(nil), e.lost...),
		cpuUsed:     append([]int64(nil), e.cpuUsed...),
		memUsed:     append([]int64(nil), e.memUsed...),
		up:          append([]bool(nil), e.up...),
		eligible:    append([]bool(nil), e.eligible...),
		failed:      append([]bool(nil), e.failed...),
		forbidStamp: make([]uint32, nN),
		forbidBy:    make([]int32, nN),
		softStamp:   make([]uint32, nN),
		softCnt:     make([]int32, nN),
		prefStamp:   make([]uint32, nN),
		prefRank:    make([]int32, nN),
		siteStamp:   make([]uint32, len(e.c.sites)),
		siteCnt:     make([]int32, len(e.c.sites)),
		failedWord:  e.failedWord,
	}
}

// withGroup returns a clone of e over nc (c extended by one group, see
// compiled.withGroup).
func (e *engine) withGroup(nc *compiled) *engine {
	ne := e.clone()
	ne.c = nc
	for len(ne.assign) < len(nc.groups) {
		ne.assign = append(ne.assign, -1)
		ne.lost = append(ne.lost, false)
	}
	return ne
}

func (e *engine) move(g, to int32) {
	from := e.assign[g]
	e.log = append(e.log, undo{g: g, from: from, lost: e.lost[g]})
	gg := e.c.groups[g]
	if from >= 0 {
		e.cpuUsed[from] -= gg.cpu
		e.memUsed[from] -= gg.mem
	}
	if to >= 0 {
		e.cpuUsed[to] += gg.cpu
		e.memUsed[to] += gg.mem
	}
	e.assign[g] = to
	e.lost[g] = false
}

func (e *engine) rollback(mark int) {
	for i := len(e.log) - 1; i >= mark; i-- {
		u := e.log[i]
		gg := e.c.groups[u.g]
		if to := e.assign[u.g]; to >= 0 {
			e.cpuUsed[to] -= gg.cpu
			e.memUsed[to] -= gg.mem
		}
		if u.from >= 0 {
			e.cpuUsed[u.from] += gg.cpu
			e.memUsed[u.from] += gg.mem
		}
		e.assign[u.g] = u.from
		e.lost[u.g] = u.lost
	}
	e.log = e.log[:mark]
}

// running reports whether group g is running on a live node and so counts
// for anti-affinity.
func (e *engine) running(g int32) bool {
	n := e.assign[g]
	return n >= 0 && e.up[n] && !e.failed[n]
}

// needsRestart: an HA group whose node is down, failed, or unknown.
func (e *engine) needsRestart(g int32) bool {
	if !e.c.groups[g].ha {
		return false
	}
	n := e.assign[g]
	if n < 0 {
		return e.lost[g]
	}
	return !e.up[n] || e.failed[n]
}

// prepare fills the per-node scratch for group g: nodes forbidden by hard
// anti-affinity, soft anti-affinity counts per node, class members per
// site, and preferred owner ranks. Its cost is the size of g's classes,
// not the number of nodes, and the node scan that follows reads it in
// O(1) per node.
func (e *engine) prepare(g int32) {
	e.stamp++
	if e.stamp == 0 {
		clear(e.forbidStamp)
		clear(e.softStamp)
		clear(e.prefStamp)
		clear(e.siteStamp)
		e.stamp = 1
	}
	s := e.stamp
	gg := e.c.groups[g]
	for _, cr := range gg.classes {
		for _, m := range e.c.classes[cr.c].members {
			if m.g == g || !e.running(m.g) {
				continue
			}
			n := e.assign[m.g]
			if cr.hard || m.hard {
				if e.forbidStamp[n] != s {
					e.forbidStamp[n] = s
					e.forbidBy[n] = m.g
				}
			} else {
				if e.softStamp[n] != s {
					e.softStamp[n] = s
					e.softCnt[n] = 0
				}
				e.softCnt[n]++
			}
			if cr.across || m.across {
				site := e.c.nodes[n].site
				if e.siteStamp[site] != s {
					e.siteStamp[site] = s
					e.siteCnt[site] = 0
				}
				e.siteCnt[site]++
			}
		}
	}
	for i, n := range gg.pref {
		e.prefStamp[n] = s
		e.prefRank[n] = int32(i)
	}
}

// Score weights. The score is one integer, but the weights make it
// lexicographic, most important first: each tier's step is larger than
// the whole range of the tiers below it (counts are capped at 9 so the
// ranges stay bounded):
//
//	soft anti-affinity  −20,000,000 per partner on the node
//	site spread          −2,000,000 per partner in the node's site
//	preferred owners       +200,000 per place before the end of the list
//	preferred site         +100,000 in it (or no preference)
//	home site               +50,000 in the site of the node it runs (or
//	                                ran) on, or not running
//	load                    0..40,000 (spread: room left; pack: fullness)
//
// So a group goes to its first preferred owner that fits, within the
// preferred site if it can, else within the site it already runs in (a
// failover, a drain or a balancing move stays in its site, as WSFC's
// preferred site has it, where a cross-site move would cost a WAN copy
// and WAN latency to its clients), to the emptier (or fuller) node among
// equals, unless that would put it beside an anti-affinity partner.
const (
	wSoftAA   = 20_000_000
	wAcross   = 2_000_000
	wPrefStep = 200_000
	wPrefSite = 100_000
	wHomeSite = 50_000
	wLoad     = 40_000
	maxCount  = 9
)

// Strategy is how load weighs in a placement score.
type Strategy int

const (
	// Spread prefers the node with the most room left in its fuller
	// dimension (the default: failover and creation keep load even).
	Spread Strategy = iota
	// Pack prefers the node left fullest (best fit): fewer nodes in use.
	Pack
)

type scoreParts struct {
	softAA, across, prefOwn, prefSite, homeSite, load int64
}

func (p scoreParts) total() int64 {
	return p.prefOwn + p.prefSite + p.homeSite + p.load - p.softAA - p.across
}

// maxScore is the best score group g can get: an empty node that is
// its first preferred owner, in its preferred site and its home site.
func (c *compiled) maxScore(g int32) int64 {
	return wPrefStep*int64(max(min(len(c.groups[g].pref), maxCount), 1)) + wPrefSite + wHomeSite + wLoad
}

// prefScore is the score without load and home site: what the balancer
// must not make worse when it moves a group. A move out of its home site
// is not worse by itself (balancing may have to cross sites); among
// targets, the home site still ranks first.
func (p scoreParts) prefScore() int64 { return p.total() - p.load - p.homeSite }

// parts scores g on n; prepare(g) must have run. When g already runs on
// n its own demand is not added twice.
func (e *engine) parts(g, n int32, strat Strategy) scoreParts {
	gg := e.c.groups[g]
	nd := &e.c.nodes[n]
	p := e.prefParts(g, n)
	cpu, mem := e.cpuUsed[n], e.memUsed[n]
	if e.assign[g] != n {
		cpu += gg.cpu
		mem += gg.mem
	}
	p.load = nd.loadScore(cpu, mem, strat)
	return p
}

// prefParts is parts without load. Its total is always a multiple of
// wHomeSite, which is larger than any load: a node whose prefParts total
// is lower than another's can never score higher, whatever its load.
func (e *engine) prefParts(g, n int32) scoreParts {
	gg := e.c.groups[g]
	nd := &e.c.nodes[n]
	s := e.stamp
	var p scoreParts
	if e.softStamp[n] == s {
		p.softAA = wSoftAA * int64(min(e.softCnt[n], maxCount))
	}
	if e.siteStamp[nd.site] == s {
		p.across = wAcross * int64(min(e.siteCnt[nd.site], maxCount))
	}
	switch {
	case len(gg.pref) == 0:
		p.prefOwn = wPrefStep
	case e.prefStamp[n] == s:
		l := int64(min(len(gg.pref), maxCount))
		p.prefOwn = wPrefStep * (l - min(int64(e.prefRank[n]), l-1))
	}
	if gg.prefSite == -1 || gg.prefSite == nd.site {
		p.prefSite = wPrefSite
	}
	if gg.homeSite == -1 || gg.homeSite == nd.site {
		p.homeSite = wHomeSite
	}
	return p
}

// loadScore is 0..wLoad for a node with cpu and mem in use (after the
// placement): the room left in its fuller dimension when spreading, its
// mean fullness when packing. It multiplies by a precomputed wLoad/cap
// instead of dividing (this is the inner loop of every placement); each
// product is converted to an integer before it is combined, which the Go
// spec guarantees rounds it (no fused multiply-add), so the result is the
// same on every platform.
func (nd *cnode) loadScore(cpu, mem int64, strat Strategy) int64 {
	fc := scaled(cpu, nd.cpuCap, nd.cpuScale)
	fm := scaled(mem, nd.memCap, nd.memScale)
	if strat == Pack {
		return (fc + fm) / 2
	}
	return wLoad - max(fc, fm)
}

func scaled(used, cap int64, scale float64) int64 {
	if cap <= 0 {
		return wLoad
	}
	return int64(float64(min(max(used, 0), cap)) * scale)
}

// fits is the hard check of g on n; prepare(g) must have run.
func (e *engine) fits(g, n int32) bool {
	gg := e.c.groups[g]
	if !e.eligible[n] || e.failed[n] || e.forbidStamp[n] == e.stamp {
		return false
	}
	if !gg.anyOwner && gg.ownerSet[n/64]&(1<<(n%64)) == 0 {
		return false
	}
	if e.assign[g] == n {
		return true
	}
	nd := &e.c.nodes[n]
	return e.cpuUsed[n]+gg.cpu <= nd.cpuCap && e.memUsed[n]+gg.mem <= nd.memCap
}

// best is the node g should go to, or -1. It scans only g's possible
// owners when it has them, and does O(1) work per node.
func (e *engine) best(g int32, strat Strategy) int32 {
	e.prepare(g)
	gg := e.c.groups[g]
	bestN, bestS, bestPref := int32(-1), int64(math.MinInt64), int64(math.MinInt64)
	try := func(n int32) {
		if !e.eligible[n] || e.failed[n] || e.forbidStamp[n] == e.stamp {
			return
		}
		nd := &e.c.nodes[n]
		cpu, mem := e.cpuUsed[n]+gg.cpu, e.memUsed[n]+gg.mem
		if cpu > nd.cpuCap || mem > nd.memCap {
			return
		}
		pref := e.prefParts(g, n).total()
		if pref < bestPref {
			return // loses on preferences, which load cannot make up
		}
		if s := pref + nd.loadScore(cpu, mem, strat); s > bestS {
			bestN, bestS, bestPref = n, s, pref
		}
	}
	if gg.anyOwner {
		for n := range e.c.nodes {
			try(int32(n))
		}
	} else {
		for _, n := range gg.owners {
			try(n)
		}
	}
	return bestN
}

// placeAll places gs in the given order; it stops early when stopOnFail
// and a group finds no node. Entries have n = -1 for unplaced groups.
func (e *engine) placeAll(gs []int32, strat Strategy, stopOnFail bool) (entries []planEntry, ok bool) {
	ok = true
	entries = make([]planEntry, 0, len(gs))
	for _, g := range gs {
		n := e.best(g, strat)
		if n < 0 {
			ok = false
			entries = append(entries, planEntry{g: g, n: -1})
			if stopOnFail {
				return entries, false
			}
			continue
		}
		e.move(g, n)
		entries = append(entries, planEntry{g: g, n: n})
	}
	return entries, ok
}

type planEntry struct{ g, n int32 }

func (e *engine) sortByRank(gs []int32) {
	r := e.c.rank
	sort.Slice(gs, func(i, j int) bool { return r[gs[i]] < r[gs[j]] })
}

func (e *engine) nodeNames(ns []int32) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = e.c.nodes[n].name
	}
	return out
}
