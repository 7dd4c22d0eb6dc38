package placement

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
)

const gib = int64(1) << 30

// This file holds an independent checker (plain loops over the public
// types, sharing no code with the engine) and generators of random small
// clusters for the property tests.

// effCPU is a node's CPU capacity with overcommit, as documented.
func effCPU(n Node) int64 {
	oc := n.CPUOvercommit
	if oc <= 0 {
		oc = 1
	}
	return int64(float64(n.CPUMillis) * oc)
}

func labelsOK(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func nodeByName(st State) map[string]Node {
	m := map[string]Node{}
	for _, n := range st.Nodes {
		m[n.Name] = n
	}
	return m
}

func groupByName(st State) map[string]Group {
	m := map[string]Group{}
	for _, g := range st.Groups {
		m[g.Name] = g
	}
	return m
}

// violations lists every hard constraint the assignment breaks. Groups in
// placed must additionally be on nodes that take work and not in
// excluded; every running group is checked for capacity, owners, labels
// and anti-affinity.
func violations(st State, assign map[string]string, placed map[string]bool, excluded map[string]bool) []string {
	nodes, groups := nodeByName(st), groupByName(st)
	var out []string
	cpu, mem := map[string]int64{}, map[string]int64{}
	var names []string
	for g := range assign {
		names = append(names, g)
	}
	sort.Strings(names)
	for _, gn := range names {
		nn := assign[gn]
		g, n := groups[gn], nodes[nn]
		if !n.Up {
			continue // not running: its node is down
		}
		cpu[nn] += g.CPUMillis
		mem[nn] += g.MemoryBytes
		if placed[gn] && (n.Draining || n.Witness || excluded[nn]) {
			out = append(out, fmt.Sprintf("%s placed on %s which takes no work", gn, nn))
		}
		if placed[gn] && slices.Contains(g.AvoidNodes, nn) {
			out = append(out, fmt.Sprintf("%s placed on %s, where it failed lately", gn, nn))
		}
		if _, ok := g.CannotRun[nn]; placed[gn] && ok {
			out = append(out, fmt.Sprintf("%s placed on %s, whose driver cannot run it", gn, nn))
		}
		if len(g.PossibleOwners) > 0 && !slices.Contains(g.PossibleOwners, nn) {
			out = append(out, fmt.Sprintf("%s on %s: not a possible owner", gn, nn))
		}
		for k, v := range g.RequireLabels {
			if n.Labels[k] != v {
				out = append(out, fmt.Sprintf("%s on %s: lacks label %s", gn, nn, k))
			}
		}
		for _, hn := range names {
			if hn <= gn || assign[hn] != nn {
				continue
			}
			h := groups[hn]
			for _, a := range g.AntiAffinity {
				for _, b := range h.AntiAffinity {
					if a.Name == b.Name && (a.Hard || b.Hard) {
						out = append(out, fmt.Sprintf("%s and %s share %s (class %s)", gn, hn, nn, a.Name))
					}
				}
			}
		}
	}
	for nn, n := range nodes {
		if cpu[nn] > effCPU(n) {
			out = append(out, fmt.Sprintf("%s: cpu %d > %d", nn, cpu[nn], effCPU(n)))
		}
		if mem[nn] > n.MemoryBytes {
			out = append(out, fmt.Sprintf("%s: memory %d > %d", nn, mem[nn], n.MemoryBytes))
		}
	}
	return out
}

// displacedBy lists the running HA groups that need a restart when the
// nodes in failed fail (plus those whose node is already down).
func displacedBy(st State, failed map[string]bool) []string {
	nodes := nodeByName(st)
	var out []string
	for _, g := range st.Groups {
		nn, ok := st.Assign[g.Name]
		if !ok || !g.HA {
			continue
		}
		if n, known := nodes[nn]; !known || !n.Up || failed[nn] {
			out = append(out, g.Name)
		}
	}
	sort.Strings(out)
	return out
}

// exhaustiveRestart searches every assignment of the displaced groups to
// the surviving nodes that take work, and reports whether one breaks no
// hard constraint.
func exhaustiveRestart(st State, failed map[string]bool) bool {
	nodes, groups := nodeByName(st), groupByName(st)
	disp := displacedBy(st, failed)
	isDisp := map[string]bool{}
	for _, g := range disp {
		isDisp[g] = true
	}
	var targets []string
	for _, n := range st.Nodes {
		if n.Up && !n.Draining && !n.Witness && !failed[n.Name] {
			targets = append(targets, n.Name)
		}
	}
	sort.Strings(targets)
	cpu, mem := map[string]int64{}, map[string]int64{}
	on := map[string][]string{}
	for gn, nn := range st.Assign {
		if isDisp[gn] || failed[nn] || !nodes[nn].Up {
			continue
		}
		g := groups[gn]
		cpu[nn] += g.CPUMillis
		mem[nn] += g.MemoryBytes
		on[nn] = append(on[nn], gn)
	}
	conflict := func(g Group, nn string) bool {
		for _, hn := range on[nn] {
			for _, a := range g.AntiAffinity {
				for _, b := range groups[hn].AntiAffinity {
					if a.Name == b.Name && (a.Hard || b.Hard) {
						return true
					}
				}
			}
		}
		return false
	}
	// Most constrained (largest) first prunes faster; any order is exact.
	sort.Slice(disp, func(i, j int) bool {
		a, b := groups[disp[i]], groups[disp[j]]
		if a.MemoryBytes != b.MemoryBytes {
			return a.MemoryBytes > b.MemoryBytes
		}
		return disp[i] < disp[j]
	})
	var rec func(i int) bool
	rec = func(i int) bool {
		if i == len(disp) {
			return true
		}
		g := groups[disp[i]]
		for _, nn := range targets {
			n := nodes[nn]
			if len(g.PossibleOwners) > 0 && !slices.Contains(g.PossibleOwners, nn) || slices.Contains(g.AvoidNodes, nn) {
				continue
			}
			if _, ok := g.CannotRun[nn]; ok {
				continue
			}
			if !labelsOK(n.Labels, g.RequireLabels) {
				continue
			}
			if cpu[nn]+g.CPUMillis > effCPU(n) || mem[nn]+g.MemoryBytes > n.MemoryBytes || conflict(g, nn) {
				continue
			}
			cpu[nn] += g.CPUMillis
			mem[nn] += g.MemoryBytes
			on[nn] = append(on[nn], g.Name)
			ok := rec(i + 1)
			on[nn] = on[nn][:len(on[nn])-1]
			cpu[nn] -= g.CPUMillis
			mem[nn] -= g.MemoryBytes
			if ok {
				return true
			}
		}
		return false
	}
	return rec(0)
}

// failureSets lists every set of 1..k nodes among those up and not
// witnesses.
func failureSets(st State, k int) [][]string {
	var u []string
	for _, n := range st.Nodes {
		if n.Up && !n.Witness {
			u = append(u, n.Name)
		}
	}
	sort.Strings(u)
	var out [][]string
	var rec func(start int, cur []string, size int)
	rec = func(start int, cur []string, size int) {
		if len(cur) == size {
			out = append(out, append([]string(nil), cur...))
			return
		}
		for i := start; i < len(u); i++ {
			rec(i+1, append(cur, u[i]), size)
		}
	}
	for s := 1; s <= k && s <= len(u); s++ {
		rec(0, nil, s)
	}
	return out
}

func setOf(ns []string) map[string]bool {
	m := map[string]bool{}
	for _, n := range ns {
		m[n] = true
	}
	return m
}

// checkPlan verifies a restart plan independently: it moves every
// displaced group (when OK), only displaced groups, and the result breaks
// no hard constraint.
func checkPlan(st State, failed []string, p Plan) []string {
	fs := setOf(failed)
	disp := displacedBy(st, fs)
	assign := map[string]string{}
	nodes := nodeByName(st)
	for g, n := range st.Assign {
		if !fs[n] && nodes[n].Up {
			assign[g] = n
		}
	}
	placed := map[string]bool{}
	var out []string
	isDisp := setOf(disp)
	for _, m := range p.Moves {
		if !isDisp[m.Group] {
			out = append(out, fmt.Sprintf("plan moves %s which is not displaced", m.Group))
		}
		assign[m.Group] = m.To
		placed[m.Group] = true
	}
	if p.OK {
		for _, g := range disp {
			if !placed[g] {
				out = append(out, fmt.Sprintf("plan OK but %s not restarted", g))
			}
		}
	}
	out = append(out, violations(st, assign, placed, fs)...)
	return out
}

// genCluster makes a random small cluster with every kind of constraint.
type genParams struct {
	minNodes, maxNodes   int
	minGroups, maxGroups int
	downDrain            bool // some nodes down, draining or witnesses
	// minFill..maxFill: total demand as a fraction of capacity (0: any).
	minFill, maxFill float64
}

func genCluster(r *rand.Rand, p genParams) State {
	nN := p.minNodes + r.IntN(p.maxNodes-p.minNodes+1)
	nG := p.minGroups + r.IntN(p.maxGroups-p.minGroups+1)
	sites := []string{"A", "B"}
	var st State
	for i := 0; i < nN; i++ {
		n := Node{
			Name:          fmt.Sprintf("n%d", i),
			Site:          sites[r.IntN(len(sites))],
			CPUMillis:     []int64{4000, 8000, 16000}[r.IntN(3)],
			MemoryBytes:   []int64{8, 16, 32}[r.IntN(3)] * gib,
			CPUOvercommit: []float64{0, 1, 1.5, 2}[r.IntN(4)],
			Up:            true,
		}
		if r.IntN(3) == 0 {
			n.Labels = map[string]string{"gpu": "yes"}
		}
		if p.downDrain {
			switch r.IntN(10) {
			case 0:
				n.Draining = true
			case 1:
				n.Witness = true
				n.CPUMillis, n.MemoryBytes = 0, 0
			}
		}
		st.Nodes = append(st.Nodes, n)
	}
	classes := []string{"sql", "web", "dc"}
	for i := 0; i < nG; i++ {
		g := Group{
			Name:                 fmt.Sprintf("g%02d", i),
			CPUMillis:            []int64{500, 1000, 2000, 4000}[r.IntN(4)],
			MemoryBytes:          []int64{1, 2, 4, 6, 8}[r.IntN(5)] * gib,
			Priority:             1 + r.IntN(3),
			HA:                   r.IntN(5) != 0,
			DirtyRateBytesPerSec: int64(r.IntN(4)) * 100 << 20,
		}
		if r.IntN(4) == 0 {
			for _, n := range st.Nodes {
				if r.IntN(2) == 0 {
					g.PossibleOwners = append(g.PossibleOwners, n.Name)
				}
			}
		}
		if r.IntN(3) == 0 {
			g.PreferredOwners = []string{st.Nodes[r.IntN(nN)].Name}
		}
		if r.IntN(10) == 0 {
			g.RequireLabels = map[string]string{"gpu": "yes"}
		}
		if r.IntN(3) == 0 {
			g.AntiAffinity = []Class{{Name: classes[r.IntN(len(classes))], Hard: r.IntN(2) == 0, AcrossSites: r.IntN(3) == 0}}
		}
		if r.IntN(4) == 0 {
			g.PreferredSite = sites[r.IntN(len(sites))]
		}
		st.Groups = append(st.Groups, g)
	}
	if p.maxFill > 0 {
		// Keep the demand to a random fraction of the capacity, so that
		// the reserve question is open (neither hopeless nor trivial).
		var capMem, capCPU, mem, cpu int64
		for _, n := range st.Nodes {
			if !n.Witness {
				capMem += n.MemoryBytes
				capCPU += effCPU(n)
			}
		}
		fill := p.minFill + r.Float64()*(p.maxFill-p.minFill)
		var keep []Group
		for _, g := range st.Groups {
			if float64(mem+g.MemoryBytes) <= fill*float64(capMem) && float64(cpu+g.CPUMillis) <= fill*float64(capCPU) {
				keep = append(keep, g)
				mem += g.MemoryBytes
				cpu += g.CPUMillis
			}
		}
		st.Groups = keep
	}
	// Start everything the cluster takes, then maybe take a node down
	// (its groups then wait for a restart).
	st.Assign = map[string]string{}
	var names []string
	for _, g := range st.Groups {
		names = append(names, g.Name)
	}
	st.Assign = Place(st, names, Options{Strategy: Strategy(r.IntN(2))}).Assign()
	if p.downDrain && r.IntN(6) == 0 {
		st.Nodes[r.IntN(nN)].Up = false
	}
	return st
}

// fataler is what testing.TB and *rapid.T share.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

func mustNoViolations(t fataler, what string, v []string) {
	t.Helper()
	if len(v) > 0 {
		t.Fatalf("%s: %d violation(s): %v", what, len(v), v)
	}
}
