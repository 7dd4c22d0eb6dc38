package placement

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// cluster builds a state from compact specs: nodes of equal size, groups
// "name@node:memGiB" (1000m CPU each, HA, priority 2).
func cluster(nodes []Node, groups ...string) State {
	st := State{Nodes: nodes, Assign: map[string]string{}}
	for _, spec := range groups {
		var name, on string
		var mem float64
		at := strings.IndexByte(spec, '@')
		colon := strings.IndexByte(spec, ':')
		name, on = spec[:at], spec[at+1:colon]
		if _, err := fmt.Sscanf(spec[colon+1:], "%g", &mem); err != nil {
			panic(spec)
		}
		st.Groups = append(st.Groups, grp(name, 1000, mem))
		if on != "" {
			st.Assign[name] = on
		}
	}
	return st
}

func nodes(n int, memGiB int64) []Node {
	var out []Node
	for i := 1; i <= n; i++ {
		out = append(out, node(fmt.Sprintf("n%d", i), "A", 64000, memGiB))
	}
	return out
}

func edit(st State, f func(*State)) State {
	st.Nodes = append([]Node(nil), st.Nodes...)
	st.Groups = append([]Group(nil), st.Groups...)
	f(&st)
	return st
}

func TestCheckReserve(t *testing.T) {
	halfFull := cluster(nodes(3, 32), "a@n1:8", "b@n1:8", "c@n2:8", "d@n2:8", "e@n3:8", "f@n3:8")
	tests := []struct {
		name       string
		st         State
		k          int
		ok         bool
		method     Method
		sets       int // searched
		pruned     int
		breachSet  []string
		breachWho  string
		reasonHas  string
		worst      []string
		headroomGi int64 // memory headroom in GiB (-1: don't check)
	}{
		{
			name: "three half-full nodes survive one failure", st: halfFull, k: 1,
			ok: true, method: MethodEnumerated, sets: 3, worst: []string{"n1"}, headroomGi: 16,
		},
		{
			name: "but not two", st: halfFull, k: 2,
			ok: false, method: MethodEnumerated, sets: 6,
			// a, b, c, d restart in priority, size, name order: n3 takes two.
			breachSet: []string{"n1", "n2"}, breachWho: "c",
			reasonHas: "memory: needs 8.0 GiB, node n3 has 0 B free", headroomGi: -16,
		},
		{
			name: "a guest cluster of three on three nodes cannot lose one",
			st: edit(cluster(nodes(3, 32), "sql1@n1:4", "sql2@n2:4", "sql3@n3:4"), func(s *State) {
				for i := range s.Groups {
					s.Groups[i].AntiAffinity = []Class{{Name: "sql", Hard: true}}
				}
			}),
			k: 1, ok: false, method: MethodEnumerated, sets: 3,
			breachSet: []string{"n1"}, breachWho: "sql1",
			reasonHas: "hard anti-affinity: n2 class sql: runs sql2; n3 class sql: runs sql3", headroomGi: -1,
		},
		{
			name: "non-HA groups need no reserve",
			st: edit(halfFull, func(s *State) {
				for i := range s.Groups {
					s.Groups[i].HA = false
				}
			}),
			k: 2, ok: true, method: MethodEnumerated, sets: 0, pruned: 6, headroomGi: 16,
		},
		{
			name: "sets of empty nodes are pruned, not searched",
			st:   cluster(nodes(4, 32), "a@n1:8"),
			// Losing n1 (8 GiB to restart, 24 free) or an empty node (32
			// free) costs the same room; the first in order is reported.
			k: 1, ok: true, method: MethodEnumerated, sets: 1, pruned: 3, worst: []string{"n1"}, headroomGi: 88,
		},
		{
			// {n2} alone displaces nothing, but {n1, n2} must be searched:
			// the plan for {n1} uses n2's room.
			name: "an empty node still matters beside a loaded one",
			st:   cluster([]Node{node("n1", "A", 64000, 16), node("n2", "A", 64000, 16), node("n3", "A", 64000, 16)}, "a@n1:8", "x@n3:12"),
			k:    2, ok: false, method: MethodEnumerated, sets: 5, pruned: 1,
			breachSet: []string{"n1", "n2"}, breachWho: "a", reasonHas: "memory: needs 8.0 GiB, node n3 has 4.0 GiB free", headroomGi: -1,
		},
		{
			name: "a group waiting on a down node is in every plan",
			st: edit(cluster(nodes(3, 16), "a@n1:8", "b@n2:8", "c@n3:8"), func(s *State) {
				s.Nodes[0].Up = false
			}),
			k: 1, ok: false, method: MethodEnumerated, sets: 3,
			// a (waiting) and b restart by name: a takes n3's room.
			breachSet: []string{"n2"}, breachWho: "b", reasonHas: "memory: needs 8.0 GiB, node n3 has 0 B free", headroomGi: -8,
		},
		{
			name: "draining nodes can fail but take nothing",
			st: edit(cluster(nodes(3, 16), "a@n1:8", "b@n2:12"), func(s *State) {
				s.Nodes[2].Draining = true
			}),
			k: 1, ok: false, method: MethodEnumerated, sets: 2, pruned: 1,
			breachSet: []string{"n1"}, breachWho: "a", reasonHas: "draining: n3", headroomGi: -1,
		},
		{
			name: "K beyond the nodes cannot hold",
			st:   cluster(nodes(2, 16), "a@n1:1"),
			k:    3, ok: false, method: MethodEnumerated, sets: 2, pruned: 1,
			breachSet: []string{"n1", "n2"}, breachWho: "a", reasonHas: "failed: n1,n2", headroomGi: -1,
		},
		{
			name: "K = 0 checks only what is already down",
			st:   cluster(nodes(2, 16), "a@n1:1"),
			k:    0, ok: true, method: MethodEnumerated, sets: 0, headroomGi: 31,
		},
		{
			name: "cpu overcommit counts",
			st: edit(cluster([]Node{
				{Name: "n1", CPUMillis: 4000, CPUOvercommit: 2, MemoryBytes: 64 * gib, Up: true},
				{Name: "n2", CPUMillis: 4000, CPUOvercommit: 2, MemoryBytes: 64 * gib, Up: true},
			}, "a@n1:1", "b@n2:1"), func(s *State) {
				s.Groups[0].CPUMillis, s.Groups[1].CPUMillis = 4000, 4000
			}),
			k: 1, ok: true, method: MethodEnumerated, sets: 2, headroomGi: 62,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := CheckReserve(tc.st, tc.k)
			if r.OK != tc.ok || r.Method != tc.method || r.FailureSets != tc.sets || r.Pruned != tc.pruned {
				t.Fatalf("got ok=%v method=%s sets=%d pruned=%d, want ok=%v method=%s sets=%d pruned=%d\n%s",
					r.OK, r.Method, r.FailureSets, r.Pruned, tc.ok, tc.method, tc.sets, tc.pruned, r.Summary())
			}
			if tc.ok != (r.Breach == nil) {
				t.Fatalf("breach %v with ok=%v", r.Breach, r.OK)
			}
			if r.Breach != nil {
				if !reflect.DeepEqual(r.Breach.Failed, tc.breachSet) || r.Breach.Group != tc.breachWho || !strings.Contains(r.Breach.Reason, tc.reasonHas) {
					t.Errorf("breach %+v, want set %v group %s reason containing %q", r.Breach, tc.breachSet, tc.breachWho, tc.reasonHas)
				}
			}
			if tc.worst != nil && !reflect.DeepEqual(r.WorstFailure, tc.worst) {
				t.Errorf("worst %v, want %v", r.WorstFailure, tc.worst)
			}
			if tc.headroomGi != -1 && r.Headroom.MemoryBytes != tc.headroomGi*gib {
				t.Errorf("memory headroom %s, want %d GiB", fmtBytes(r.Headroom.MemoryBytes), tc.headroomGi)
			}
		})
	}
}

func TestReservePriorities(t *testing.T) {
	// n1 fails: room for one of its two groups on n2; the important one
	// restarts, and the plan says which is left out.
	st := cluster(nodes(2, 16), "low@n1:8", "high@n1:8", "x@n2:8")
	st.Groups[0].Priority = 3
	st.Groups[1].Priority = 1
	r := CheckReserve(st, 1)
	p, err := r.PlanFor([]string{"n1"})
	if err != nil {
		t.Fatal(err)
	}
	if p.OK || len(p.Moves) != 1 || p.Moves[0].Group != "high" || len(p.Unplaced) != 1 || p.Unplaced[0].Group != "low" {
		t.Fatalf("plan %+v", p)
	}
	if r.Breach.Group != "low" {
		t.Errorf("breach names %s, want low", r.Breach.Group)
	}
}

func TestPlanFor(t *testing.T) {
	st := edit(cluster(nodes(4, 32), "a@n1:8", "b@n2:8", "c@n3:8"), func(s *State) {
		s.Nodes = append(s.Nodes, Node{Name: "w", Witness: true, Up: true})
	})
	r := CheckReserve(st, 1)
	if !r.OK {
		t.Fatal(r.Summary())
	}
	tests := []struct {
		name        string
		failed      []string
		precomputed bool
		moves       int
		err         bool
	}{
		{"a single failure is looked up", []string{"n1"}, true, 1, false},
		{"an empty node's plan is empty", []string{"n4"}, true, 0, false},
		{"a witness changes nothing", []string{"n2", "w"}, true, 1, false},
		{"beyond K is computed on demand", []string{"n1", "n2"}, false, 2, false},
		{"unknown node", []string{"nX"}, false, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := r.PlanFor(tc.failed)
			if tc.err {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("err %v", err)
				}
				return
			}
			if err != nil || !p.OK || p.Precomputed != tc.precomputed || len(p.Moves) != tc.moves {
				t.Fatalf("plan %+v err %v", p, err)
			}
			mustNoViolations(t, "plan", checkPlan(st, tc.failed, p))
		})
	}
}

// TestReserveBound: with K = 3 on 32 nodes there are 5,488 failure sets,
// over MaxEnumeratedSets, so the bound answers.
func TestReserveBound(t *testing.T) {
	light := State{Assign: map[string]string{}}
	light.Nodes = nodes(32, 256)
	for i := 0; i < 320; i++ {
		g := grp(fmt.Sprintf("g%03d", i), 1000, 8)
		if i%10 == 0 {
			g.AntiAffinity = []Class{{Name: fmt.Sprintf("guest%d", i/40), Hard: true}}
		}
		light.Groups = append(light.Groups, g)
		light.Assign[g.Name] = fmt.Sprintf("n%d", 1+i%32)
	}
	mustNoViolations(t, "setup", violations(light, light.Assign, nil, nil))
	r := CheckReserve(light, 3)
	if r.Method != MethodBound || !r.OK {
		t.Fatalf("light cluster: %s", r.Summary())
	}
	// Any K = 3 failure really is survivable: spot-check the plans.
	for _, F := range [][]string{{"n1", "n2", "n3"}, {"n30", "n31", "n32"}, {"n1", "n9", "n17"}} {
		p, _ := r.PlanFor(F)
		if !p.OK || p.Precomputed {
			t.Fatalf("plan for %v: %+v", F, p)
		}
		mustNoViolations(t, "bound plan", checkPlan(light, F, p))
	}
	// Fill the nodes to 95%: the bound cannot prove it and says so.
	heavy := edit(light, func(s *State) {
		for i := range s.Groups {
			s.Groups[i].MemoryBytes = 24 * gib
		}
	})
	r = CheckReserve(heavy, 3)
	if r.Method != MethodBound || r.OK || r.Breach == nil || !strings.Contains(r.Breach.Reason, "cannot prove") {
		t.Fatalf("heavy cluster: %s", r.Summary())
	}
	// Admission works with the bound too.
	if a, err := Admit(light, grp("new", 1000, 8), 3); err != nil || a.Reserve.Method != MethodBound {
		t.Errorf("admit on light: %+v %v", a, err)
	}
	if _, err := Admit(heavy, grp("new", 1000, 8), 3); !errors.Is(err, ErrResourceExhausted) || !strings.Contains(err.Error(), "already broken") {
		t.Errorf("admit on heavy: %v", err)
	}
}

func TestReserveSummary(t *testing.T) {
	st := cluster(nodes(3, 32), "a@n1:8", "b@n1:8", "c@n2:8", "d@n2:8", "e@n3:8", "f@n3:8")
	if got := CheckReserve(st, 1).Summary(); !strings.HasPrefix(got, "can sustain 1 failure(s): yes (enumerated; 3 sets planned, 0 pruned); worst n1; headroom") {
		t.Errorf("summary %q", got)
	}
	if got := CheckReserve(st, 2).Summary(); !strings.Contains(got, `no (enumerated; 3 of 6 sets broken): if n1,n2 fail, group "c" cannot restart`) {
		t.Errorf("summary %q", got)
	}
}

// TestReserveExactSearch: both heuristics place a (more important, and
// larger) first on the empty n2, away from its soft partner b, which
// leaves c, whose class is hard, no node. The bounded search places the
// most constrained group first and finds the plan.
func TestReserveExactSearch(t *testing.T) {
	st := cluster(nodes(4, 16), "a@n3:4", "b@n1:2", "c@n4:2")
	web := func(i int, hard bool) { st.Groups[i].AntiAffinity = []Class{{Name: "web", Hard: hard}} }
	web(0, false)
	web(1, false)
	web(2, true)
	st.Groups[0].Priority, st.Groups[2].Priority = 1, 3
	F := []string{"n3", "n4"}
	defer func() { exactSearch = true }()
	for _, search := range []bool{false, true} {
		exactSearch = search
		p, _ := CheckReserve(st, 2).PlanFor(F)
		if p.OK != search {
			t.Fatalf("search=%v: plan %+v", search, p)
		}
		mustNoViolations(t, "plan", checkPlan(st, F, p))
		if search && !reflect.DeepEqual(p.Moves, []Move{{"a", "n3", "n1"}, {"c", "n4", "n2"}}) {
			t.Errorf("moves %v: want priority order a, c", p.Moves)
		}
	}
}

// A failover restarts a group in its preferred site, else in the site it
// ran in, else anywhere, within its possible owners and the room there;
// the emptier node wins only among equals.
func TestFailoverSiteOrder(t *testing.T) {
	node := func(name, site string, memGiB int64) Node {
		return Node{Name: name, Site: site, CPUMillis: 16000, CPUOvercommit: 1, MemoryBytes: memGiB * gib, Up: true}
	}
	// a2 is the fullest node, b1 and c1 are empty.
	nodes := []Node{node("a1", "A", 64), node("a2", "A", 64), node("b1", "B", 64), node("c1", "C", 64)}
	filler := Group{Name: "filler", CPUMillis: 1000, MemoryBytes: 40 * gib, HA: false}
	for _, tc := range []struct {
		name string
		g    Group
		a2   int64 // a2's memory in GiB
		want string
	}{
		{"stays in its site", Group{}, 64, "a2"},
		{"its preferred site first", Group{PreferredSite: "C"}, 64, "c1"},
		{"elsewhere when its site has no room", Group{}, 48, ""},
		{"within its possible owners", Group{PossibleOwners: []string{"a1", "c1"}}, 64, "c1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.g
			g.Name, g.CPUMillis, g.MemoryBytes, g.HA = "g", 1000, 16*gib, true
			ns := append([]Node(nil), nodes...)
			ns[1].MemoryBytes = tc.a2 * gib
			st := State{Nodes: ns, Groups: []Group{g, filler}, Assign: map[string]string{"g": "a1", "filler": "a2"}}
			r := CheckReserve(st, 1)
			p, err := r.PlanFor([]string{"a1"})
			if err != nil || len(p.Moves) != 1 {
				t.Fatalf("plan for a1: %+v, %v (%s)", p, err, r.Summary())
			}
			got := p.Moves[0].To
			if tc.want == "" {
				// Not in A: b1 or c1, the emptier by name among equals.
				if got == "a2" {
					t.Fatalf("restarted on a2, which has no room")
				}
				return
			}
			if got != tc.want {
				t.Fatalf("restarted on %s, want %s", got, tc.want)
			}
		})
	}
}
