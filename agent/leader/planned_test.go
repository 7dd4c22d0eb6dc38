package leader

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/waitfor"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fakeMovers is the two ends of every move: a source's MoveOut blocks
// until the test answers it, with an error or "ready".
type fakeMovers struct {
	mu      sync.Mutex
	pending map[string]chan error // by operation
	// paused, if set, is reported as the source's pause before its ready.
	paused bool
}

func (f *fakeMovers) MoveOut(ctx context.Context, _ string, req *havenv1.MoveOutRequest, progress func(*havenv1.MoveOutResponse)) error {
	ch := make(chan error, 1)
	f.mu.Lock()
	f.pending[req.GetOperation()] = ch
	f.mu.Unlock()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-ch:
		if err == nil && f.paused {
			progress(&havenv1.MoveOutResponse{Phase: havenv1.OperationPhase_OPERATION_PHASE_SWITCHOVER, Progress: &havenv1.MoveProgress{Round: 3}})
		}
		if err == nil {
			progress(&havenv1.MoveOutResponse{Ready: true, Checksum: 1})
		}
		return err
	}
}

func (f *fakeMovers) RestoreMove(context.Context, string, *havenv1.RestoreMoveRequest) error {
	return nil
}

func (f *fakeMovers) ConfirmMoveIn(context.Context, string, *havenv1.ConfirmMoveInRequest) error {
	return nil
}

// answer ends every pending MoveOut with err.
func (f *fakeMovers) answer(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, ch := range f.pending {
		ch <- err
		delete(f.pending, id)
	}
}

// migratingLeader is a test leader whose nodes can live- and
// quick-migrate, driving its moves through movers.
func migratingLeader(t *testing.T) (*testLeader, *fakeMovers) {
	tl := newTestLeader(t, nil)
	for _, n := range tl.state.Nodes() {
		n = proto.Clone(n).(*havenv1.Node)
		n.LiveMigration, n.QuickMigration = true, true
		tl.raft.AddNode(n)
	}
	fm := &fakeMovers{pending: map[string]chan error{}}
	tl.cfg.Movers = fm
	mv := newMoves(context.Background())
	t.Cleanup(mv.stop)
	tl.term.driving = mv
	return tl, fm
}

// inFlight is the moves in flight, by group.
func inFlight(tl *testLeader) map[string]*havenv1.Operation {
	out := map[string]*havenv1.Operation{}
	for _, g := range tl.state.Groups() {
		if op := tl.state.Operation(g.GetOperation()); fsm.InFlight(op) {
			out[g.GetSpec().GetName()] = op
		}
	}
	return out
}

// A drain moves the node's groups live, at most MaxParallelMoves off the
// node at once; a group whose live move rolls back is tried quick, and
// after that restarted on its target.
func TestDrainMovesLiveThenQuickThenRestarts(t *testing.T) {
	tl, fm := migratingLeader(t)
	names := []string{"a", "b", "c", "d", "e"}
	for _, n := range names {
		tl.raft.StartOn(n, "n3")
	}
	tl.raft.Run(&havenv1.Command{Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: "n3", Draining: true}}})
	for try, want := range []havenv1.MoveKind{havenv1.MoveKind_MOVE_KIND_LIVE, havenv1.MoveKind_MOVE_KIND_QUICK} {
		tl.drain(tl.term, time.Now())
		moving := inFlight(tl)
		if len(moving) != DefaultMaxParallelMoves {
			t.Fatalf("try %d: %d moves in flight off n3, want %d", try, len(moving), DefaultMaxParallelMoves)
		}
		for g, op := range moving {
			if op.GetKind() != want || op.GetCause() != causeDrain || op.GetSource() != "n3" {
				t.Errorf("try %d: move of %s: %v", try, g, op)
			}
		}
		// A second pass while the links are busy starts nothing.
		tl.drain(tl.term, time.Now())
		if n := len(inFlight(tl)); n != DefaultMaxParallelMoves {
			t.Fatalf("try %d: a pass with busy links left %d moves in flight", try, n)
		}
		waitfor.Cond(t, 5*time.Second, "the sources' streams", func() bool {
			fm.mu.Lock()
			defer fm.mu.Unlock()
			return len(fm.pending) == DefaultMaxParallelMoves
		})
		fm.answer(errors.New("link broke"))
		waitfor.Cond(t, 5*time.Second, "the moves rolled back", func() bool { return len(inFlight(tl)) == 0 })
		// Only the groups that already tried move next; the others wait
		// for the links, so drain again until the same two come round:
		// each pass picks by priority and name, and a and b come first.
	}
	tl.drain(tl.term, time.Now())
	for _, n := range []string{"a", "b"} {
		if g := tl.state.Group(n); g.GetState() != stopping || g.GetMoveTo() == "" {
			t.Errorf("%s after two rolled-back moves: %v, want a planned restart", n, g)
		}
	}
	for _, op := range inFlight(tl) {
		if op.GetGroup() == "a" || op.GetGroup() == "b" {
			t.Errorf("a group restarting is also moving: %v", op)
		}
	}
}

// A drain's move that commits leaves the group on its target at the next
// epoch, and the drain goes on with the next groups.
func TestDrainMoveCommits(t *testing.T) {
	tl, fm := migratingLeader(t)
	tl.raft.StartOn("a", "n3")
	before := tl.state.Group("a")
	op := drainAndAnswer(t, tl, fm)
	waitfor.Cond(t, 5*time.Second, "the commit", func() bool { return fsm.Committed(tl.state.Operation(op.GetId())) })
	g := tl.state.Group("a")
	if g.GetOwner() != op.GetTarget() || g.GetEpoch() != before.GetEpoch()+1 {
		t.Fatalf("after the commit: %v", g)
	}
}

// drainAndAnswer drains n3, which runs group a alone, and has the source
// of a's move answer ready; it returns the move.
func drainAndAnswer(t *testing.T, tl *testLeader, fm *fakeMovers) *havenv1.Operation {
	t.Helper()
	tl.raft.Run(&havenv1.Command{Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: "n3", Draining: true}}})
	tl.drain(tl.term, time.Now())
	op := inFlight(tl)["a"]
	if op == nil {
		t.Fatal("no move of a")
	}
	waitfor.Cond(t, 5*time.Second, "the source's stream", func() bool {
		fm.mu.Lock()
		defer fm.mu.Unlock()
		return len(fm.pending) == 1
	})
	fm.answer(nil)
	return op
}

// The source's ready is acted on at once, while the report of its pause
// before it still waits to commit: the guest is paused, and a commit of
// progress is a Raft round it need not wait for.
func TestReadyDoesNotWaitForProgress(t *testing.T) {
	tl, fm := migratingLeader(t)
	fm.paused = true
	release := make(chan struct{})
	tl.raft.mu.Lock()
	tl.raft.hold = func(c *havenv1.Command) {
		if p := c.GetMoveProgress(); p != nil && p.GetPhase() == havenv1.OperationPhase_OPERATION_PHASE_SWITCHOVER {
			<-release
		}
	}
	tl.raft.mu.Unlock()
	tl.raft.StartOn("a", "n3")
	op := drainAndAnswer(t, tl, fm)
	waitfor.Cond(t, 5*time.Second, "the commit while the pause's report waits", func() bool { return fsm.Committed(tl.state.Operation(op.GetId())) })
	// The report, when it commits, is refused as progress of a move that
	// is over (fsm's TestMoveCommitsThenCompletes).
	close(release)
}

// The room of a move in flight is taken on its target until the commit.
func TestHoldIncomingTakesTheTargetsRoom(t *testing.T) {
	tl, _ := migratingLeader(t)
	tl.raft.StartOn("a", "n1")
	st := tl.placementState()
	free := func(st placement.State, node string) int64 {
		for _, n := range st.Nodes {
			if n.Name == node {
				return n.MemoryBytes
			}
		}
		return -1
	}
	was := free(st, "n2")
	tl.placeMu.Lock()
	_, err := tl.beginMove(tl.term.driving, MoveRequest{Group: "a", Target: "n2", Cause: "operator", RequestID: "r1"})
	tl.placeMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if now := free(tl.placementState(), "n2"); now != was-tl.state.Group("a").GetSpec().GetMemoryBytes() {
		t.Fatalf("n2's memory with a move in flight: %d, was %d", now, was)
	}
}

// The balancer holds off a group that a completed move put where it is,
// also one a previous leader moved (known only from the FSM).
func TestMovedRecentlyFromOperations(t *testing.T) {
	now := time.Now()
	ops := []*havenv1.Operation{
		{Group: "a", Source: "n1", Target: "n2", Outcome: havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED, FinishTime: timestamppb.New(now.Add(-time.Minute))},
		{Group: "b", Source: "n1", Target: "n2", Outcome: havenv1.OperationOutcome_OPERATION_OUTCOME_ROLLED_BACK, FinishTime: timestamppb.New(now.Add(-time.Minute))},
		{Group: "c", Source: "n1", Target: "n3", Outcome: havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED, FinishTime: timestamppb.New(now.Add(-2 * time.Hour))},
	}
	h := movedRecently(placement.History{}, ops, time.Hour, now)
	if _, ok := h["a"]; !ok || len(h) != 1 {
		t.Fatalf("history %v: want only a (completed within the hold-off)", h)
	}
}

// In automatic mode the balancer moves live, at most MaxParallelMoves at
// once, and starts nothing while a move is in flight.
func TestBalancerExecutesLiveMoves(t *testing.T) {
	tl, _ := migratingLeader(t)
	tl.cfg.Balancer = placement.ModeAutomatic
	for _, n := range []string{"a", "b", "c", "d", "e", "f"} {
		spec := proto.Clone(big(n)).(*havenv1.GroupSpec)
		tl.raft.Create(spec)
		tl.raft.Assign(n, "n1")
		tl.raft.Report(n, havenv1.GroupState_GROUP_STATE_ONLINE)
	}
	p, _ := tl.proposal(tl.term, placement.ModeAutomatic, false, false, time.Now())
	if !p.Execute || len(p.Moves) == 0 {
		t.Fatalf("no automatic proposal on a lopsided cluster: %+v", p)
	}
	if n := tl.execute(tl.term, p); n == 0 || n > DefaultMaxParallelMoves {
		t.Fatalf("started %d moves, want 1..%d", n, DefaultMaxParallelMoves)
	}
	for g, op := range inFlight(tl) {
		if op.GetKind() != havenv1.MoveKind_MOVE_KIND_LIVE || op.GetCause() != causeBalancer {
			t.Errorf("balancer move of %s: %v", g, op)
		}
	}
	if n := tl.execute(tl.term, p); n != 0 {
		t.Fatalf("started %d moves while others were in flight", n)
	}
}

// big is a group that takes a fair share of a test node.
func big(name string) *havenv1.GroupSpec {
	spec := &havenv1.GroupSpec{Name: name, Resources: []*havenv1.Resource{
		{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{Vcpus: 2, MemoryBytes: 2 << 30}},
	}}
	fsm.NormalizeGroupSpec(spec)
	return spec
}

// A drain keeps the reserve where it can, and where no node keeps it
// still empties the node onto one where the group fits: the operator asked
// for maintenance.
func TestDrainBreaksTheReserveOnlyWhenItMust(t *testing.T) {
	tl, _ := migratingLeader(t)
	tl.cfg.Reserve = 1
	tl.raft.StartOn("a", "n3")
	for _, n := range []string{"n2", "n3"} {
		tl.raft.Run(&havenv1.Command{Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: n, Draining: true}}})
	}
	tl.drain(tl.term, time.Now())
	op := inFlight(tl)["a"]
	if op == nil || op.GetTarget() != "n1" || op.GetKind() != havenv1.MoveKind_MOVE_KIND_LIVE {
		t.Fatalf("drain with only n1 left: %v", op)
	}
}

// A failback the reserve forbids is refused, and refused again on later
// passes: a refusal is no try, so it never turns into a restart.
func TestRefusedFailbackNeverRestarts(t *testing.T) {
	tl, _ := migratingLeader(t)
	tl.cfg.Reserve = 1
	tl.cfg.FailbackAfter = 0
	// n1 is nearly full: the group fits there, but then no node could
	// take n1's groups if it failed.
	small := fsmtest.Node("n1", "a", 8000, 4<<30, nil)
	small.LiveMigration, small.QuickMigration = true, true
	tl.raft.AddNode(small)
	for i := range 7 {
		for _, n := range []string{"n2", "n3"} {
			name := fmt.Sprintf("%s-%d", n, i)
			tl.raft.Create(big(name))
			tl.raft.Assign(name, n)
			tl.raft.Report(name, havenv1.GroupState_GROUP_STATE_ONLINE)
		}
	}
	spec := big("fb")
	spec.PreferredOwners = []string{"n1"}
	spec.Failback = &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_IMMEDIATE}
	tl.raft.Create(spec)
	tl.raft.Assign("fb", "n2")
	tl.raft.Report("fb", havenv1.GroupState_GROUP_STATE_ONLINE)
	grantAll(t, tl)
	for range 5 {
		tl.failback(tl.term, time.Now())
	}
	if g := tl.state.Group("fb"); g.GetOwner() != "n2" || g.GetMoveTo() != "" || g.GetOperation() != "" {
		t.Fatalf("after refused failbacks: %v", g)
	}
}
