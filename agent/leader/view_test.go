package leader

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

const gib = int64(1) << 30

func fsmNode(name string, st havenv1.NodeStatus, memGiB int64) *havenv1.Node {
	return &havenv1.Node{Name: name, Site: "a", Status: st, Capacity: &havenv1.Capacity{CpuMillis: 4000, MemoryBytes: memGiB * gib}}
}

func fsmGroup(name string, st havenv1.GroupState, owner string, memGiB int64) *havenv1.Group {
	return &havenv1.Group{
		Spec:  &havenv1.GroupSpec{Name: name, CpuMillis: 1000, MemoryBytes: memGiB * gib, Priority: havenv1.Priority_PRIORITY_MEDIUM},
		State: st, Owner: owner,
	}
}

const (
	alive   = havenv1.NodeStatus_NODE_STATUS_ALIVE
	failed  = havenv1.NodeStatus_NODE_STATUS_FAILED
	online  = havenv1.GroupState_GROUP_STATE_ONLINE
	offline = havenv1.GroupState_GROUP_STATE_OFFLINE
)

func TestBuildState(t *testing.T) {
	w := fsmNode("w1", alive, 0)
	w.Witness = true
	nodes := []*havenv1.Node{fsmNode("n1", alive, 8), fsmNode("n2", alive, 8), fsmNode("n3", failed, 8), w}
	high := fsmGroup("db", online, "n1", 2)
	high.Spec.Priority = havenv1.Priority_PRIORITY_HIGH
	high.Spec.AntiAffinity = []*havenv1.AntiAffinity{{Class: "sql", Hard: true, AcrossSites: true}}
	high.Spec.PreferredSite = "b"
	manual := fsmGroup("batch", offline, "", 1)
	manual.Spec.Priority = havenv1.Priority_PRIORITY_NO_AUTO_START
	unset := fsmGroup("web", havenv1.GroupState_GROUP_STATE_STOPPING, "n2", 1)
	unset.Spec.Priority = havenv1.Priority_PRIORITY_UNSPECIFIED
	waiting := fsmGroup("lost", havenv1.GroupState_GROUP_STATE_FAILED, "", 1)
	// n2 is alive in the FSM but gossip calls it suspect now; n3 is alive
	// in gossip but failed in the FSM: neither is up.
	st := buildState(nodes, []*havenv1.Group{high, manual, unset, waiting}, map[string]bool{"n1": true, "n3": true, "w1": true}, 4, fixedRate(1<<20), time.Now())

	up := map[string]bool{}
	for _, n := range st.Nodes {
		up[n.Name] = n.Up
		if n.CPUOvercommit != 4 || n.MemoryBytes != 8*gib && !n.Witness {
			t.Errorf("node %s: %+v", n.Name, n)
		}
	}
	if want := map[string]bool{"n1": true, "n2": false, "n3": false, "w1": true}; fmt.Sprint(up) != fmt.Sprint(want) {
		t.Errorf("up = %v, want %v", up, want)
	}
	if !st.Nodes[3].Witness {
		t.Errorf("w1 is not a witness: %+v", st.Nodes[3])
	}
	if want := map[string]string{"db": "n1", "web": "n2"}; fmt.Sprint(st.Assign) != fmt.Sprint(want) {
		t.Errorf("assign = %v, want %v (active states only)", st.Assign, want)
	}
	byName := groupsByName(st)
	if g := byName["db"]; g.Priority != 1 || !g.HA || g.PreferredSite != "b" || len(g.AntiAffinity) != 1 ||
		g.AntiAffinity[0] != (placement.Class{Name: "sql", Hard: true, AcrossSites: true}) || g.MemoryBytes != 2*gib || g.DirtyRateBytesPerSec != 1<<20 {
		t.Errorf("db = %+v", g)
	}
	if g := byName["batch"]; g.HA || g.Priority != 4 {
		t.Errorf("no-auto-start group = %+v, want not HA, placed last", g)
	}
	if g := byName["web"]; g.Priority != 2 || !g.HA {
		t.Errorf("unspecified priority = %+v, want medium (2) and HA", g)
	}
}

func TestReserveK(t *testing.T) {
	nodes := func(hosts, witnesses int) placement.State {
		var st placement.State
		for i := 0; i < hosts; i++ {
			st.Nodes = append(st.Nodes, placement.Node{Name: fmt.Sprintf("n%d", i)})
		}
		for i := 0; i < witnesses; i++ {
			st.Nodes = append(st.Nodes, placement.Node{Name: fmt.Sprintf("w%d", i), Witness: true})
		}
		return st
	}
	for _, tt := range []struct {
		hosts, witnesses, configured, want int
	}{
		{1, 0, 1, 0}, // one node: nothing to reserve on
		{1, 2, 1, 0}, // witnesses host nothing
		{2, 0, 1, 1},
		{3, 0, 2, 2},
		{3, 0, 5, 2},
		{4, 0, 0, 0}, // admission off
	} {
		if got := reserveK(nodes(tt.hosts, tt.witnesses), tt.configured); got != tt.want {
			t.Errorf("%d hosts, %d witnesses, reserve %d: k = %d, want %d", tt.hosts, tt.witnesses, tt.configured, got, tt.want)
		}
	}
}

// The site-loss reserve is kept only while two sites host groups: a site
// of witnesses hosts nothing, and a site whose nodes are down still
// counts.
func TestReserveSites(t *testing.T) {
	node := func(name, site string, witness bool) placement.Node {
		return placement.Node{Name: name, Site: site, Witness: witness}
	}
	for _, tt := range []struct {
		name             string
		nodes            []placement.Node
		configured, want int
	}{
		{"off", []placement.Node{node("a1", "a", false), node("b1", "b", false)}, 0, 0},
		{"two sites", []placement.Node{node("a1", "a", false), node("b1", "b", false)}, 1, 1},
		{"one site", []placement.Node{node("a1", "a", false), node("a2", "a", false)}, 1, 0},
		{"one site and a witness's", []placement.Node{node("a1", "a", false), node("a2", "a", false), node("w1", "w", true)}, 1, 0},
		{"two sites and a witness's", []placement.Node{node("a1", "a", false), node("b1", "b", false), node("w1", "w", true)}, 1, 1},
	} {
		if got := reserveSites(placement.State{Nodes: tt.nodes}, tt.configured); got != tt.want {
			t.Errorf("%s: reserve_sites %d keeps %d, want %d", tt.name, tt.configured, got, tt.want)
		}
	}
}

func testState() placement.State {
	n := func(name string) placement.Node {
		return placement.Node{Name: name, CPUMillis: 4000, CPUOvercommit: 4, MemoryBytes: 8 * gib, Up: true}
	}
	g := func(name string, memGiB int64) placement.Group {
		return placement.Group{Name: name, CPUMillis: 1000, MemoryBytes: memGiB * gib, Priority: 2, HA: true}
	}
	return placement.State{
		Nodes:  []placement.Node{n("n1"), n("n2"), n("n3")},
		Groups: []placement.Group{g("a", 2), g("b", 2), g("c", 1), g("new", 1)},
		Assign: map[string]string{"a": "n1", "b": "n1", "c": "n2"},
	}
}

func TestStateKey(t *testing.T) {
	one := placement.Spec{K: 1}
	base := stateKey(testState(), one)
	if stateKey(testState(), one) != base {
		t.Fatal("equal states, different keys")
	}
	for name, change := range map[string]func(*placement.State){
		"node down":        func(s *placement.State) { s.Nodes[1].Up = false },
		"capacity":         func(s *placement.State) { s.Nodes[0].MemoryBytes++ },
		"overcommit":       func(s *placement.State) { s.Nodes[0].CPUOvercommit = 2 },
		"assignment":       func(s *placement.State) { s.Assign["new"] = "n3" },
		"owner":            func(s *placement.State) { s.Assign["c"] = "n3" },
		"demand":           func(s *placement.State) { s.Groups[0].CPUMillis++ },
		"anti-affinity":    func(s *placement.State) { s.Groups[0].AntiAffinity = []placement.Class{{Name: "x"}} },
		"possible owners":  func(s *placement.State) { s.Groups[0].PossibleOwners = []string{"n1"} },
		"ha":               func(s *placement.State) { s.Groups[0].HA = false },
		"group added":      func(s *placement.State) { s.Groups = append(s.Groups, placement.Group{Name: "z"}) },
		"unknown assigned": func(s *placement.State) { s.Assign["ghost"] = "n1" },
	} {
		st := testState()
		st.Assign = map[string]string{"a": "n1", "b": "n1", "c": "n2"}
		change(&st)
		if stateKey(st, one) == base {
			t.Errorf("%s: key unchanged", name)
		}
	}
	if stateKey(testState(), placement.Spec{K: 2}) == base {
		t.Error("another k, same key")
	}
	if stateKey(testState(), placement.Spec{K: 1, SiteLoss: true}) == base {
		t.Error("the site-loss reserve asked, same key")
	}
}

// The key a reserve is kept under, computed on the state as built, is the
// key of the state the reserve is checked on: only the groups that run,
// with the admitted assignments added. A start keeps its admission's
// reserve under it without building that state.
func TestReserveKeyIsTheKeyOfTheReserveView(t *testing.T) {
	one := placement.Spec{K: 1}
	for name, extra := range map[string]map[string]string{
		"none":            nil,
		"a start":         {"new": "n3"},
		"a move":          {"c": "n3"},
		"unlisted":        {"ghost": "n2"},
		"start and ghost": {"new": "n2", "ghost": "n1"},
	} {
		st := testState()
		want := stateKey(reserveView(withAssign(st, extra)), one)
		if got := reserveKey(st, one, extra); got != want {
			t.Errorf("%s: reserveKey %x, the reserve view's key %x", name, got, want)
		}
	}
	st := testState()
	if reserveKey(st, one, nil) == reserveKey(st, one, map[string]string{"new": "n3"}) {
		t.Error("a start does not change the reserve's key")
	}
	st.Groups = append(st.Groups, placement.Group{Name: "idle", HA: true})
	if reserveKey(st, one, nil) != reserveKey(testState(), one, nil) {
		t.Error("a group that runs nowhere changes the reserve's key")
	}
}

func TestPlaceGroupsPrefersLeaseHolders(t *testing.T) {
	st := testState()
	// Alone, "new" goes to the emptiest node, n3.
	if got, _ := placeGroups(st, []string{"new"}, nil, nil); got["new"] != "n3" {
		t.Fatalf("no lease holder: placed on %q, want n3", got["new"])
	}
	// Right after an election every node holds a lease or none does:
	// nothing to prefer.
	all := map[string]bool{"n1": true, "n2": true, "n3": true}
	if got, _ := placeGroups(st, []string{"new"}, nil, all); got["new"] != "n3" {
		t.Fatalf("all hold leases: placed on %q, want n3", got["new"])
	}
	// Only n1 holds one: it gets the group although it is fuller.
	if got, _ := placeGroups(st, []string{"new"}, nil, map[string]bool{"n1": true}); got["new"] != "n1" {
		t.Fatalf("n1 holds the only lease: placed on %q, want n1", got["new"])
	}
	// The holder has no room: the group still runs, elsewhere.
	big := withGroup(st, placement.Group{Name: "new", CPUMillis: 1000, MemoryBytes: 5 * gib, Priority: 2, HA: true})
	got, why := placeGroups(big, []string{"new"}, nil, map[string]bool{"n1": true})
	if got["new"] != "n3" {
		t.Fatalf("holder full: placed on %q (%v), want n3", got["new"], why)
	}
	// Excluded nodes are never used, holder or not.
	if got, _ := placeGroups(st, []string{"new"}, []string{"n1", "n3"}, map[string]bool{"n1": true}); got["new"] != "n2" {
		t.Fatalf("n1, n3 excluded: placed on %q, want n2", got["new"])
	}
	// Nowhere to go: the reason names every node.
	huge := withGroup(st, placement.Group{Name: "new", MemoryBytes: 9 * gib, HA: true})
	got, why = placeGroups(huge, []string{"new"}, nil, map[string]bool{"n1": true})
	if got["new"] != "" || !strings.Contains(why["new"], "memory") {
		t.Fatalf("huge group: placed %v, reason %q", got, why["new"])
	}
}

func TestAdmit(t *testing.T) {
	l := newTestLeader(t, nil)
	st := testState()
	g := func(memGiB int64) placement.Group {
		return placement.Group{Name: "new", CPUMillis: 1000, MemoryBytes: memGiB * gib, Priority: 2, HA: true}
	}
	// With reserve 1 on 3 nodes of 8 GiB holding 5 GiB, a 1 GiB group fits
	// and keeps the reserve.
	node, r, err := l.admit(st, g(1), placement.Spec{K: 1}, nil)
	if err != nil || node != "n3" || r == nil || !r.OK {
		t.Fatalf("admit 1 GiB: %q %v %v", node, r, err)
	}
	// Right after an election no node holds a lease: still admitted.
	if node, _, err := l.admit(st, g(1), placement.Spec{K: 1}, map[string]bool{}); err != nil || node == "" {
		t.Fatalf("admit with no lease holder: %q %v", node, err)
	}
	// Lease holders first: n3, the emptiest, has not renewed.
	if node, _, err := l.admit(st, g(1), placement.Spec{K: 1}, map[string]bool{"n1": true, "n2": true}); err != nil || node != "n2" {
		t.Fatalf("admit with n3 holding no lease: %q %v, want n2", node, err)
	}
	// A single holder could not restart the group after its own failure:
	// the reserve decides, and the group goes where it keeps it.
	if node, _, err := l.admit(st, g(1), placement.Spec{K: 1}, map[string]bool{"n2": true}); err != nil || node != "n3" {
		t.Fatalf("admit with n2 holding the only lease: %q %v, want n3", node, err)
	}
	// 8 GiB fits on n3 but no other node could take it if n3 failed:
	// refused, naming the failure set and the group.
	_, _, err = l.admit(st, g(8), placement.Spec{K: 1}, nil)
	if !errors.Is(err, placement.ErrResourceExhausted) {
		t.Fatalf("admit 8 GiB: %v, want ResourceExhausted", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "fails, group") || !strings.Contains(msg, "would break reserve 1") {
		t.Fatalf("refusal: %v", msg)
	}
	// Reserve 0 is plain placement.
	if node, r, err := l.admit(st, g(8), placement.Spec{}, nil); err != nil || node != "n3" || r != nil {
		t.Fatalf("admit 8 GiB without reserve: %q %v %v", node, r, err)
	}
	// Too big for any node: NoRoomError with the reason.
	_, _, err = l.admit(st, g(9), placement.Spec{}, nil)
	var nr *placement.NoRoomError
	if !errors.As(err, &nr) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("admit 9 GiB: %v", err)
	}
}

func TestRestartPlan(t *testing.T) {
	l := newTestLeader(t, nil)
	before := testState()
	kept := l.reserveFor(before, placement.Spec{K: 1})
	if !kept.OK {
		t.Fatalf("setup: %s", kept.Summary())
	}
	want, err := kept.PlanFor([]string{"n1"})
	if err != nil || !want.Precomputed || len(want.Moves) != 2 {
		t.Fatalf("setup plan: %+v %v", want, err)
	}
	wantTo := map[string]string{}
	for _, m := range want.Moves {
		wantTo[m.Group] = m.To
	}

	// n1 fails: the kept plan is executed as it is, without a search.
	now := before
	now.Nodes = append([]placement.Node(nil), before.Nodes...)
	now.Nodes[0].Up = false
	got, why, fromPlan := l.restartPlan(now, []string{"a", "b"}, []string{"n1"}, nil)
	if fromPlan != 2 || fmt.Sprint(got) != fmt.Sprint(wantTo) || len(why) != 0 {
		t.Fatalf("restart: %v (%d from plan, %v), want the kept plan %v", got, fromPlan, why, wantTo)
	}
	if l.keptReserve() != kept {
		t.Fatal("the failover recomputed the reserve")
	}

	// A planned node that went down since the plan was made is not used:
	// its groups are placed afresh on what is left.
	down := wantTo["a"]
	stale := now
	stale.Nodes = append([]placement.Node(nil), now.Nodes...)
	for i := range stale.Nodes {
		if stale.Nodes[i].Name == down {
			stale.Nodes[i].Up = false
		}
	}
	got, why, fromPlan = l.restartPlan(stale, []string{"a", "b"}, []string{"n1"}, nil)
	for g, n := range got {
		if n == down || n == "n1" {
			t.Fatalf("group %s restarted on %s, which is down", g, n)
		}
	}
	if len(got)+len(why) != 2 || fromPlan == 2 {
		t.Fatalf("stale plan: %v, %v, %d from the plan", got, why, fromPlan)
	}

	// A planned node holding no lease while another does is passed over.
	holders := map[string]bool{"n3": true}
	got, _, _ = l.restartPlan(now, []string{"a", "b"}, []string{"n1"}, holders)
	if got["a"] != "n3" || got["b"] != "n3" {
		t.Fatalf("with only n3 holding a lease: %v, want both on n3", got)
	}
}

// TestReserveIgnoresGroupsWithNoNode: a group created, or started but not
// yet placed, leaves the kept reserve as it is (no check of every failure
// set at each one); the group's placement is a new reserve.
func TestReserveIgnoresGroupsWithNoNode(t *testing.T) {
	l := New(Config{})
	one := placement.Spec{K: 1}
	st := testState()
	r := l.reserveFor(st, one)
	st.Groups = append(st.Groups, placement.Group{Name: "zz", CPUMillis: 1000, MemoryBytes: gib, HA: true})
	if l.reserveFor(st, one) != r {
		t.Error("a group with no node made the reserve be checked again")
	}
	st.Assign["zz"] = "n3"
	r2 := l.reserveFor(st, one)
	if r2 == r {
		t.Fatal("a group placed left the reserve as it was")
	}
	// The reserve with the group on n3 counts it: n3's loss displaces it.
	plan, err := r2.PlanFor([]string{"n3"})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Moves) != 1 || plan.Moves[0].Group != "zz" {
		t.Errorf("plan for n3's loss: %+v, want zz restarted", plan.Moves)
	}
}

// groupsRead runs after once, right after the first read of the groups.
type groupsRead struct {
	State
	after func()
}

func (r *groupsRead) Groups() []*havenv1.Group {
	gs := r.State.Groups()
	if f := r.after; f != nil {
		r.after = nil
		f()
	}
	return gs
}

// TestPlacementStateSeesAStartEndingAsItReads: a start whose commit is
// applied, and whose pending entry ends, just after the placement state
// read the groups is still in that state, as pending; read the other way
// round it was in neither, and a concurrent start was admitted beside it.
func TestPlacementStateSeesAStartEndingAsItReads(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.Create(sized("g", 4))
	g := tl.state.Group("g")
	done := tl.pending.add("g", "n2")
	tl.state = &groupsRead{State: tl.state, after: func() {
		if err := tl.apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: "g", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n2",
			State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN,
		}}}); err != nil {
			t.Fatal(err)
		}
		done()
	}}
	if got := tl.placementState().Assign["g"]; got != "n2" {
		t.Fatalf("g is assigned to %q in the placement state, want n2", got)
	}
	if got := tl.state.Group("g").GetOwner(); got != "n2" {
		t.Fatalf("g's start was not applied (owner %q)", got)
	}
}
