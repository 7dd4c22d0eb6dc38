package leader

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// stretchLeader is a stretch cluster: n1 and n2 in site a, n3 and n4 in
// site b (8 CPUs, 16 GiB each), a witness w1 in site w, and one 7 GiB
// group online on each data node. Losing a site leaves 9 GiB free on
// each node of the other, which takes the two 7 GiB groups; losing one
// node leaves room in both sites.
func stretchLeader(t *testing.T, reserve, sites int) *testLeader {
	t.Helper()
	tl := newTestLeader(t, nil)
	tl.cfg.Reserve, tl.cfg.ReserveSites = reserve, sites
	tl.raft.AddNode(fsmtest.Node("n3", "b", 8000, 16<<30, nil))
	tl.raft.AddNode(fsmtest.Node("n4", "b", 8000, 16<<30, nil))
	w := fsmtest.Node("w1", "w", 1000, 1<<30, nil)
	w.Witness = true
	tl.raft.AddNode(w)
	tl.members.mu.Lock()
	tl.members.m = append(tl.members.m,
		heartbeat.Member{Name: "n4", State: heartbeat.StateAlive, Meta: heartbeat.Meta{Site: "b", CPUMillis: 8000, MemoryBytes: 16 << 30}},
		heartbeat.Member{Name: "w1", State: heartbeat.StateAlive, Meta: heartbeat.Meta{Site: "w", Witness: true}})
	tl.members.mu.Unlock()
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		name := "g-" + n
		tl.raft.Create(sized(name, 7))
		tl.raft.Assign(name, n)
		tl.raft.Report(name, havenv1.GroupState_GROUP_STATE_ONLINE)
	}
	return tl
}

// sized is an HA group of one VM of memGiB.
func sized(name string, memGiB int64) *havenv1.GroupSpec {
	spec := &havenv1.GroupSpec{Name: name, Resources: []*havenv1.Resource{
		{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: memGiB << 30}},
	}}
	fsm.NormalizeGroupSpec(spec)
	return spec
}

// With placement.reserve_sites 1, a group that any one node's failure
// leaves room for, but that would leave one site's loss without a restart
// plan, is refused at creation and at start, and the refusal names the
// site; the same group is admitted under placement.reserve alone.
func TestAdmissionKeepsTheSiteLossReserve(t *testing.T) {
	tl := stretchLeader(t, 1, 1)
	var refused []string
	tl.cfg.Refused = func(call, group, reason string) {
		refused = append(refused, call+" "+group+": "+reason)
	}
	rep := tl.KeptReserve()
	if rep.Reserve == nil || !rep.OK || rep.KeptSites != 1 || len(rep.Sites) != 2 {
		t.Fatalf("setup: %+v", rep)
	}
	_, err := tl.CreateGroup(sized("web", 4), "req-1")
	var re *placement.ReserveError
	if !errors.Is(err, placement.ErrResourceExhausted) || !errors.As(err, &re) {
		t.Fatalf("create: %v, want a reserve refusal", err)
	}
	site := re.Breach.Site
	if site != "a" && site != "b" {
		t.Fatalf("refusal names site %q: %v", site, err)
	}
	if !strings.Contains(err.Error(), "reserve 1 and site loss") || !strings.Contains(err.Error(), "if site "+site+" fails") {
		t.Errorf("refusal reads %q", err)
	}
	if tl.state.Group("web") != nil {
		t.Fatal("a refused group was created")
	}

	// Created while only K was kept, then started with both kept.
	tl.cfg.ReserveSites = 0
	if _, err := tl.CreateGroup(sized("web", 4), "req-2"); err != nil {
		t.Fatalf("create with reserve_sites 0: %v", err)
	}
	tl.cfg.ReserveSites = 1
	_, err = tl.StartGroup("web", "", "req-3")
	if !errors.Is(err, placement.ErrResourceExhausted) || !errors.As(err, &re) || re.Breach.Site == "" {
		t.Fatalf("start: %v, want a refusal naming a site", err)
	}
	if g := tl.state.Group("web"); g.GetOwner() != "" {
		t.Fatalf("a refused start placed the group on %s", g.GetOwner())
	}
	// On a node the operator chose, the same: with web on n3 there is
	// no room left in b for a's groups.
	_, err = tl.StartGroup("web", "n3", "req-4")
	if !errors.As(err, &re) || re.Breach.Site != "a" {
		t.Fatalf("start on n3: %v, want a refusal naming site a", err)
	}

	tl.cfg.ReserveSites = 0
	if g, err := tl.StartGroup("web", "", "req-5"); err != nil || g.GetOwner() == "" {
		t.Fatalf("start with reserve_sites 0: %v", err)
	}
	// Each refusal was reported, for the events, with its reason.
	if len(refused) != 3 || !strings.HasPrefix(refused[0], "create web: ") || !strings.HasPrefix(refused[1], "start web: ") ||
		!strings.HasPrefix(refused[2], "start web: ") || !strings.Contains(refused[2], "if site a fails") {
		t.Errorf("refusals reported: %q", refused)
	}
}

// A group small enough for every site's loss is admitted, and the loss of
// a site finds the restart plan the kept reserve made for it.
func TestSiteLossPlanIsKept(t *testing.T) {
	tl := stretchLeader(t, 1, 1)
	if _, err := tl.CreateGroup(sized("small", 1), "req-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tl.StartGroup("small", "", "req-2"); err != nil {
		t.Fatal(err)
	}
	rep := tl.KeptReserve()
	if !rep.OK || len(rep.Sites) != 2 {
		t.Fatalf("kept: %s %+v", rep.Summary(), rep.Sites)
	}
	plan, err := rep.PlanFor([]string{"n3", "n4"})
	if err != nil || !plan.Precomputed || !plan.OK {
		t.Fatalf("plan for site b: %+v %v", plan, err)
	}
	for _, m := range plan.Moves {
		if m.To != "n1" && m.To != "n2" {
			t.Errorf("%s restarts on %s, not in site a", m.Group, m.To)
		}
	}
}

// With a single site that hosts groups the site-loss reserve cannot hold:
// it is not kept (nothing is refused for it), and the report says it was
// asked for.
func TestSiteLossReserveNeedsTwoSites(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.cfg.Reserve, tl.cfg.ReserveSites = 1, 1
	w := fsmtest.Node("w1", "w", 1000, 1<<30, nil)
	w.Witness = true
	tl.raft.AddNode(w)
	if _, err := tl.CreateGroup(sized("web", 4), "req-1"); err != nil {
		t.Fatal(err)
	}
	rep := tl.KeptReserve()
	if rep.Reserve == nil || rep.SiteLoss || rep.KeptSites != 0 || rep.ConfiguredSites != 1 || rep.Kept != 1 {
		t.Fatalf("kept %+v: want K 1 only, with reserve_sites 1 configured", rep)
	}
}

// Starts decided while earlier ones are still committing see them:
// concurrent starts of one group start it once, all of them answered
// without error, and a dozen concurrent starts then admit no more groups
// than reserve 1 leaves room for. (The one group starts first: decided
// after eight of the others, it would be refused, rightly, as eight 4 GiB
// groups fill what two nodes hold.)
func TestConcurrentStartsSeePendingOnes(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.cfg.Reserve = 1
	var names []string
	for i := range 12 {
		name := fmt.Sprintf("g%02d", i)
		tl.raft.Create(sized(name, 4))
		names = append(names, name)
	}
	tl.raft.Create(sized("once", 1))
	tl.raft.delay = 20 * time.Millisecond
	var wg sync.WaitGroup
	errs := make(chan error, len(names)+4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tl.StartGroup("once", "", fmt.Sprintf("once-%d", i)); err != nil {
				errs <- fmt.Errorf("once, start %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tl.StartGroup(name, "", "start-"+name); err != nil && !errors.Is(err, placement.ErrResourceExhausted) {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Three 16 GiB nodes; after any one fails the other two hold 32 GiB:
	// seven 4 GiB groups beside the 1 GiB one, at most.
	perNode := map[string]int64{}
	started := 0
	for _, name := range append(names, "once") {
		g := tl.state.Group(name)
		if g.GetOwner() == "" {
			continue
		}
		if name != "once" {
			started++
		}
		for _, r := range g.GetSpec().GetResources() {
			perNode[g.GetOwner()] += r.GetVm().GetMemoryBytes()
		}
	}
	if started == 0 || started > 7 {
		t.Errorf("%d groups of 4 GiB started; reserve 1 leaves room for 1 to 7", started)
	}
	for n, b := range perNode {
		if b > 16<<30 {
			t.Errorf("%s holds %d GiB, more than its 16", n, b>>30)
		}
	}
	if r := tl.KeptReserve(); r.Reserve == nil || !r.Reserve.OK {
		t.Errorf("the reserve does not hold after the starts: %+v", r.Reserve)
	}
	if g := tl.state.Group("once"); g.GetOwner() == "" {
		t.Errorf("once was not started: %v", g)
	}
}

// A start on a node gossip knows and the FSM does not yet (a new leader
// records the members after its barrier) goes there; one on a node
// nobody knows is refused as not found.
func TestStartOnNodeNotYetRecorded(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.members.mu.Lock()
	tl.members.m = append(tl.members.m, heartbeat.Member{Name: "n4", State: heartbeat.StateAlive,
		Meta: heartbeat.Meta{Site: "a", CPUMillis: 8000, MemoryBytes: 16 << 30}})
	tl.members.mu.Unlock()
	if _, err := tl.CreateGroup(sized("web", 1), "req-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tl.StartGroup("web", "n9", "req-2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("start on an unknown node: %v, want not found", err)
	}
	if _, err := tl.StartGroup("web", "n4", "req-3"); err != nil {
		t.Fatal(err)
	}
	if g := tl.raft.FSM.Group("web"); g.GetOwner() != "n4" {
		t.Fatalf("owner %q, want n4", g.GetOwner())
	}
}

// A creation that the kept reserve admits reads no group: at 10,000
// groups, reading them all and fingerprinting the state was most of what
// a creation cost the leader. One that it refuses is checked against the
// state as it is now, and refused only then.
func TestCreateAdmittedByTheKeptReserve(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.cfg.Reserve = 1
	if _, err := tl.CreateGroup(sized("web", 1), "req-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tl.StartGroup("web", "", "req-2"); err != nil {
		t.Fatal(err)
	}
	if r := tl.keptReserve(); r == nil || r.K != 1 {
		t.Fatalf("kept after a start: %v", r)
	}
	cs := &countingState{State: tl.state}
	tl.state = cs
	if _, err := tl.CreateGroup(sized("db", 1), "req-3"); err != nil {
		t.Fatal(err)
	}
	if n := cs.groups.Load(); n != 0 {
		t.Fatalf("a creation the kept reserve admits read every group %d times", n)
	}
	if _, err := tl.CreateGroup(sized("big", 20), "req-4"); !errors.Is(err, placement.ErrResourceExhausted) {
		t.Fatalf("create big: %v, want a refusal: no node has 20 GiB", err)
	}
	if cs.groups.Load() == 0 {
		t.Fatal("the refusal was not checked against the state as it is")
	}
}

// A status call's reserve is read again only when the state may have
// changed: a commit, a member's change, a start pending, or time. While
// none happens it is the answer found last, without reading the groups.
// After a change the call answers at once with the reserve before it,
// and the new state's is checked in the background.
func TestKeptReserveReadsTheStateOnlyWhenItMayHaveChanged(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.cfg.Reserve = 1
	tl.raft.StartOn("web", "n2")
	cs := &countingState{State: tl.state}
	tl.state = cs
	reads := func(what string, want int64) {
		t.Helper()
		cs.groups.Store(0)
		rep := tl.KeptReserve()
		if got := cs.groups.Load(); got != want {
			t.Errorf("%s: %d reads of every group, want %d", what, got, want)
		}
		if rep.Reserve == nil || rep.Kept != 1 {
			t.Errorf("%s: kept %+v, want reserve 1", what, rep)
		}
	}
	// checked waits for the background check a call may have started:
	// the check holds checking until it has kept its reserve.
	checked := func() {
		tl.reserve.checking.Lock()
		//lint:ignore SA2001 the wait for the lock is the point
		tl.reserve.checking.Unlock()
	}
	reads("first call", 1)
	reads("nothing changed", 0)
	before := tl.KeptReserve().Reserve
	tl.raft.StartOn("db", "n3")
	if r := tl.KeptReserve().Reserve; r != before {
		t.Error("a status call after a commit waited for the new state's check")
	}
	checked()
	if plan, err := tl.KeptReserve().PlanFor([]string{"n3"}); err != nil || len(plan.Moves) != 1 || plan.Moves[0].Group != "db" {
		t.Errorf("after the check: plan for n3 %+v %v, want db moved", plan, err)
	}
	reads("nothing changed since", 0)
	tl.members.mu.Lock()
	tl.members.m[2].State = heartbeat.StateSuspect
	tl.members.mu.Unlock()
	reads("n3 suspect", 1)
	checked()
	reads("checked since", 1)
	reads("nothing changed since", 0)
	done := tl.pending.add("cache", "n1")
	reads("a start pending", 1)
	checked()
	done()
	reads("the start ended uncommitted", 1)
	checked()
	reads("checked since", 1)
	reads("nothing changed since", 0)
	now := reserveSeen{index: tl.state.Index(), members: tl.members.Members(), at: time.Now().Add(reserveSeenFor)}
	if _, ok := tl.reserve.seenAt(now); ok {
		t.Errorf("a reserve seen %s ago is still the answer", reserveSeenFor)
	}
}
