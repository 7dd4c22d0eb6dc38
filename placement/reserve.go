package placement

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// The reserve check.
//
// For every failure set F of 1..K nodes the check computes the restart
// plan the leader would execute if exactly F failed now: the HA groups
// running on F (plus any HA group already waiting for a restart because
// its node is down) are placed, most important first, on the nodes that
// remain, with every hard constraint respected. The answer is "yes" only
// when every set has a plan that places every such group; the plans are
// kept, and a real failure looks its plan up with PlanFor instead of
// searching.
//
// What is enumerated, and what is pruned:
//
//   - Only nodes that are up and not witnesses can fail "next": a node that
//     is down already failed (its groups are in every plan), and a witness
//     hosts nothing and offers no room, so failing it changes nothing.
//   - Draining nodes are enumerated: they take nothing new, but what they
//     run must be restartable when they die.
//   - A set whose nodes run no HA group displaces nothing (when nothing
//     waits for a restart): its plan is empty and trivially feasible, so
//     it is counted (Pruned) but not searched. Note what is NOT pruned: a
//     set {a, e} where e is empty is searched in full, because the plan
//     for {a} may have relied on e's room; removing capacity matters as
//     soon as anything has to be placed.
//   - Sets smaller than K are enumerated as well as sets of exactly K:
//     the greedy heuristic is not monotone (it may succeed for {a, b} and
//     fail for {a}), and the leader needs a plan for a single failure
//     whatever K is.
//
// With Spec.SiteLoss the loss of each site is one more failure set,
// searched after the node sets (see sitePass).
//
// Each set is placed by the same greedy the leader uses (Spread, priority
// order). If that leaves a group out, a second heuristic is tried (Pack,
// largest first, ignoring priority: when everything fits priority order
// does not matter), then, for sets displacing few groups, a bounded exact
// search. A plan from any of them is a concrete placement that respects
// every hard constraint. Bin packing is NP-hard, so all may fail where a
// placement exists: that makes the answer "no" where "yes" was possible
// (the conservative side), and the property tests measure how often
// against an exhaustive search.
//
// Cost: the free capacity and class indexes are built once; a set costs
// O(displaced groups × candidate nodes) and every change it makes is
// rolled back from the engine's undo log, so K = 2 on 64 nodes and 8,000
// groups (2,080 sets, ~250 groups each) takes well under a second (see
// BenchmarkReserveK2).

// MaxEnumeratedSets bounds enumeration for K > 2: beyond it the check uses
// the conservative bound in bound.go. K = 1 and K = 2 always enumerate.
const MaxEnumeratedSets = 5000

// Method says how a reserve answer was reached.
type Method string

// The methods.
const (
	MethodEnumerated Method = "enumerated"
	MethodBound      Method = "bound"
)

// Breach is a failure set after which some HA group cannot restart.
type Breach struct {
	// Failed is the failure set; empty when the state as it is (nodes
	// already down) leaves an HA group without room.
	Failed []string
	// Site is set when the failure set is the loss of this whole site
	// (Failed then holds its nodes that were up).
	Site string
	// Group is the most important HA group left without room.
	Group  string
	Reason string
}

func (b *Breach) String() string {
	switch {
	case b == nil:
		return ""
	case b.Site != "" && len(b.Failed) > 0:
		return fmt.Sprintf("if site %s fails (%s), group %q cannot restart: %s", b.Site, strings.Join(b.Failed, ","), b.Group, b.Reason)
	case len(b.Failed) == 0:
		return fmt.Sprintf("with no further failure, group %q cannot restart: %s", b.Group, b.Reason)
	case len(b.Failed) == 1:
		return fmt.Sprintf("if %s fails, group %q cannot restart: %s", b.Failed[0], b.Group, b.Reason)
	}
	return fmt.Sprintf("if %s fail, group %q cannot restart: %s", strings.Join(b.Failed, ","), b.Group, b.Reason)
}

// Headroom is free capacity left on the surviving nodes after a failure
// and its restarts: CPU in (overcommitted) millicores, memory in bytes.
// Negative values are a shortfall. It is an aggregate: it does not say
// that one group of that size would fit on one node.
type Headroom struct {
	CPUMillis   int64
	MemoryBytes int64
}

// Spec is what a reserve must survive.
type Spec struct {
	// K: any set of up to K simultaneous node failures.
	K int
	// SiteLoss: the loss of any one whole site, for every site with a
	// node that hosts groups (see the site pass in reserve.go).
	SiteLoss bool
}

// On reports whether the spec asks for anything.
func (s Spec) On() bool { return s.K > 0 || s.SiteLoss }

// String names the spec in refusals and notes: "reserve 1", "reserve 1
// and site loss", "site-loss reserve".
func (s Spec) String() string {
	switch {
	case s.SiteLoss && s.K > 0:
		return fmt.Sprintf("reserve %d and site loss", s.K)
	case s.SiteLoss:
		return "site-loss reserve"
	}
	return fmt.Sprintf("reserve %d", s.K)
}

// SiteReserve is the reserve's answer for the loss of one whole site.
type SiteReserve struct {
	Site string
	// Failed is the failure set: the site's nodes that are up and host
	// groups. Empty when all of them are down already: the site is lost
	// and its groups are in every plan.
	Failed []string
	// Displaced is how many HA groups its loss restarts elsewhere (with
	// those already waiting for a restart).
	Displaced int
	OK        bool
	// Breach says which group finds no room when !OK.
	Breach *Breach
}

// Reserve is the answer to "can the cluster sustain K node failures (and,
// with SiteLoss, the loss of any one site)?".
type Reserve struct {
	K        int
	SiteLoss bool
	OK       bool
	Method   Method
	// FailureSets is how many sets were searched (each has a plan); Pruned
	// how many displaced nothing and needed no search. Both count the
	// site sets too.
	FailureSets int
	Pruned      int
	BrokenSets  int
	// Breach is the first broken set in enumeration order (smaller sets
	// first, then by node names, then the sites by name): the simplest
	// failure that breaks the reserve. With MethodBound it names the
	// nodes the bound assumed lost.
	Breach *Breach
	// WorstFailure is the node set (of up to K) with the largest
	// shortfall when broken, else the one that leaves the least headroom
	// (in its tighter resource, as a fraction of the cluster). Sites have
	// their own verdicts in Sites.
	WorstFailure []string
	// Headroom is, per resource, the least free capacity any failure set
	// of up to K nodes leaves after its restarts.
	Headroom Headroom
	// Sites is the verdict for each site's loss, by site name, when
	// SiteLoss is set; sites of witnesses only are not failure sets and
	// are left out.
	Sites []SiteReserve

	snap *engine
	data *reserveData
}

// Spec is what this reserve was checked for.
func (r *Reserve) Spec() Spec { return Spec{K: r.K, SiteLoss: r.SiteLoss} }

// Summary is one line for people.
func (r *Reserve) Summary() string {
	what := fmt.Sprintf("%d failure(s)", r.K)
	switch {
	case r.SiteLoss && r.K == 0:
		what = "the loss of any one site"
	case r.SiteLoss:
		what += " and the loss of any one site"
	}
	if r.OK {
		return fmt.Sprintf("can sustain %s: yes (%s; %d sets planned, %d pruned); worst %s; headroom %s cpu, %s memory",
			what, r.Method, r.FailureSets, r.Pruned, orNone(strings.Join(r.WorstFailure, ",")), fmtCPU(r.Headroom.CPUMillis), fmtBytes(r.Headroom.MemoryBytes))
	}
	return fmt.Sprintf("can sustain %s: no (%s; %d of %d sets broken): %s",
		what, r.Method, r.BrokenSets, r.FailureSets, r.Breach)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Site returns the verdict for the loss of the named site; false when the
// reserve was not checked for site loss or the site hosts nothing.
func (r *Reserve) Site(name string) (SiteReserve, bool) {
	for _, s := range r.Sites {
		if s.Site == name {
			return s, true
		}
	}
	return SiteReserve{}, false
}

type setPlan struct {
	nodes   []int32
	entries []planEntry // placement order; n = -1: no room
	ok      bool
}

type reserveData struct {
	k      int
	method Method
	plans  []setPlan
	byKey  map[string]int32
	pruned int
}

func setKey(ns []int32) string {
	b := make([]byte, 0, 4*len(ns))
	for _, n := range ns {
		b = append(b, byte(n), byte(n>>8), byte(n>>16), byte(n>>24))
	}
	return string(b)
}

// CheckReserve answers whether every set of up to k simultaneous node
// failures leaves room to restart every running HA group, and keeps the
// restart plan of every set (see PlanFor).
func CheckReserve(st State, k int) *Reserve {
	return CheckReserveSpec(st, Spec{K: k})
}

// CheckReserveSpec is CheckReserve for a whole Spec: with SiteLoss, the
// loss of each site is one more failure set, with its plan kept as well.
func CheckReserveSpec(st State, s Spec) *Reserve {
	return newEngine(compile(st)).reserve(s, nil, nil)
}

// universe is the nodes that can fail next, ascending (name order).
func (e *engine) universe() []int32 {
	var u []int32
	for n, nd := range e.c.nodes {
		if e.up[n] && !nd.witness {
			u = append(u, int32(n))
		}
	}
	return u
}

func binom(n, k int) float64 {
	r := 1.0
	for i := 1; i <= k; i++ {
		r = r * float64(n-k+i) / float64(i)
	}
	return r
}

// reserve computes the reserve of the engine's current state. With prev
// (the plans of a state that differs from this one only on the nodes
// marked dirty), plans that are still valid are kept, and only the others
// are searched again: this is how admission, the balancer and the power
// mode test a change in time proportional to what it touches. The engine
// becomes the Reserve's snapshot; the caller must not change it after.
func (e *engine) reserve(s Spec, prev *reserveData, dirty []bool) *Reserve {
	k := max(s.K, 0)
	r := &Reserve{K: k, SiteLoss: s.SiteLoss, snap: e}
	e.searchBudget = searchTotalBudget
	u := e.universe()
	nSets := 0.0
	for i := 1; i <= min(k, len(u)); i++ {
		nSets += binom(len(u), i)
	}
	// Per-node terms: the HA groups each node runs, and its free room.
	haOn := make([][]int32, len(e.c.nodes))
	var base []int32
	for g := range e.c.groups {
		gi := int32(g)
		if e.needsRestart(gi) {
			base = append(base, gi)
		} else if n := e.assign[g]; n >= 0 && e.c.groups[g].ha {
			haOn[n] = append(haOn[n], gi)
		}
	}
	d := &reserveData{k: k, byKey: map[string]int32{}}
	r.data = d
	rp := &replanner{e: e, prev: prev, dirty: dirty, gmark: make([]uint32, len(e.c.groups))}
	if k > 2 && nSets > MaxEnumeratedSets {
		d.method = MethodBound
		e.bound(r, u, haOn, base)
		if s.SiteLoss {
			e.sitePass(r, rp, haOn, base, 0)
		}
		return r
	}
	r.Method = MethodEnumerated
	d.method = MethodEnumerated
	h := e.headroomTerms(haOn, base)
	worstScore := math.Inf(1)
	var worstShort float64
	var worstSet []int32
	firstBroken := -1
	displaced := make([]int32, 0, 64)

	visit := func(F []int32) {
		displaced = append(displaced[:0], base...)
		for _, n := range F {
			displaced = append(displaced, haOn[n]...)
		}
		cpuH, memH := h.of(F)
		if len(displaced) == 0 {
			if len(F) > 0 {
				d.pruned++
			}
			if r.BrokenSets == 0 {
				if s := h.norm(cpuH, memH); s < worstScore {
					worstScore, worstSet = s, append([]int32(nil), F...)
				}
			}
			r.Headroom.CPUMillis = min(r.Headroom.CPUMillis, cpuH)
			r.Headroom.MemoryBytes = min(r.Headroom.MemoryBytes, memH)
			return
		}
		plan := rp.plan(F, displaced)
		idx := int32(len(d.plans))
		d.plans = append(d.plans, plan)
		d.byKey[setKey(F)] = idx
		r.Headroom.CPUMillis = min(r.Headroom.CPUMillis, cpuH)
		r.Headroom.MemoryBytes = min(r.Headroom.MemoryBytes, memH)
		if !plan.ok {
			r.BrokenSets++
			if firstBroken < 0 {
				firstBroken = int(idx)
			}
			var sc, sm int64
			for _, en := range plan.entries {
				if en.n < 0 {
					sc += e.c.groups[en.g].cpu
					sm += e.c.groups[en.g].mem
				}
			}
			if s := -h.norm(-sc, -sm); s > worstShort || r.BrokenSets == 1 {
				worstShort, worstSet = s, plan.nodes
			}
		} else if r.BrokenSets == 0 {
			if s := h.norm(cpuH, memH); s < worstScore {
				worstScore, worstSet = s, plan.nodes
			}
		}
	}
	r.Headroom = Headroom{CPUMillis: math.MaxInt64, MemoryBytes: math.MaxInt64}
	visit(nil)
	forEachSet(u, min(k, len(u)), visit)
	r.WorstFailure = e.nodeNames(worstSet)
	if firstBroken >= 0 {
		r.Breach = e.breach(d.plans[firstBroken])
	}
	if s.SiteLoss {
		e.sitePass(r, rp, haOn, base, min(k, len(u)))
	}
	r.FailureSets = len(d.plans)
	r.Pruned = d.pruned
	r.OK = r.BrokenSets == 0
	return r
}

// The site pass (Spec.SiteLoss). Each site with a node that hosts groups
// is one more failure set: its nodes that are up, all at once. It is
// planned as the node sets are, after them, sites by name: the same
// displaced groups (the site's HA groups and those already waiting), the
// same greedy and fallbacks, the same reuse of kept plans, and the plan
// is kept under the key of its nodes, so PlanFor finds a site's plan when
// exactly those nodes fail. A site of witnesses only hosts nothing and is
// not a failure set. A site whose nodes are all down already adds no set:
// its groups wait in every plan, and its verdict is that of no further
// failure. A site with at most enumerated nodes up was a node set
// already and shares that set's plan (and its count). Headroom and
// WorstFailure stay about the node sets; each site has its own verdict.
func (e *engine) sitePass(r *Reserve, rp *replanner, haOn [][]int32, base []int32, enumerated int) {
	d := r.data
	sets := make([][]int32, len(e.c.sites))
	hosts := make([]bool, len(e.c.sites))
	for n, nd := range e.c.nodes {
		if nd.witness {
			continue
		}
		hosts[nd.site] = true
		if e.up[n] {
			sets[nd.site] = append(sets[nd.site], int32(n))
		}
	}
	order := make([]int32, 0, len(e.c.sites))
	for si := range e.c.sites {
		if hosts[si] {
			order = append(order, int32(si))
		}
	}
	sort.Slice(order, func(i, j int) bool { return e.c.sites[order[i]] < e.c.sites[order[j]] })
	for _, si := range order {
		F := sets[si]
		sr := SiteReserve{Site: e.c.sites[si], Failed: e.nodeNames(F)}
		displaced := append([]int32(nil), base...)
		for _, n := range F {
			displaced = append(displaced, haOn[n]...)
		}
		sr.Displaced = len(displaced)
		key := setKey(F)
		idx, done := d.byKey[key]
		switch {
		case done:
		case len(displaced) == 0:
			if len(F) > enumerated {
				d.pruned++
			}
		default:
			idx = int32(len(d.plans))
			d.plans = append(d.plans, rp.plan(F, displaced))
			d.byKey[key] = idx
			if !d.plans[idx].ok {
				r.BrokenSets++
			}
			done = true
		}
		sr.OK = !done || d.plans[idx].ok
		if !sr.OK {
			sr.Breach = e.breach(d.plans[idx])
			sr.Breach.Site = sr.Site
			if r.Breach == nil {
				r.Breach = sr.Breach
			}
			r.OK = false
		}
		r.Sites = append(r.Sites, sr)
	}
	r.FailureSets = len(d.plans)
	r.Pruned = d.pruned
}

// replanner makes the plan of one failure set, reusing the plan prev kept
// for the same set while it is still valid.
type replanner struct {
	e      *engine
	prev   *reserveData
	dirty  []bool
	gmark  []uint32
	gstamp uint32
}

func (p *replanner) plan(F, displaced []int32) setPlan {
	e := p.e
	if p.prev != nil {
		if i, ok := p.prev.byKey[setKey(F)]; ok && p.prev.plans[i].ok {
			old := p.prev.plans[i]
			p.gstamp++
			for _, g := range displaced {
				p.gmark[g] = p.gstamp
			}
			same := len(old.entries) == len(displaced)
			touches := p.dirty == nil
			for _, en := range old.entries {
				if p.gmark[en.g] != p.gstamp {
					same = false
					break
				}
				if p.dirty != nil && p.dirty[en.n] {
					touches = true
				}
			}
			if same && (!touches || e.validate(F, old.entries, p.dirty)) {
				return old
			}
		}
	}
	return e.restart(F, displaced)
}

// forEachSet calls fn with every subset of u of size 1..k, smaller sizes
// first, each in lexicographic order. fn must not keep the slice.
func forEachSet(u []int32, k int, fn func([]int32)) {
	buf := make([]int32, 0, k)
	var rec func(start, size int)
	rec = func(start, size int) {
		if len(buf) == size {
			fn(buf)
			return
		}
		for i := start; i <= len(u)-(size-len(buf)); i++ {
			buf = append(buf, u[i])
			rec(i+1, size)
			buf = buf[:len(buf)-1]
		}
	}
	for size := 1; size <= k; size++ {
		rec(0, size)
	}
}

// restart computes the plan for failure set F: displaced groups in
// priority order with Spread (what the leader prefers); if that leaves a
// group out, largest-first with Pack; if that fails too and the set is
// small, a bounded exact search (see search). A plan found by a fallback
// places everything, so its moves are listed in priority order: that is
// the order the leader starts them in. All changes are rolled back.
func (e *engine) restart(F []int32, displaced []int32) setPlan {
	for _, n := range F {
		e.failed[n] = true
	}
	gs := append([]int32(nil), displaced...)
	e.sortByRank(gs)
	mark := len(e.log)
	entries, ok := e.placeAll(gs, Spread, false)
	e.rollback(mark)
	if !ok {
		alt := append([]int32(nil), gs...)
		sizes := make(map[int32]float64, len(alt))
		for _, g := range alt {
			sizes[g] = e.c.size(g)
		}
		sort.SliceStable(alt, func(i, j int) bool { return sizes[alt[i]] > sizes[alt[j]] })
		ent2, ok2 := e.placeAll(alt, Pack, true)
		e.rollback(mark)
		if !ok2 && exactSearch && len(gs) <= searchMaxGroups && e.searchBudget > 0 {
			budget := min(searchSetBudget, e.searchBudget)
			ent2, ok2 = e.search(gs, &budget)
			e.searchBudget -= min(searchSetBudget, e.searchBudget) - budget
			e.rollback(mark)
		}
		if ok2 {
			r := e.c.rank
			sort.Slice(ent2, func(i, j int) bool { return r[ent2[i].g] < r[ent2[j].g] })
			entries, ok = ent2, true
		}
	}
	for _, n := range F {
		e.failed[n] = false
	}
	return setPlan{nodes: append([]int32(nil), F...), entries: entries, ok: ok}
}

// The exact search is bounded: it runs only for sets displacing at most
// searchMaxGroups groups, expands at most searchSetBudget nodes of its
// search tree per set and searchTotalBudget per reserve check, so a badly
// broken large cluster costs no more than a healthy one.
const (
	searchMaxGroups   = 24
	searchSetBudget   = 2000
	searchTotalBudget = 100_000
)

// exactSearch switches the bounded exact search on; tests switch it off
// to measure the greedy heuristics alone.
var exactSearch = true

// search is a depth-first search over placements of gs, most constrained
// group first (the one with the fewest nodes left), trying its nodes best
// packed first. It returns a complete plan or false when none exists or
// the budget ran out. Changes are left applied on success (the caller
// rolls back).
func (e *engine) search(gs []int32, budget *int) ([]planEntry, bool) {
	var entries []planEntry
	left := append([]int32(nil), gs...)
	var rec func() bool
	rec = func() bool {
		if len(left) == 0 {
			return true
		}
		if *budget <= 0 {
			return false
		}
		pick, var0 := -1, []int32(nil)
		for i, g := range left {
			cands := e.candidates(g)
			if len(cands) == 0 {
				return false
			}
			if pick < 0 || len(cands) < len(var0) {
				pick, var0 = i, cands
			}
		}
		g := left[pick]
		left[pick] = left[len(left)-1]
		left = left[:len(left)-1]
		for _, n := range var0 {
			*budget--
			mark := len(e.log)
			e.move(g, n)
			entries = append(entries, planEntry{g: g, n: n})
			if rec() {
				return true
			}
			entries = entries[:len(entries)-1]
			e.rollback(mark)
			if *budget <= 0 {
				break
			}
		}
		left = append(left, g)
		left[pick], left[len(left)-1] = left[len(left)-1], left[pick]
		return false
	}
	return entries, rec()
}

// candidates lists the nodes g fits on, best packed first.
func (e *engine) candidates(g int32) []int32 {
	e.prepare(g)
	type sc struct {
		n int32
		s int64
	}
	var out []sc
	for n := range e.c.nodes {
		if e.fits(g, int32(n)) {
			out = append(out, sc{int32(n), e.parts(g, int32(n), Pack).total()})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].s > out[j].s })
	ns := make([]int32, len(out))
	for i, x := range out {
		ns[i] = x.n
	}
	return ns
}

// validate reports whether a plan computed earlier still places every
// group under every hard constraint in the engine's current state, which
// differs from the plan's only on the dirty nodes (nil: anywhere). Entries
// onto clean nodes are applied unchecked: those nodes hold what they held
// when the plan was made, and receive the same groups, so what fitted
// still fits; only entries onto dirty nodes pay for a check.
func (e *engine) validate(F []int32, entries []planEntry, dirty []bool) bool {
	for _, n := range F {
		e.failed[n] = true
	}
	mark := len(e.log)
	ok := true
	for _, en := range entries {
		if en.n < 0 {
			ok = false
			break
		}
		if dirty == nil || dirty[en.n] {
			e.prepare(en.g)
			if !e.fits(en.g, en.n) {
				ok = false
				break
			}
		}
		e.move(en.g, en.n)
	}
	e.rollback(mark)
	for _, n := range F {
		e.failed[n] = false
	}
	return ok
}

// replay applies a plan's placements up to each unplaced group and
// explains that group in the state it met. All changes are rolled back.
func (e *engine) replay(F []int32, entries []planEntry) []Unplaced {
	for _, n := range F {
		e.failed[n] = true
	}
	mark := len(e.log)
	var out []Unplaced
	for _, en := range entries {
		if en.n < 0 {
			out = append(out, e.explain(en.g))
			continue
		}
		e.move(en.g, en.n)
	}
	e.rollback(mark)
	for _, n := range F {
		e.failed[n] = false
	}
	return out
}

func (e *engine) breach(p setPlan) *Breach {
	b := &Breach{Failed: e.nodeNames(p.nodes)}
	if us := e.replay(p.nodes, p.entries); len(us) > 0 {
		b.Group, b.Reason = us[0].Group, us[0].Reason
	}
	return b
}

// headroom terms: survivors' free room after F fails and its groups
// restart = total free of nodes taking work − Σ_{n∈F} (free_n if n takes
// work) − Σ_{n∈F} HA demand on n − demand waiting for restart.
type headTerms struct {
	totCPU, totMem   int64 // capacity of nodes taking work (for norm)
	freeCPU, freeMem int64
	termCPU, termMem []int64
	baseCPU, baseMem int64
}

func (e *engine) headroomTerms(haOn [][]int32, base []int32) headTerms {
	h := headTerms{termCPU: make([]int64, len(e.c.nodes)), termMem: make([]int64, len(e.c.nodes))}
	for n, nd := range e.c.nodes {
		if e.eligible[n] {
			h.totCPU += nd.cpuCap
			h.totMem += nd.memCap
			h.freeCPU += nd.cpuCap - e.cpuUsed[n]
			h.freeMem += nd.memCap - e.memUsed[n]
			h.termCPU[n] = nd.cpuCap - e.cpuUsed[n]
			h.termMem[n] = nd.memCap - e.memUsed[n]
		}
		for _, g := range haOn[n] {
			h.termCPU[n] += e.c.groups[g].cpu
			h.termMem[n] += e.c.groups[g].mem
		}
	}
	for _, g := range base {
		h.baseCPU += e.c.groups[g].cpu
		h.baseMem += e.c.groups[g].mem
	}
	return h
}

func (h headTerms) of(F []int32) (cpu, mem int64) {
	cpu, mem = h.freeCPU-h.baseCPU, h.freeMem-h.baseMem
	for _, n := range F {
		cpu -= h.termCPU[n]
		mem -= h.termMem[n]
	}
	return cpu, mem
}

// norm is the tighter of the two resources as a fraction of the cluster.
func (h headTerms) norm(cpu, mem int64) float64 {
	a, b := math.Inf(1), math.Inf(1)
	if h.totCPU > 0 {
		a = float64(cpu) / float64(h.totCPU)
	}
	if h.totMem > 0 {
		b = float64(mem) / float64(h.totMem)
	}
	return math.Min(a, b)
}

// Plan is the restart plan for one failure set.
type Plan struct {
	// Failed is the set the plan is for, as looked up: sorted, without
	// nodes that were already down or are witnesses.
	Failed   []string
	Moves    []Move
	Unplaced []Unplaced
	OK       bool
	// Precomputed: the plan was made by the reserve check (so the leader
	// executes exactly what was checked); otherwise it was computed now
	// with the same greedy (sets larger than K, or MethodBound).
	Precomputed bool
}

// PlanFor returns the restart plan for the failure of the named nodes,
// computed on the state the reserve was checked on. A real failure looks
// its plan up here rather than searching; after the state changes, check
// the reserve again.
func (r *Reserve) PlanFor(failed []string) (Plan, error) {
	e := r.snap
	var F []int32
	seen := map[int32]bool{}
	for _, name := range failed {
		n, ok := e.c.nodeIdx[name]
		if !ok {
			return Plan{}, fmt.Errorf("%w: unknown node %q", ErrInvalid, name)
		}
		if !e.up[n] || e.c.nodes[n].witness || seen[n] {
			continue
		}
		seen[n] = true
		F = append(F, n)
	}
	sort.Slice(F, func(i, j int) bool { return F[i] < F[j] })
	if r.data != nil {
		if i, ok := r.data.byKey[setKey(F)]; ok {
			return r.planOf(r.data.plans[i], true), nil
		}
	}
	w := e.clone()
	var displaced []int32
	inF := map[int32]bool{}
	for _, n := range F {
		inF[n] = true
	}
	for g := range w.c.groups {
		gi := int32(g)
		if w.needsRestart(gi) || (w.c.groups[g].ha && w.assign[g] >= 0 && inF[w.assign[g]]) {
			displaced = append(displaced, gi)
		}
	}
	pre := r.data != nil && r.data.method == MethodEnumerated && len(F) <= r.K && len(displaced) == 0
	return r.planOfEngine(w, w.restart(F, displaced), pre), nil
}

func (r *Reserve) planOf(p setPlan, pre bool) Plan {
	return r.planOfEngine(r.snap.clone(), p, pre)
}

func (r *Reserve) planOfEngine(w *engine, p setPlan, pre bool) Plan {
	out := Plan{Failed: w.nodeNames(p.nodes), OK: p.ok, Precomputed: pre}
	for _, en := range p.entries {
		if en.n < 0 {
			continue
		}
		name := w.c.groups[en.g].name
		from := ""
		if n := w.assign[en.g]; n >= 0 {
			from = w.c.nodes[n].name
		} else if w.lost[en.g] {
			from = w.c.st.Assign[name]
		}
		out.Moves = append(out.Moves, Move{Group: name, From: from, To: w.c.nodes[en.n].name})
	}
	if !p.ok {
		out.Unplaced = w.replay(p.nodes, p.entries)
	}
	return out
}
