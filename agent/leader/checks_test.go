package leader

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// check reports, as node would, the groups its driver cannot run (name ->
// reason), checked against the FSM as it is now.
func (tl *testLeader) check(t *testing.T, node string, cannot map[string]string) {
	t.Helper()
	if err := tl.reportChecks(node, cannot); err != nil {
		t.Fatal(err)
	}
}

func (tl *testLeader) reportChecks(node string, cannot map[string]string) error {
	req := &havenv1.ReportChecksRequest{Node: node, CheckedIndex: tl.state.Index()}
	for name, why := range cannot {
		req.CannotRun = append(req.CannotRun, &havenv1.GroupRefusal{Group: name, CreateIndex: tl.state.Group(name).GetCreateIndex(), Reason: why})
	}
	return tl.ReportChecks(req)
}

// A start goes straight to a node that can run the group: no start is
// tried, and no failure recorded, where the driver said it cannot. A group
// no node can run is refused with every node's reason.
func TestStartSkipsNodesThatCannotRun(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.Create(fsmtest.VMGroup("web"))
	tl.raft.Create(fsmtest.VMGroup("db"))
	const noKernel = "vm: boot.kernel: stat /boot/vmlinuz: no such file or directory"
	tl.check(t, "n1", map[string]string{"web": noKernel, "db": noKernel})
	tl.check(t, "n2", map[string]string{"web": noKernel, "db": noKernel})
	tl.check(t, "n3", map[string]string{"db": `vm: machine "pc-q35-9.0": this node's QEMU does not emulate it`})
	// `haven place web` gives the reasons.
	ranked, _, err := tl.Rank(tl.state.Group("web").GetSpec())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranked {
		if r.Feasible != (r.Node == "n3") || r.Node != "n3" && !strings.Contains(fmt.Sprint(r.Why), noKernel) {
			t.Errorf("rank of web: %s feasible=%v why %v; want only n3, the others for %q", r.Node, r.Feasible, r.Why, noKernel)
		}
	}
	g, err := tl.StartGroup("web", "", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if g.GetOwner() != "n3" || len(g.GetFailures()) != 0 {
		t.Fatalf("web started on %q with failures %v, want n3 and none", g.GetOwner(), g.GetFailures())
	}
	_, err = tl.StartGroup("db", "", "r2")
	for _, want := range []string{"no node can run it", "n1: " + noKernel, "n2: " + noKernel, `n3: vm: machine "pc-q35-9.0"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("start of db: %v, want an error with %q", err, want)
		}
	}
	if g := tl.state.Group("db"); g.GetOwner() != "" || g.GetDesired() == havenv1.DesiredState_DESIRED_STATE_RUN {
		t.Errorf("a refused start changed the group: %v", g)
	}
	// The operator asks for a node that cannot run it: refused too.
	if _, err := tl.StartGroup("db", "n3", "r3"); err == nil || !strings.Contains(err.Error(), "pc-q35-9.0") {
		t.Errorf("start of db on n3: %v, want the node's reason", err)
	}
}

// A start of a group the nodes have not checked yet (created a moment
// ago) waits for the check of the node it chose, so it does not try a
// node that is about to say it cannot run it.
func TestStartWaitsForChecks(t *testing.T) {
	tl := newTestLeader(t, nil)
	for _, n := range []string{"n1", "n2", "n3"} {
		tl.check(t, n, nil)
	}
	tl.raft.Create(fsmtest.VMGroup("web"))
	go func() {
		time.Sleep(100 * time.Millisecond) // the nodes' checks on their way
		for _, n := range []string{"n3", "n2", "n1"} {
			var cannot map[string]string
			if n == "n1" {
				cannot = map[string]string{"web": "vm: boot.kernel: no such file"}
			}
			if err := tl.reportChecks(n, cannot); err != nil {
				t.Error(err)
			}
		}
	}()
	begin := time.Now()
	g, err := tl.StartGroup("web", "", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if g.GetOwner() == "n1" {
		t.Fatalf("web started on n1, which reported it cannot run it (after %v)", time.Since(begin))
	}
	if d := time.Since(begin); d >= checksWait {
		t.Errorf("the start waited %v, the whole bound, though every node checked", d)
	}
}

// A start waits for the check of the node it chose only: a node that has
// not checked the group yet, and that the group may not run on anyway,
// holds nothing up. (Waiting for every node held each start for the
// slowest of a hundred.)
func TestStartWaitsForTheChosenNodeOnly(t *testing.T) {
	tl := newTestLeader(t, nil)
	spec := fsmtest.VMGroup("web")
	spec.PossibleOwners = []string{"n1", "n2"}
	tl.raft.Create(spec)
	tl.check(t, "n1", nil)
	tl.check(t, "n2", nil)
	begin := time.Now()
	g, err := tl.StartGroup("web", "", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d >= checksWait/2 || (g.GetOwner() != "n1" && g.GetOwner() != "n2") {
		t.Fatalf("started on %q after %v, though n1 and n2 had checked it and n3 may not run it", g.GetOwner(), d)
	}
}

// A start that would be refused waits for every node's check first: the
// refusal may rest on a node about to say it cannot run the group either,
// and the answer is then that no node can, with each node's reason.
func TestRefusalWaitsForEveryCheck(t *testing.T) {
	for _, reserve := range []int{0, 1} {
		tl := newTestLeader(t, nil)
		tl.cfg.Reserve = reserve
		tl.raft.Create(fsmtest.VMGroup("web"))
		cannot := map[string]string{"web": "vm: boot.kernel: no such file"}
		tl.check(t, "n1", cannot)
		tl.check(t, "n2", cannot)
		// n3's check lands while the start decides: after the start read
		// which nodes had checked (the first listing of the members),
		// once the decision's state has read the nodes (the second). The
		// decision is on a state without n3's refusal, and must not be
		// final, nor go to n3, on the strength of a report it did not see.
		tl.members.mu.Lock()
		tl.members.lists = 0
		tl.members.onList = func(n int) {
			if n == 2 {
				if err := tl.reportChecks("n3", cannot); err != nil {
					t.Error(err)
				}
			}
		}
		tl.members.mu.Unlock()
		_, err := tl.StartGroup("web", "", "r1")
		for _, want := range []string{"no node can run it", "n1: vm: boot.kernel", "n2: vm: boot.kernel", "n3: vm: boot.kernel"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("reserve %d: start: %v, want an error with %q", reserve, err, want)
			}
		}
	}
}

// A refusal of a deleted group does not hold off a new group of its name,
// and refusals change the state key (a kept reserve, the wait memo).
func TestRefusalsOfTheGroupAsCreated(t *testing.T) {
	nodes := []*havenv1.Node{fsmtest.Node("n1", "a", 4000, 8<<30, nil), fsmtest.Node("n2", "a", 4000, 8<<30, nil)}
	alive := map[string]bool{"n1": true, "n2": true}
	group := &havenv1.Group{Spec: fsmtest.VMGroup("web"), CreateIndex: 7}
	now := time.Now()
	st := func() placement.State {
		return buildState(nodes, []*havenv1.Group{group}, alive, 4, fixedRate(0), now)
	}
	base := stateKey(st(), placement.Spec{})
	nodes[0].CannotRun = []*havenv1.GroupRefusal{{Group: "web", CreateIndex: 3, Reason: "old"}}
	if got := st().Groups[0].CannotRun; len(got) != 0 {
		t.Errorf("a refusal of an older group of the name applies: %v", got)
	}
	nodes[0].CannotRun = []*havenv1.GroupRefusal{{Group: "web", CreateIndex: 7, Reason: "vm: boot.kernel: no such file"}}
	if got := st().Groups[0].CannotRun; got["n1"] != "vm: boot.kernel: no such file" || len(got) != 1 {
		t.Errorf("CannotRun = %v, want n1's reason", got)
	}
	if stateKey(st(), placement.Spec{}) == base {
		t.Error("a node's refusal does not change the state key")
	}
}

// A group whose start failed on its owner moves to a node that can run
// it, or fails at once with the reasons of those that cannot, without a
// start tried there.
func TestFailedStartSkipsNodesThatCannotRun(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.StartOn("web", "n1")
	tl.check(t, "n2", map[string]string{"web": "vm: boot.kernel: no such file"})
	tl.check(t, "n3", nil)
	fail := func(node string) *havenv1.Group {
		t.Helper()
		g := tl.state.Group("web")
		if err := tl.Report(&havenv1.ReportGroupRequest{Node: node, Name: "web", Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(),
			State: havenv1.GroupState_GROUP_STATE_FAILED, Reason: "vm crashed on " + node}); err != nil {
			t.Fatal(err)
		}
		return tl.state.Group("web")
	}
	if g := fail("n1"); g.GetOwner() != "n3" {
		t.Fatalf("after failing on n1: owner %q, want n3 (n2 cannot run it)", g.GetOwner())
	}
	g := fail("n3")
	if g.GetState() != havenv1.GroupState_GROUP_STATE_FAILED || !strings.Contains(g.GetStateReason(), "n2: vm: boot.kernel: no such file") {
		t.Fatalf("after failing on n3: %v", g)
	}
	for _, f := range g.GetFailures() {
		if f.GetNode() == "n2" {
			t.Errorf("a failure recorded on n2, where no start was tried: %v", g.GetFailures())
		}
	}
}

// A report that changes no refusal is not committed: with every node
// reporting after each group created, committing them would make one
// creation N commits. The leader still knows the node checked.
func TestUnchangedChecksNotCommitted(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.Create(fsmtest.VMGroup("web"))
	created := tl.state.Group("web").GetCreateIndex()
	before := tl.state.Index()
	for _, n := range []string{"n1", "n2", "n3"} {
		tl.check(t, n, nil)
	}
	if tl.state.Index() != before {
		t.Errorf("reports of no refusal committed: index %d -> %d", before, tl.state.Index())
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		if !tl.checkedBy(n, created) {
			t.Errorf("the leader does not know %s checked web", n)
		}
	}
	tl.check(t, "n2", map[string]string{"web": "vm: boot.kernel: no such file"})
	if tl.state.Index() == before || len(tl.state.Node("n2").GetCannotRun()) != 1 {
		t.Errorf("a new refusal was not committed: index %d, n2's record %v", tl.state.Index(), tl.state.Node("n2").GetCannotRun())
	}
}
