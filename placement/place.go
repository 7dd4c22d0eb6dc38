package placement

import "sort"

// Options tune Place.
type Options struct {
	Strategy Strategy
	// Exclude are nodes not to use, on top of those that are down,
	// draining or witnesses: the failed set during a failover, the node
	// being drained.
	Exclude []string
}

// Result is what Place decided: Placed in placement order (priority
// first), Unplaced with a reason for each group that found no node.
type Result struct {
	Placed   []Move
	Unplaced []Unplaced
}

// Assign returns the placements as group -> node.
func (r Result) Assign() map[string]string {
	m := make(map[string]string, len(r.Placed))
	for _, p := range r.Placed {
		m[p.Group] = p.To
	}
	return m
}

// Place finds a node for each named group: creation and start (groups
// that are not running), failover (groups on failed nodes: pass the
// failed nodes in Exclude if the state still shows them up), drain
// (groups on the drained node). A named group that is running is taken
// off its node first, so it competes for room like the others.
//
// Groups are placed by priority (lower first), then size (larger first),
// then name; each goes to the feasible node with the best score (see the
// package comment). A group that fits nowhere is reported with the reason
// for every node and does not block the groups after it.
func Place(st State, groups []string, opts Options) Result {
	c := compile(st)
	e := newEngine(c)
	e.failedWord = "excluded"
	for _, x := range opts.Exclude {
		if n, ok := c.nodeIdx[x]; ok {
			e.failed[n] = true
		}
	}
	var res Result
	var gs []int32
	seen := map[int32]bool{}
	from := map[int32]string{}
	for _, name := range groups {
		g, ok := c.groupIdx.get(name)
		if !ok {
			res.Unplaced = append(res.Unplaced, Unplaced{Group: name, Reason: "unknown group", Exclusions: []Exclusion{{Constraint: ConstraintUnknownGroup}}})
			continue
		}
		if seen[g] {
			continue
		}
		seen[g] = true
		gs = append(gs, g)
		from[g] = st.Assign[name]
	}
	for _, g := range gs {
		if e.assign[g] >= 0 {
			e.move(g, -1)
		}
	}
	e.sortByRank(gs)
	for _, g := range gs {
		n := e.best(g, opts.Strategy)
		if n < 0 {
			res.Unplaced = append(res.Unplaced, e.explain(g))
			continue
		}
		e.move(g, n)
		res.Placed = append(res.Placed, Move{Group: c.groups[g].name, From: from[g], To: c.nodes[n].name})
	}
	return res
}

// Drain places every group running on node elsewhere, as the leader does
// before maintenance. The node itself is excluded whether or not the
// state already marks it draining.
func Drain(st State, node string, opts Options) Result {
	var gs []string
	for g, n := range st.Assign {
		if n == node {
			gs = append(gs, g)
		}
	}
	sort.Strings(gs)
	opts.Exclude = append(append([]string(nil), opts.Exclude...), node)
	return Place(st, gs, opts)
}

// Failback returns the moves that bring running groups back to a more
// preferred owner that is up and has room, more important groups first.
// A group moves only to a node earlier in its PreferredOwners list than
// the one it is on, so repeated calls converge.
func Failback(st State) []Move {
	c := compile(st)
	e := newEngine(c)
	var gs []int32
	for g := range c.groups {
		if len(c.groups[g].pref) > 0 && e.running(int32(g)) {
			gs = append(gs, int32(g))
		}
	}
	e.sortByRank(gs)
	var out []Move
	for _, g := range gs {
		gg := c.groups[g]
		cur := e.assign[g]
		e.prepare(g)
		for _, p := range gg.pref {
			if p == cur {
				break
			}
			if e.fits(g, p) {
				out = append(out, Move{Group: gg.name, From: c.nodes[cur].name, To: c.nodes[p].name})
				e.move(g, p)
				break
			}
		}
	}
	return out
}
