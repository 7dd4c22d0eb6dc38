package leader

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/waitfor"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

const (
	starting = havenv1.GroupState_GROUP_STATE_STARTING
	stopping = havenv1.GroupState_GROUP_STATE_STOPPING
)

// A failed node's groups restart elsewhere in one commit, however many it
// held: groups meant to run go to another node at a new epoch, a
// no-auto-start group is stopped for the operator, a group that was
// stopping is offline.
func TestFailoverIsOneCommit(t *testing.T) {
	tl := newTestLeader(t, nil)
	log := tl.raft.Log
	var want []string
	for _, name := range []string{"web", "db", "cache", "queue"} {
		log.StartOn(name, "n2")
		want = append(want, name)
	}
	manual := fsmtest.VMGroup("manual")
	manual.Priority = havenv1.Priority_PRIORITY_NO_AUTO_START
	log.Create(manual)
	log.Assign("manual", "n2")
	log.StartOn("old", "n2")
	log.Stop("old")
	before := map[string]uint64{}
	for _, g := range tl.state.Groups() {
		before[g.GetSpec().GetName()] = g.GetEpoch()
	}
	tl.raft.reset()
	m := metrics.New()
	tl.cfg.Metrics = m
	// n2 has not renewed since the office began; n1 and n3 have.
	office := time.Now()
	tl.leases.Begin(office, 2)
	tl.leases.Ready()
	now := office.Add(testLease.FailoverAfter + testLease.Lease + time.Second)
	tl.failover(tl.term, now)

	if len(tl.raft.commits) != 1 || tl.raft.commits[0] != "*havenv1.Command_AssignGroups" {
		t.Fatalf("failover committed %v, want one AssignGroups", tl.raft.commits)
	}
	// The batch names the fenced node, silent since the office began,
	// fenced a lease and its margin later, and the groups it loses.
	fences := tl.raft.last.GetAssignGroups().GetFences()
	if len(fences) != 1 || fences[0].GetNode() != "n2" || len(fences[0].GetGroups()) != len(want)+2 ||
		!fences[0].GetLastGrant().AsTime().Equal(office) || fences[0].GetFencedAt().AsTime().Before(office.Add(testLease.Lease+testLease.Margin)) {
		t.Errorf("fences %v, want n2 silent since %s with its %d groups", fences, office, len(want)+2)
	}
	// Each group's failover is timed from the silence's start; a test
	// leader commits at once, so the time is the clock's since office.
	mfs, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	durations := map[string]uint64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "haven_failover_duration_seconds":
			for _, s := range mf.GetMetric() {
				durations[s.GetLabel()[0].GetValue()] = s.GetHistogram().GetSampleCount()
				if sum := s.GetHistogram().GetSampleSum(); sum <= 0 || sum > float64(s.GetHistogram().GetSampleCount())*time.Since(office).Seconds() {
					t.Errorf("failover durations sum to %vs over %d, since office %s", sum, s.GetHistogram().GetSampleCount(), time.Since(office))
				}
			}
		case "haven_fences_total":
			if v := mf.GetMetric()[0].GetCounter().GetValue(); v != 1 {
				t.Errorf("haven_fences_total = %v, want 1", v)
			}
		}
	}
	if durations["restarted"] != uint64(len(want)) || durations["stopped"] != 2 {
		t.Errorf("failover durations counted %v, want %d restarted and 2 stopped", durations, len(want))
	}
	if len(tl.raft.unlocked) > 0 {
		t.Errorf("failover committed %v without placeMu", tl.raft.unlocked)
	}
	for _, name := range want {
		g := tl.state.Group(name)
		if g.GetOwner() == "n2" || g.GetOwner() == "" || g.GetState() != starting || g.GetEpoch() <= before[name] {
			t.Errorf("%s after failover: owner %q, %s, epoch %d (was %d)", name, g.GetOwner(), g.GetState(), g.GetEpoch(), before[name])
		}
	}
	if g := tl.state.Group("manual"); g.GetOwner() != "" || g.GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE || g.GetDesired() != havenv1.DesiredState_DESIRED_STATE_STOPPED {
		t.Errorf("no-auto-start group after failover: %v", g)
	}
	if g := tl.state.Group("old"); g.GetOwner() != "" || g.GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE {
		t.Errorf("stopping group after failover: %v", g)
	}
	// The moves were recorded for the balancer's hold-off, this term.
	if h := tl.term.moves.snapshot(); len(h) != len(want) || h["web"].From != "n2" {
		t.Errorf("move history %v, want the %d restarted groups from n2", h, len(want))
	}
	// Nothing is pending any more: a grant lists them on their new owners.
	tl.raft.reset()
	tl.failover(tl.term, now.Add(time.Second))
	if len(tl.raft.commits) != 0 {
		t.Errorf("a second failover pass committed %v", tl.raft.commits)
	}
}

// An operator's stop committed between the failover's decision and its
// commit wins: the assignment decided on the older desired state is
// refused, the others of the batch are applied.
func TestFailoverLosesToOperatorStop(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.StartOn("web", "n2")
	tl.raft.StartOn("db", "n2")
	web, db := tl.state.Group("web"), tl.state.Group("db")
	cmds := []*havenv1.AssignGroupCommand{failoverCommand(web, map[string]string{"web": "n3"}, nil), failoverCommand(db, map[string]string{"db": "n3"}, nil)}
	tl.raft.Stop("web")
	errs := tl.assignAll(cmds, nil)
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "stale view") || errs[1] != nil {
		t.Fatalf("outcomes %v, want web refused (stopped meanwhile) and db applied", errs)
	}
	if g := tl.state.Group("web"); g.GetOwner() != "n2" || g.GetState() != stopping {
		t.Errorf("web: %v", g)
	}
	if g := tl.state.Group("db"); g.GetOwner() != "n3" {
		t.Errorf("db: %v", g)
	}
}

// A group that failed over fails back to its preferred owner once that
// node is settled, as a planned restart in two commits: stopped with
// move_to, then, once offline, assigned to the target.
func TestFailbackIsAPlannedRestart(t *testing.T) {
	tl := newTestLeader(t, nil)
	spec := fsmtest.VMGroup("web")
	spec.PreferredOwners = []string{"n1"}
	spec.Failback = &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_IMMEDIATE}
	tl.raft.Create(spec)
	tl.raft.Assign("web", "n2")
	tl.raft.Report("web", havenv1.GroupState_GROUP_STATE_ONLINE)
	// n1 has been up for failback_after, and every node renews.
	tl.cfg.FailbackAfter = 0
	grantAll(t, tl)
	now := time.Now()
	tl.raft.reset()
	tl.failback(tl.term, now)
	g := tl.state.Group("web")
	if g.GetState() != stopping || g.GetMoveTo() != "n1" || g.GetOwner() != "n2" {
		t.Fatalf("after failback's first step: %v", g)
	}
	tl.raft.Report("web", havenv1.GroupState_GROUP_STATE_OFFLINE)
	tl.failback(tl.term, now)
	g = tl.state.Group("web")
	if g.GetOwner() != "n1" || g.GetState() != starting || g.GetMoveTo() != "" {
		t.Fatalf("after failback's second step: %v", g)
	}
	if len(tl.raft.unlocked) > 0 {
		t.Errorf("failback committed %v without placeMu", tl.raft.unlocked)
	}
}

// grantAll has every node renew with the leader now.
func grantAll(t *testing.T, tl *testLeader) {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { tl.leases.Serve(stop); close(done) }()
	defer func() { close(stop); <-done }()
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := tl.leases.Renew(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
}

// Draining a node moves its online groups off it by planned restarts,
// decided and committed under placeMu; a group no node can take stays,
// and the attempt is not repeated until the cluster changes.
func TestDrainMovesGroupsOff(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.StartOn("web", "n3")
	tl.raft.StartOn("db", "n3")
	pinned := fsmtest.VMGroup("pinned")
	pinned.PossibleOwners = []string{"n3"}
	tl.raft.Create(pinned)
	tl.raft.Assign("pinned", "n3")
	tl.raft.Report("pinned", havenv1.GroupState_GROUP_STATE_ONLINE)
	tl.raft.Run(&havenv1.Command{Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: "n3", Draining: true}}})
	tl.raft.reset()
	tl.drain(tl.term, time.Now())
	for _, name := range []string{"web", "db"} {
		if g := tl.state.Group(name); g.GetState() != stopping || g.GetMoveTo() == "" || g.GetMoveTo() == "n3" {
			t.Errorf("%s after drain: %v", name, g)
		}
	}
	if g := tl.state.Group("pinned"); g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || g.GetMoveTo() != "" {
		t.Errorf("pinned group after drain: %v", g)
	}
	if len(tl.raft.unlocked) > 0 {
		t.Errorf("drain committed %v without placeMu", tl.raft.unlocked)
	}
	tl.raft.reset()
	tl.drain(tl.term, time.Now())
	if len(tl.raft.commits) != 0 {
		t.Errorf("a drain pass on an unchanged cluster committed %v", tl.raft.commits)
	}
}

// A report of a failed start moves the group to a node it has not failed
// on, and records the failure; when it has failed everywhere it can run,
// it is marked failed with the reason, and a waiting group is not placed
// back where it failed.
func TestFailedStartMovesAwayFromFailedNodes(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.StartOn("web", "n1")
	fail := func(node string) {
		t.Helper()
		g := tl.state.Group("web")
		if err := tl.Report(&havenv1.ReportGroupRequest{Node: node, Name: "web", Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(),
			State: havenv1.GroupState_GROUP_STATE_FAILED, Reason: "vm vm could not start on " + node + ": boom"}); err != nil {
			t.Fatal(err)
		}
	}
	fail("n1")
	g := tl.state.Group("web")
	if g.GetOwner() == "n1" || g.GetOwner() == "" || len(g.GetFailures()) != 1 {
		t.Fatalf("after failing on n1: %v", g)
	}
	fail(g.GetOwner())
	g = tl.state.Group("web")
	if g.GetOwner() != "n3" && g.GetOwner() != "n2" || len(g.GetFailures()) != 2 {
		t.Fatalf("after failing on two nodes: %v", g)
	}
	fail(g.GetOwner())
	g = tl.state.Group("web")
	if g.GetState() != havenv1.GroupState_GROUP_STATE_FAILED || g.GetOwner() != "" || !strings.Contains(g.GetStateReason(), "boom") ||
		!strings.Contains(g.GetStateReason(), "failed there lately") {
		t.Fatalf("after failing everywhere: %v", g)
	}
	tl.placeWaiting(tl.term)
	if g := tl.state.Group("web"); g.GetOwner() != "" {
		t.Fatalf("a waiting group was placed back where it failed: %v", g)
	}
}

// A kept reserve and the wait and drain memos are reused while stateKey
// is unchanged: a change of node labels or of a group's node selector
// changes where groups may go, so it must change the key.
func TestStateKeySeesLabels(t *testing.T) {
	nodes := []*havenv1.Node{fsmtest.Node("n1", "a", 4000, 8<<30, nil), fsmtest.Node("n2", "a", 4000, 8<<30, nil)}
	alive := map[string]bool{"n1": true, "n2": true}
	group := &havenv1.Group{Spec: fsmtest.VMGroup("web")}
	now := time.Now()
	key := func() uint64 {
		return stateKey(buildState(nodes, []*havenv1.Group{group}, alive, 4, fixedRate(0), now), placement.Spec{K: 1})
	}
	base := key()
	nodes[1].Labels = map[string]string{"gpu": "a100"}
	withLabel := key()
	if withLabel == base {
		t.Error("a node label does not change the state key")
	}
	group.Spec.NodeSelector = map[string]string{"gpu": "a100"}
	if key() == withLabel {
		t.Error("a group's node selector does not change the state key")
	}
	group.Failures = []*havenv1.GroupFailure{{Node: "n2", Time: timestamppb.New(now)}}
	withSelector := key()
	group.Failures = nil
	if withSelector == key() {
		t.Error("a recent failure (a node to avoid) does not change the state key")
	}
}

// Rank rates a group with every constraint it was asked about, node
// selector included.
func TestRankSeesNodeSelector(t *testing.T) {
	tl := newTestLeader(t, map[string]map[string]string{"n3": {"gpu": "a100"}})
	ranked, k, err := tl.Rank(&havenv1.GroupSpec{Name: "(new group)", CpuMillis: 1000, MemoryBytes: 1 << 30, NodeSelector: map[string]string{"gpu": "a100"}})
	if err != nil || k.On() {
		t.Fatal(k, err)
	}
	for _, r := range ranked {
		if r.Feasible != (r.Node == "n3") {
			t.Errorf("%s feasible=%v for a group selecting gpu=a100 (only n3 has it): %v", r.Node, r.Feasible, r.Why)
		}
	}
}

// Per-term state starts empty every term: a node that leads again does
// not hold off the balancer with moves of an earlier term, nor skip a
// drain or a placement on a memo of one.
func TestTermStateStartsEmpty(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.mu.Lock()
	tl.cur = nil
	tl.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tl.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitTerm := func(not *term) *term {
		t.Helper()
		var cur *term
		waitfor.Cond(t, 5*time.Second, "a new term", func() bool {
			cur = tl.current()
			return cur != nil && cur != not
		})
		return cur
	}
	tl.raft.leaderCh <- true
	first := waitTerm(nil)
	first.moves.record("web", "n2", "n3", time.Now())
	first.drainMemo["n3"] = 42
	if _, err := tl.Balance(false, true); err != nil {
		t.Fatalf("balance in office: %v", err)
	}
	tl.raft.leaderCh <- false
	waitfor.Cond(t, 5*time.Second, "the term to end", func() bool { return tl.current() == nil })
	if _, err := tl.Balance(false, true); err != ErrNotLeader {
		t.Fatalf("balance out of office: %v", err)
	}
	tl.raft.leaderCh <- true
	second := waitTerm(first)
	if h := second.moves.snapshot(); len(h) != 0 {
		t.Errorf("the new term holds off moves of the last one: %v", h)
	}
	if len(second.drainMemo) != 0 || second.waitMemo.tried {
		t.Errorf("the new term starts with memos of the last one: %v %+v", second.drainMemo, second.waitMemo)
	}
}

// countingState counts the leader's reads of every group.
type countingState struct {
	State
	groups, groupsFor atomic.Int64
}

func (c *countingState) Groups() []*havenv1.Group { c.groups.Add(1); return c.State.Groups() }
func (c *countingState) GroupsFor(node string) []*havenv1.Group {
	c.groupsFor.Add(1)
	return c.State.GroupsFor(node)
}

// The failover look, ten times a second, reads the groups of the nodes
// silent past their failover time only: while every node renews it
// reads none, and a silent node's groups still fail over.
func TestFailoverLookReadsSilentNodesOnly(t *testing.T) {
	tl := newTestLeader(t, nil)
	for _, name := range []string{"web", "db"} {
		tl.raft.Log.StartOn(name, "n2")
	}
	tl.raft.Log.StartOn("cache", "n3")
	cs := &countingState{State: tl.state}
	tl.state = cs
	// The office began long enough ago for a node silent since to be
	// due now.
	office := time.Now().Add(-(testLease.FailoverAfter + testLease.Lease + time.Second))
	tl.leases.Begin(office, 2)
	tl.leases.Ready()
	tl.raft.reset()
	tl.failover(tl.term, office.Add(time.Second))
	if cs.groups.Load() != 0 || cs.groupsFor.Load() != 0 || len(tl.raft.commits) != 0 {
		t.Fatalf("with no node silent: %d reads of every group, %d of a node's, commits %v", cs.groups.Load(), cs.groupsFor.Load(), tl.raft.commits)
	}
	// n3 renews now; n2 stays silent past its failover time.
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { tl.leases.Serve(stop); close(done) }()
	_, err := tl.leases.Renew(context.Background(), "n3")
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	tl.failover(tl.term, time.Now())
	// The restart plan reads every group once (placement); the look
	// itself read n2's.
	if cs.groups.Load() != 1 || cs.groupsFor.Load() != 1 {
		t.Errorf("with n2 silent: %d reads of every group, %d of a node's, want 1 (the restart plan's) and 1", cs.groups.Load(), cs.groupsFor.Load())
	}
	// n2's groups moved off it; n3's stayed.
	for name, from := range map[string]string{"web": "n2", "db": "n2", "cache": "n3"} {
		owner := tl.state.Group(name).GetOwner()
		if moved, want := owner != from, from == "n2"; moved != want {
			t.Errorf("%s on %s (was on %s): moved %v, want %v", name, owner, from, moved, want)
		}
	}
}

// The passes of the leader's loop that read every group run when the FSM
// has changed, and once a second otherwise, not on each of its ten ticks a
// second; a change still gets its pass at the next tick.
func TestSteadyLeaderReadsEveryGroupOnceASecond(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.Log.StartOn("web", "n2")
	cs := &countingState{State: tl.state}
	tl.state = cs
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { tl.groupsLoop(context.Background(), tl.term, stop); close(done) }()
	defer func() { close(stop); <-done }()

	// Within the failover time (3.5 s from the office's start): nothing
	// commits, so the loop makes its first pass and then one a second.
	time.Sleep(1500 * time.Millisecond) // deliberate: 15 ticks of a steady loop
	steady := cs.groups.Load()
	perPass := int64(3) // finishMoves, failback's candidates, placeWaiting
	if steady == 0 || steady > 2*perPass {
		t.Fatalf("%d reads of every group in 1.5 s of a steady loop, want 1 to %d (one or two passes)", steady, 2*perPass)
	}
	// A committed change gets its pass at the next tick, not a second later.
	tl.raft.Log.StartOn("db", "n3")
	waitfor.Cond(t, 500*time.Millisecond, "a pass after the FSM changed", func() bool { return cs.groups.Load() > steady })
}

// dutyReads records which of the leader's duties read every group, in
// order, with whether web had left n2 by then; the first read after arm
// lasts until slowUntil, a slow duty.
type dutyReads struct {
	State
	mu        sync.Mutex
	armed     bool
	slowUntil time.Time
	reads     []string
}

func (d *dutyReads) arm(until time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.armed, d.slowUntil = true, until
}

func (d *dutyReads) Groups() []*havenv1.Group {
	duty := callingDuty()
	d.mu.Lock()
	slow := d.armed
	d.armed = false
	d.reads = append(d.reads, fmt.Sprintf("%s (web on %s)", duty, d.State.Group("web").GetOwner()))
	until := d.slowUntil
	d.mu.Unlock()
	if slow {
		time.Sleep(time.Until(until)) // the slow duty itself
	}
	return d.State.Groups()
}

func (d *dutyReads) seen() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.reads)
}

// callingDuty names the duty of the leader's loop on the stack.
func callingDuty() string {
	pcs := make([]uintptr, 32)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	for {
		f, more := frames.Next()
		for _, duty := range []string{"failover", "resolveMoves", "failback", "drain", "placeWaiting"} {
			if strings.HasSuffix(f.Function, ".(*Leader)."+duty) {
				return duty
			}
		}
		if !more {
			return "?"
		}
	}
}

// A failover that falls due while a duty of the leader's pass is slow (a
// pass over 10,000 groups takes up to a second) is decided as soon as that
// duty ends, before the next duty, not after the whole pass.
func TestFailoverDueDuringASlowDutyGoesBeforeTheNext(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.Log.StartOn("web", "n2")
	// n2 has been silent since the office began; it falls due in 400 ms.
	office := time.Now().Add(-(testLease.FailoverAfter - 400*time.Millisecond))
	tl.leases.Begin(office, 2)
	tl.leases.Ready()
	due := office.Add(testLease.FailoverAfter)
	reads := &dutyReads{State: tl.state}
	tl.state = reads
	// The first pass's first read of every group lasts until 200 ms
	// past the failover time.
	reads.arm(due.Add(200 * time.Millisecond))
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { tl.groupsLoop(context.Background(), tl.term, stop); close(done) }()
	defer func() { close(stop); <-done }()
	waitfor.Cond(t, 10*time.Second, "web failed over and a duty after", func() bool {
		seen := reads.seen()
		return len(seen) > 0 && !strings.HasSuffix(seen[len(seen)-1], "(web on n2)")
	})
	// After the slow read (and the slow duty's own other reads), the
	// next read is the failover's (its restart plan), then the other
	// duties go on with web moved.
	seen := reads.seen()
	slowDuty, _, _ := strings.Cut(seen[0], " ")
	for i, r := range seen[1:] {
		if strings.HasPrefix(r, "failover ") || strings.HasPrefix(r, slowDuty+" ") {
			continue
		}
		if strings.HasSuffix(r, "(web on n2)") {
			t.Fatalf("read %d, after the slow one, was %q: a duty ran before the failover due during the slow one (reads: %q)", i+2, r, seen)
		}
		break
	}
}
