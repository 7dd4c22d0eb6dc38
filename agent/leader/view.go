package leader

import (
	"encoding/binary"
	"maps"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The leader's side of placement/: it turns its view of the cluster (the
// FSM plus gossip) into a placement.State, asks the pure package, and
// commits what it decided. Every decision that places a group runs under
// placeMu and sees the ones before it: their commits, made under placeMu
// too, or a start's assignment decided and not yet applied (pendingStarts).
// Two StartGroups admitted against the same state could break the reserve
// together although each alone keeps it.

// placementPriority maps haven.v1.Priority onto placement's order, lower
// first. No-auto-start groups come last and are not HA.
func placementPriority(p havenv1.Priority) int {
	switch p {
	case havenv1.Priority_PRIORITY_HIGH:
		return 1
	case havenv1.Priority_PRIORITY_LOW:
		return 3
	case havenv1.Priority_PRIORITY_NO_AUTO_START:
		return 4
	}
	return 2 // medium and unspecified
}

// DirtyRate estimates what a guest of the given memory dirties per second.
type DirtyRate func(memoryBytes int64) int64

// placementGroup is a group spec as placement sees it; dirty prices its
// migration for the balancer.
func placementGroup(spec *havenv1.GroupSpec, dirty DirtyRate) placement.Group {
	g := placement.Group{
		Name:                 spec.GetName(),
		CPUMillis:            spec.GetCpuMillis(),
		MemoryBytes:          spec.GetMemoryBytes(),
		Priority:             placementPriority(spec.GetPriority()),
		HA:                   spec.GetPriority() != havenv1.Priority_PRIORITY_NO_AUTO_START,
		PossibleOwners:       spec.GetPossibleOwners(),
		PreferredOwners:      spec.GetPreferredOwners(),
		PreferredSite:        spec.GetPreferredSite(),
		RequireLabels:        spec.GetNodeSelector(),
		DirtyRateBytesPerSec: dirty(spec.GetMemoryBytes()),
	}
	for _, aa := range spec.GetAntiAffinity() {
		g.AntiAffinity = append(g.AntiAffinity, placement.Class{Name: aa.GetClass(), Hard: aa.GetHard(), AcrossSites: aa.GetAcrossSites()})
	}
	return g
}

// buildState is the placement state of the given FSM records. A node is Up
// when the FSM says alive (the leader wrote it from gossip, suspect
// included) and gossip calls it alive now (not suspect): placing a group
// on a node that may be dying only to fail it over again helps nobody.
// A group runs (is in Assign) while its owner may run it: starting, online
// or stopping. A group avoids the nodes it failed on within
// failureHoldOff of now, and those whose driver reported it cannot run
// it.
func buildState(nodes []*havenv1.Node, groups []*havenv1.Group, gossipAlive map[string]bool, overcommit float64, dirty DirtyRate, now time.Time) placement.State {
	st := placement.State{Assign: make(map[string]string, len(groups)), Nodes: make([]placement.Node, 0, len(nodes)), Groups: make([]placement.Group, 0, len(groups))}
	for _, n := range nodes {
		st.Nodes = append(st.Nodes, placement.Node{
			Name:          n.GetName(),
			Site:          n.GetSite(),
			CPUMillis:     n.GetCapacity().GetCpuMillis(),
			MemoryBytes:   n.GetCapacity().GetMemoryBytes(),
			CPUOvercommit: overcommit,
			Up:            n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE && gossipAlive[n.GetName()],
			Witness:       n.GetWitness(),
			Draining:      n.GetDraining(),
			Labels:        n.GetLabels(),
		})
	}
	refused := nodeRefusals(nodes, groups)
	for _, g := range groups {
		pg := placementGroup(g.GetSpec(), dirty)
		pg.AvoidNodes = recentFailures(g, now)
		pg.CannotRun = refused[g.GetSpec().GetName()]
		st.Groups = append(st.Groups, pg)
		if g.GetOwner() != "" && fsm.Active(g.GetState()) {
			st.Assign[g.GetSpec().GetName()] = g.GetOwner()
		}
	}
	return st
}

// placementState is the cluster as the leader sees it now. A member that
// gossip knows and the FSM does not yet is taken as gossip describes it:
// a new leader records the members only after its barrier, and a group
// started in between (a fresh cluster's first, say) must not find "no
// nodes".
func (l *Leader) placementState() placement.State {
	alive := map[string]bool{}
	nodes := l.state.Nodes()
	known := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		known[n.GetName()] = true
	}
	for _, m := range l.cfg.Members.Members() {
		alive[m.Name] = m.State == heartbeat.StateAlive
		if !known[m.Name] {
			nodes = append(nodes, memberNode(m))
		}
	}
	// The pending starts are read before the groups: a start whose commit
	// is applied and whose pending entry ends between the two reads would
	// otherwise be in neither, and a concurrent start admitted beside it
	// (TestConcurrentStartsSeePendingOnes saw 8 groups where the reserve
	// left room for 7, once in CI; TestPlacementStateSeesAStartEndingAsItReads).
	// Read in this order, it is in one or both.
	pending := l.pending.assignments()
	groups := l.state.Groups()
	st := buildState(nodes, groups, alive, l.cfg.CPUOvercommit, l.cfg.DirtyRate, time.Now())
	holdIncoming(st, groups, l.state.Operation)
	// st is this call's own: the pending starts go into its map as they
	// are, not into a copy of it.
	for g, n := range pending {
		st.Assign[g] = n
	}
	return st
}

// member reports whether gossip knows node. A new leader records the
// members only after its barrier, and placement already takes one it has
// not recorded as gossip describes it (placementState): an operator's
// start on a node that is up must not be refused as unknown meanwhile.
func (l *Leader) member(node string) bool {
	return slices.ContainsFunc(l.cfg.Members.Members(), func(m heartbeat.Member) bool { return m.Name == node })
}

// pendingStarts are the starts decided and not yet applied: group -> its
// owner and a channel closed when the start's commit has returned.
type pendingStarts struct {
	mu sync.Mutex
	m  map[string]pendingStart
}

type pendingStart struct {
	owner string
	done  chan struct{}
}

// add records a start decided; the func it returns ends it, once its
// commit returned (applied or not).
func (p *pendingStarts) add(group, owner string) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]pendingStart{}
	}
	ps := pendingStart{owner: owner, done: make(chan struct{})}
	p.m[group] = ps
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.m, group)
		close(ps.done)
	}
}

// any reports whether a start is pending.
func (p *pendingStarts) any() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m) > 0
}

// wait is closed when the pending start of group ends; nil when none is.
func (p *pendingStarts) wait(group string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ps, ok := p.m[group]; ok {
		return ps.done
	}
	return nil
}

func (p *pendingStarts) assignments() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) == 0 {
		return nil
	}
	out := make(map[string]string, len(p.m))
	for g, ps := range p.m {
		out[g] = ps.owner
	}
	return out
}

// holdIncoming takes the room of every move in flight off its target: until
// the commit the group runs on its source (and is planned there, reserve
// included), while its copy fills memory on the target. Without this two
// moves could both be admitted into the room of one.
func holdIncoming(st placement.State, groups []*havenv1.Group, operation func(string) *havenv1.Operation) {
	at := make(map[string]int, len(st.Nodes))
	for i, n := range st.Nodes {
		at[n.Name] = i
	}
	for _, g := range groups {
		if g.GetOperation() == "" {
			continue
		}
		op := operation(g.GetOperation())
		if !fsm.InFlight(op) || fsm.Committed(op) {
			continue
		}
		if i, ok := at[op.GetTarget()]; ok {
			n := &st.Nodes[i]
			// The node offers CPUMillis × CPUOvercommit: take the
			// group's demand off that.
			oc := n.CPUOvercommit
			if oc <= 0 {
				oc = 1
			}
			n.CPUMillis -= int64(math.Ceil(float64(g.GetSpec().GetCpuMillis()) / oc))
			n.MemoryBytes -= g.GetSpec().GetMemoryBytes()
		}
	}
}

// placementGroup is spec as this leader's placement sees it, kept off the
// nodes that cannot run it (an operator's start does not change what a
// node's driver can run).
func (l *Leader) placementGroup(spec *havenv1.GroupSpec) placement.Group {
	pg := placementGroup(spec, l.cfg.DirtyRate)
	pg.CannotRun = l.cannotRun(spec.GetName())
	return pg
}

// withGroup returns st with g in place of the group of the same name, or
// added; st itself is not changed.
func withGroup(st placement.State, g placement.Group) placement.State {
	return withGroups(st, map[string]placement.Group{g.Name: g})
}

// withGroupIn is withGroup on a state the caller owns (one
// placementState built for it): g replaces its namesake in place, with no
// copy of every group.
func withGroupIn(st placement.State, g placement.Group) placement.State {
	for i := range st.Groups {
		if st.Groups[i].Name == g.Name {
			st.Groups[i] = g
			return st
		}
	}
	st.Groups = append(st.Groups, g)
	return st
}

// withGroups returns st with each group of repl in place of the group of
// the same name, or added (in name order); st itself is not changed.
func withGroups(st placement.State, repl map[string]placement.Group) placement.State {
	out := st
	out.Groups = make([]placement.Group, 0, len(st.Groups)+len(repl))
	seen := make(map[string]bool, len(repl))
	for _, x := range st.Groups {
		if g, ok := repl[x.Name]; ok && !seen[x.Name] {
			x = g
			seen[x.Name] = true
		}
		out.Groups = append(out.Groups, x)
	}
	var added []string
	for name := range repl {
		if !seen[name] {
			added = append(added, name)
		}
	}
	sort.Strings(added)
	for _, name := range added {
		out.Groups = append(out.Groups, repl[name])
	}
	return out
}

// groupsByName indexes the groups of st.
func groupsByName(st placement.State) map[string]placement.Group {
	m := make(map[string]placement.Group, len(st.Groups))
	for _, g := range st.Groups {
		if _, dup := m[g.Name]; !dup {
			m[g.Name] = g
		}
	}
	return m
}

// withAssign returns st with the given groups assigned (st is not
// changed).
func withAssign(st placement.State, moves map[string]string) placement.State {
	out := st
	out.Assign = make(map[string]string, len(st.Assign)+len(moves))
	for g, n := range st.Assign {
		out.Assign[g] = n
	}
	for g, n := range moves {
		out.Assign[g] = n
	}
	return out
}

// stateKey fingerprints everything a decision on st reads (a balance, a
// failback, a failover memo), so what was decided is reused exactly while
// the state it was decided on holds.
func stateKey(st placement.State, spec placement.Spec) uint64 {
	return fingerprint(st, spec, nil, false)
}

// reserveKey is stateKey(reserveView(withAssign(st, extra)), spec), the key
// a reserve is kept under, computed without building either state: it
// runs at every start, and at 10,000 groups the two copies and the hash
// were a third of a start's decision, which holds placeMu.
func reserveKey(st placement.State, spec placement.Spec, extra map[string]string) uint64 {
	return fingerprint(st, spec, extra, true)
}

// fingerprint appends everything to one buffer and hashes that once
// (hashing field by field was an eighth of a start's cost). With
// assignedOnly it leaves out the groups that run nowhere; extra
// assignments take precedence over st's.
func fingerprint(st placement.State, spec placement.Spec, extra map[string]string, assignedOnly bool) uint64 {
	// Room for what a node and a group of a few constraints take (about
	// 120 bytes for a group with a short name): growing the buffer was
	// two thirds of the hash's cost at 10,000 groups.
	b := make([]byte, 0, 128*len(st.Nodes)+192*len(st.Groups))
	num := func(v int64) { b = binary.LittleEndian.AppendUint64(b, uint64(v)) }
	str := func(s string) {
		num(int64(len(s)))
		b = append(b, s...)
	}
	flag := func(v bool) {
		if v {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	strs := func(ss []string) {
		num(int64(len(ss)))
		for _, s := range ss {
			str(s)
		}
	}
	labels := func(m map[string]string) {
		num(int64(len(m)))
		if len(m) == 0 {
			return
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			str(k)
			str(m[k])
		}
	}
	assigned := func(group string) (string, bool) {
		if n, ok := extra[group]; ok {
			return n, true
		}
		n, ok := st.Assign[group]
		return n, ok
	}
	num(int64(spec.K))
	flag(spec.SiteLoss)
	num(int64(len(st.Nodes)))
	for _, n := range st.Nodes {
		str(n.Name)
		str(n.Site)
		num(n.CPUMillis)
		num(n.MemoryBytes)
		num(int64(math.Float64bits(n.CPUOvercommit)))
		flag(n.Up)
		flag(n.Draining)
		flag(n.Witness)
		labels(n.Labels)
	}
	// The count of groups hashed goes before them, written once known.
	at := len(b)
	num(0)
	listed, listedAssigned := 0, 0
	for _, g := range st.Groups {
		node, ok := assigned(g.Name)
		if ok {
			listedAssigned++
		} else if assignedOnly {
			continue
		}
		listed++
		str(g.Name)
		num(g.CPUMillis)
		num(g.MemoryBytes)
		num(int64(g.Priority))
		flag(g.HA)
		strs(g.PossibleOwners)
		strs(g.PreferredOwners)
		str(g.PreferredSite)
		labels(g.RequireLabels)
		strs(g.AvoidNodes)
		labels(g.CannotRun)
		num(g.DirtyRateBytesPerSec)
		num(int64(len(g.AntiAffinity)))
		for _, c := range g.AntiAffinity {
			str(c.Name)
			flag(c.Hard)
			flag(c.AcrossSites)
		}
		str(node)
	}
	binary.LittleEndian.PutUint64(b[at:], uint64(listed))
	// Assignments of groups the state does not list (it never builds
	// such, but they would change the answer).
	all := len(st.Assign)
	for g := range extra {
		if _, ok := st.Assign[g]; !ok {
			all++
		}
	}
	if listedAssigned < all {
		known := make(map[string]bool, len(st.Groups))
		for _, g := range st.Groups {
			known[g.Name] = true
		}
		var unlisted []string
		for g := range st.Assign {
			if !known[g] {
				unlisted = append(unlisted, g)
			}
		}
		for g := range extra {
			if _, ok := st.Assign[g]; !ok && !known[g] {
				unlisted = append(unlisted, g)
			}
		}
		sort.Strings(unlisted)
		for _, g := range unlisted {
			node, _ := assigned(g)
			str(g)
			str(node)
		}
	}
	return xxhash.Sum64(b)
}
