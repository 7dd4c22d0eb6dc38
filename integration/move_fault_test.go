package integration

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/driver/sim"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Fault tests of moves (DESIGN.md, invariant 3: all or nothing). A group
// runs on a follower and moves live to the other follower, so that the
// source, the target and the leader are three processes. A hold
// (NodeService.HoldMoves, fault injection) stops the move at a phase; the
// test SIGKILLs one of the three there, releases the hold if its holder
// lives, and checks that the move ends as the phase says it must: rolled
// back before the commit, completed on the target after it; that one
// runner remains, and no other node keeps a copy; that the guest counter
// never goes back in the whole execution log; and, on a completed move,
// that the target's memory at activation, read by the test, is what the
// source froze.

const (
	holdSetup     = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_SETUP
	holdPrecopy   = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_PRECOPY
	holdFrozen    = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_FROZEN
	holdCommitted = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_COMMITTED
	holdResumed   = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_RESUMED

	outcomeCompleted  = havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED
	outcomeRolledBack = havenv1.OperationOutcome_OPERATION_OUTCOME_ROLLED_BACK
	outcomeCancelled  = havenv1.OperationOutcome_OPERATION_OUTCOME_CANCELLED
)

// A move's three processes.
type role string

const (
	roleSource role = "source"
	roleTarget role = "target"
	roleLeader role = "leader"
)

// faultCase is a fault at a phase: its victim dies while the move is held
// there.
type faultCase struct {
	phase  havenv1.MoveHoldPhase
	victim role
	// quick: a quick move (save, commit, restore); else live.
	quick bool
}

func (fc faultCase) String() string {
	if fc.quick {
		return fmt.Sprintf("quick/%s/%s", phaseWord(fc.phase), fc.victim)
	}
	return fmt.Sprintf("%s/%s", phaseWord(fc.phase), fc.victim)
}

func phaseWord(p havenv1.MoveHoldPhase) string {
	switch p {
	case holdSetup:
		return "setup"
	case holdPrecopy:
		return "precopy"
	case holdFrozen:
		return "frozen"
	case holdCommitted:
		return "committed"
	case holdResumed:
		return "resumed"
	}
	return p.String()
}

// committed says whether the move has committed at the phase.
func (fc faultCase) committed() bool { return fc.phase == holdCommitted || fc.phase == holdResumed }

// holder is the end of the move that reaches the phase.
func (fc faultCase) holder() role {
	if fc.committed() {
		return roleTarget
	}
	return roleSource
}

// The end each case must come to.
type expect struct {
	outcome havenv1.OperationOutcome
	// owner is the role that runs the group in the end; empty: a
	// failover, to a node that is not failedFrom.
	owner      role
	failedFrom role
	// epochs is how far the group's epoch moves on.
	epochs uint64
}

func (fc faultCase) expect() expect {
	switch {
	case !fc.committed() && fc.victim == roleSource:
		// Rolled back to a dead source, which the group fails over from.
		return expect{outcome: outcomeRolledBack, failedFrom: roleSource, epochs: 1}
	case !fc.committed():
		return expect{outcome: outcomeRolledBack, owner: roleSource}
	case fc.victim == roleTarget:
		// Committed to a target that died: the group fails over from it.
		return expect{outcome: outcomeCompleted, failedFrom: roleTarget, epochs: 2}
	default:
		return expect{outcome: outcomeCompleted, owner: roleTarget, epochs: 1}
	}
}

func faultCases() []faultCase {
	var out []faultCase
	for _, p := range []havenv1.MoveHoldPhase{holdSetup, holdPrecopy, holdFrozen, holdCommitted, holdResumed} {
		for _, v := range []role{roleSource, roleTarget, roleLeader} {
			out = append(out, faultCase{phase: p, victim: v})
		}
	}
	// A quick move has no stream to the target and no rounds: its phases
	// are the save (frozen: saved, "ready" not sent), the commit and the
	// restored VM running.
	for _, p := range []havenv1.MoveHoldPhase{holdFrozen, holdCommitted, holdResumed} {
		for _, v := range []role{roleSource, roleTarget, roleLeader} {
			out = append(out, faultCase{phase: p, victim: v, quick: true})
		}
	}
	return out
}

// TestMoveFault: every phase of a live move, and of a quick one, with each
// of its three processes SIGKILLed there.
func TestMoveFault(t *testing.T) {
	for _, fc := range faultCases() {
		t.Run(fc.String(), func(t *testing.T) { testMoveFault(t, fc) })
	}
}

// moveCluster is a 3-node cluster with a group running on a follower.
type moveCluster struct {
	*cluster
	roles map[role]*node
	group string
	// before is the group before the move.
	before *havenv1.Group
}

// newMoveCluster starts three nodes and the group on a follower, the
// source; the other follower is the target.
func newMoveCluster(t *testing.T, opts ...option) *moveCluster {
	c := newCluster(t, opts...)
	c.startN(3)
	leader := c.leader(30 * time.Second)
	var followers []*node
	for _, n := range c.nodes {
		if n != leader {
			followers = append(followers, n)
		}
	}
	mc := &moveCluster{cluster: c, group: "mf", roles: map[role]*node{roleLeader: leader, roleSource: followers[0], roleTarget: followers[1]}}
	src := mc.roles[roleSource]
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup(mc.group)}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: mc.group, Node: src.name}); err != nil {
		t.Fatal(err)
	}
	mc.before = c.allOnline(leader, []string{mc.group}, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() == src.name })[mc.group]
	waitFor(t, 10*time.Second, "the guest ticking on the source", func() error {
		return c.execRunning(src.name, mc.group, mc.before.GetEpoch(), time.Time{})
	})
	return mc
}

func (n *node) nodeAPI() havenv1.NodeServiceClient { return havenv1.NewNodeServiceClient(n.conn) }

func (n *node) holdMoves(phase havenv1.MoveHoldPhase) {
	n.c.t.Helper()
	if _, err := n.nodeAPI().HoldMoves(ctx(n.c.t), &havenv1.HoldMovesRequest{Phase: phase}); err != nil {
		n.c.t.Fatalf("hold moves at %s on %s: %v", phaseWord(phase), n.name, err)
	}
}

func (n *node) releaseMoves(phase havenv1.MoveHoldPhase) {
	n.c.t.Helper()
	if _, err := n.nodeAPI().ReleaseMoves(ctx(n.c.t), &havenv1.ReleaseMovesRequest{Phase: phase}); err != nil {
		n.c.t.Fatalf("release moves at %s on %s: %v", phaseWord(phase), n.name, err)
	}
}

// waitHeld waits until move op is held at phase on n. A move that ends
// first never will be: that fails the test at once, with its reason.
func (n *node) waitHeld(phase havenv1.MoveHoldPhase, op string) {
	n.c.t.Helper()
	waitFor(n.c.t, 30*time.Second, fmt.Sprintf("%s held at %s on %s", op, phaseWord(phase), n.name), func() error {
		if o, err := n.api().GetOperation(ctx(n.c.t), &havenv1.GetOperationRequest{Id: op}); err == nil && o.GetOperation().GetPhase() == havenv1.OperationPhase_OPERATION_PHASE_FINISHED {
			n.c.t.Fatalf("move %s ended before it was held at %s on %s: %s", op, phaseWord(phase), n.name, n.describeOp(op))
		}
		resp, err := n.nodeAPI().GetMoveHolds(ctx(n.c.t), &havenv1.GetMoveHoldsRequest{})
		if err != nil {
			return err
		}
		for _, h := range resp.GetHolds() {
			if h.GetPhase() != phase {
				continue
			}
			for _, o := range h.GetOperations() {
				if o == op {
					return nil
				}
			}
			return fmt.Errorf("the hold has %v; the move: %s", h.GetOperations(), n.describeOp(op))
		}
		return fmt.Errorf("no hold at %s: %v", phaseWord(phase), resp.GetHolds())
	})
}

// describeOp says where move op stands as n sees it, for a failure.
func (n *node) describeOp(op string) string {
	resp, err := n.api().GetOperation(ctx(n.c.t), &havenv1.GetOperationRequest{Id: op})
	if err != nil {
		return err.Error()
	}
	o := resp.GetOperation()
	return fmt.Sprintf("%s %s (%s), round %d", o.GetPhase(), o.GetOutcome(), o.GetReason(), o.GetProgress().GetRound())
}

// inspect is n's driver's view of the group's VM; nil if n has none.
func (n *node) inspect(group string) (*havenv1.InspectVMResponse, error) {
	resp, err := n.nodeAPI().InspectVM(ctx(n.c.t), &havenv1.InspectVMRequest{Group: group, Vm: "vm"})
	if status.Code(err) == codes.NotFound {
		return nil, nil
	}
	return resp, err
}

func (mc *moveCluster) move(via *node, opts *havenv1.MoveGroupRequest) string {
	mc.t.Helper()
	opts.Name, opts.Target = mc.group, mc.roles[roleTarget].name
	if opts.Kind == havenv1.MoveKind_MOVE_KIND_UNSPECIFIED {
		opts.Kind = havenv1.MoveKind_MOVE_KIND_LIVE
	}
	resp, err := via.api().MoveGroup(ctx(mc.t), opts)
	if err != nil {
		mc.t.Fatalf("move: %v", err)
	}
	return resp.GetOperation().GetId()
}

func testMoveFault(t *testing.T, fc faultCase) {
	start := time.Now()
	mc := newMoveCluster(t)
	want := fc.expect()
	holder, victim, target := mc.roles[fc.holder()], mc.roles[fc.victim], mc.roles[roleTarget]
	t.Logf("source %s, target %s, leader %s; %s dies at %s", mc.roles[roleSource].name, target.name, mc.roles[roleLeader].name, victim.name, phaseWord(fc.phase))
	// A move that completes is read at activation: held at committed, where
	// the incoming VM is whole and still.
	readAtActivation := want.outcome == outcomeCompleted && want.owner == roleTarget
	if readAtActivation {
		target.holdMoves(holdCommitted)
	}
	holder.holdMoves(fc.phase)
	req := &havenv1.MoveGroupRequest{}
	if fc.quick {
		req.Kind = havenv1.MoveKind_MOVE_KIND_QUICK
	}
	op := mc.move(mc.roles[roleLeader], req)
	var atActivation *havenv1.InspectVMResponse
	if readAtActivation {
		target.waitHeld(holdCommitted, op)
		var err error
		atActivation, err = target.inspect(mc.group)
		if err != nil || atActivation.GetState() != "incoming" || atActivation.GetEpoch() != mc.before.GetEpoch()+1 || atActivation.Checksum == nil {
			t.Fatalf("the target's vm at activation: %v, %v; want it incoming at epoch %d, with its memory's checksum", atActivation, err, mc.before.GetEpoch()+1)
		}
		if fc.phase != holdCommitted {
			target.releaseMoves(holdCommitted)
		}
	}
	holder.waitHeld(fc.phase, op)

	victim.kill()
	t.Logf("%s killed at %s, %s after the cluster started", victim.name, phaseWord(fc.phase), time.Since(start).Round(time.Millisecond))
	// A source held when the leader dies stops waiting with the leader's
	// stream: the move ends with the hold still armed.
	cancels := fc.holder() == roleSource && fc.victim == roleLeader
	if holder != victim && !cancels {
		holder.releaseMoves(havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_UNSPECIFIED)
	}

	leader := mc.leader(30 * time.Second)
	got := mc.waitMove(leader, op, 30*time.Second)
	if cancels {
		waitFor(t, 10*time.Second, "the held source's hold ended by its stream", func() error {
			if !logContains(holder, "held move cancelled (fault injection)") {
				return errNotYet
			}
			return nil
		})
		holder.releaseMoves(havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_UNSPECIFIED)
	}
	if got.GetOutcome() != want.outcome {
		t.Errorf("move ended %s (%s), want %s", got.GetOutcome(), got.GetReason(), want.outcome)
	}
	owner := mc.settled(leader, want, victim)
	t.Logf("move %s (%s); the group runs on %s at epoch %d, %s after the cluster started", got.GetOutcome(), got.GetReason(), owner.GetOwner(), owner.GetEpoch(), time.Since(start).Round(time.Millisecond))
	if atActivation != nil {
		if got.GetChecksum() == 0 || atActivation.GetChecksum() != got.GetChecksum() {
			t.Errorf("the target's memory at activation hashes to %#x; the source's at the freeze to %#x", atActivation.GetChecksum(), got.GetChecksum())
		}
		gap := mc.guestGap(mc.group, mc.roles[roleSource].name, target.name, mc.before.GetEpoch(), owner.GetEpoch())
		t.Logf("guest gap %s (the hold at committed included)", gap.Round(time.Millisecond))
	}
	mc.counterGoesOn()
	mc.checkInvariants([]string{mc.group})
	t.Logf("case took %s", time.Since(start).Round(time.Millisecond))
}

// settled waits until the group runs where want says, on one node at one
// epoch, and no other node keeps a VM of it (a paused source, an incoming
// copy); it returns the group.
func (mc *moveCluster) settled(leader *node, want expect, victim *node) *havenv1.Group {
	mc.t.Helper()
	wantEpoch := mc.before.GetEpoch() + want.epochs
	g := mc.allOnline(leader, []string{mc.group}, 30*time.Second, func(g *havenv1.Group) bool {
		if want.owner != "" {
			return g.GetOwner() == mc.roles[want.owner].name && g.GetEpoch() == wantEpoch && g.GetOperation() == ""
		}
		return g.GetOwner() != mc.roles[want.failedFrom].name && g.GetOwner() != victim.name && g.GetEpoch() == wantEpoch && g.GetOperation() == ""
	})[mc.group]
	owner := mc.node(g.GetOwner())
	// One runner: the owner ticks at its epoch, and nothing else does
	// from some moment on; every other live node has let its copy go.
	since := time.Now()
	waitFor(mc.t, 10*time.Second, "the owner ticking, alone, and no copy elsewhere", func() error {
		n := 0
		for _, r := range mc.execRecords(mc.group) {
			if !r.Wall.After(since) {
				continue
			}
			if r.Node != owner.name || r.Epoch != g.GetEpoch() {
				return fmt.Errorf("%s ran at epoch %d (counter %d) after the group settled on %s at epoch %d", r.Node, r.Epoch, r.Counter, owner.name, g.GetEpoch())
			}
			n++
		}
		if n < 3 {
			return fmt.Errorf("%d ticks of %s at epoch %d since %s", n, owner.name, g.GetEpoch(), since.Format(time.StampMilli))
		}
		for _, n := range mc.nodes {
			if n == owner || !n.running() {
				continue
			}
			vm, err := n.inspect(mc.group)
			if err != nil {
				return err
			}
			if vm != nil && vm.GetState() != "stopped" && vm.GetState() != "crashed" {
				return fmt.Errorf("%s keeps a vm of the group: %s at epoch %d", n.name, vm.GetState(), vm.GetEpoch())
			}
		}
		return nil
	})
	return g
}

// counterGoesOn checks the guest counter across the whole execution log,
// in the order it was written: it never goes back. Within one run (node,
// epoch) the checker requires it to rise; across runs a restart elsewhere
// (a failover) boots from the disk's last record, so it may repeat the
// last tick of the run before when that tick reached no disk (its writer
// died between its log line and its disk write), and only then.
func (mc *moveCluster) counterGoesOn() {
	mc.t.Helper()
	_, disk, err := sim.ReadDisk(filepath.Join(mc.dir, "shared", mc.group, "disk0.img"))
	if err != nil {
		mc.t.Fatal(err)
	}
	type tick struct {
		node           string
		epoch, counter uint64
		wall           int64
	}
	key := func(r sim.Record) tick { return tick{r.Node, r.Epoch, r.Counter, r.Wall.UnixNano()} }
	onDisk := map[tick]bool{}
	for _, r := range disk {
		onDisk[key(r)] = true
	}
	recs := mc.execRecords(mc.group)
	for i := 1; i < len(recs); i++ {
		p, c := recs[i-1], recs[i]
		switch {
		case c.Counter > p.Counter:
		case c.Counter == p.Counter && (c.Node != p.Node || c.Epoch != p.Epoch) && !onDisk[key(p)]:
		default:
			mc.t.Errorf("the guest counter went from %d (%s at epoch %d, %s) to %d (%s at epoch %d, %s)",
				p.Counter, p.Node, p.Epoch, p.Wall.Format(time.StampMilli), c.Counter, c.Node, c.Epoch, c.Wall.Format(time.StampMilli))
		}
	}
}

// withSimTick sets the simulated guests' tick.
func withSimTick(d time.Duration) option { return func(c *agent.Config) { c.Sim.Tick = d } }

// TestMoveFaultCancelledInPrecopy: a move cancelled during its pre-copy
// (a bandwidth limit makes it last) rolls back: the group stays on the
// source at its epoch, the target lets its copy go, and the guest never
// stood still longer than the downtime target.
func TestMoveFaultCancelledInPrecopy(t *testing.T) {
	const tick = 10 * time.Millisecond
	downtime := 300 * time.Millisecond
	mc := newMoveCluster(t, withSimTick(tick))
	leader, src := mc.roles[roleLeader], mc.roles[roleSource]
	from := time.Now()
	op := mc.move(leader, &havenv1.MoveGroupRequest{BandwidthLimit: 256 << 10, DowntimeTarget: durationpb.New(downtime)})
	waitFor(t, 30*time.Second, "the move in pre-copy", func() error {
		resp, err := leader.api().GetOperation(ctx(t), &havenv1.GetOperationRequest{Id: op})
		if err != nil {
			return err
		}
		if p := resp.GetOperation().GetPhase(); p != havenv1.OperationPhase_OPERATION_PHASE_PRECOPY {
			return fmt.Errorf("move is %s", p)
		}
		return nil
	})
	if _, err := leader.api().CancelOperation(ctx(t), &havenv1.CancelOperationRequest{Id: op}); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	got := mc.waitMove(leader, op, 30*time.Second)
	if got.GetOutcome() != outcomeCancelled {
		t.Errorf("cancelled move ended %s (%s)", got.GetOutcome(), got.GetReason())
	}
	mc.settled(leader, expect{owner: roleSource}, nil)
	// The longest the guest stood still, from before the move to after
	// its end: two ticks apart are one tick of running, so what it stood
	// still is the gap less a tick.
	var longest time.Duration
	var last time.Time
	for _, r := range mc.execRecords(mc.group) {
		if r.Node != src.name || r.Wall.Before(from) {
			continue
		}
		if !last.IsZero() && r.Wall.Sub(last) > longest {
			longest = r.Wall.Sub(last)
		}
		last = r.Wall
	}
	t.Logf("move %s cancelled after %d rounds, %d bytes; the guest's longest gap %s", op, got.GetProgress().GetRound(), got.GetProgress().GetBytesSent(), longest)
	if longest-tick > downtime {
		t.Errorf("the guest stood still %s (a gap of %s between ticks %s apart), more than the downtime target of %s", longest-tick, longest, tick, downtime)
	}
	mc.counterGoesOn()
	mc.checkInvariants([]string{mc.group})
}
