package leader

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// What the API asks of the leader. Each call is refused with ErrNotLeader
// unless this node is in office; the request id makes a retried write
// apply once.

// MaxReserve bounds placement.reserve and the K a reserve report may ask
// about: beyond a few failures the answer is a conservative bound anyway
// (placement/bound.go), and a cluster that must survive more should be
// split by site.
const MaxReserve = 16

// CreateGroup admits and creates a group.
func (l *Leader) CreateGroup(spec *havenv1.GroupSpec, requestID string) (*havenv1.Group, error) {
	if l.current() == nil {
		return nil, ErrNotLeader
	}
	if err := l.admitCreate(spec); err != nil {
		return nil, err
	}
	if err := l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: spec}}}); err != nil {
		return nil, err
	}
	g := l.state.Group(spec.GetName())
	if g == nil {
		// Only a duplicate request whose group was deleted since.
		return nil, refuse(ErrNotFound, "group %q was created by request %s and deleted since", spec.GetName(), requestID)
	}
	return g, nil
}

// DeleteGroup deletes a stopped group.
func (l *Leader) DeleteGroup(name, requestID string) error {
	if l.current() == nil {
		return ErrNotLeader
	}
	return l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: name}}})
}

// StartGroup starts a group, on node when one is given, keeping the
// reserve.
func (l *Leader) StartGroup(name, node, requestID string) (*havenv1.Group, error) {
	if l.current() == nil {
		return nil, ErrNotLeader
	}
	g := l.state.Group(name)
	if g == nil {
		return nil, refuse(ErrNotFound, "group %q not found", name)
	}
	if err := startable(g, node); err != nil {
		return nil, err
	}
	if alreadyStarted(g, node) {
		return g, nil
	}
	if node != "" && l.state.Node(node) == nil && !l.member(node) {
		return nil, refuse(ErrNotFound, "node %q not found", node)
	}
	if possible := g.GetSpec().GetPossibleOwners(); node != "" && len(possible) > 0 && !slices.Contains(possible, node) {
		return nil, refuse(ErrConflict, "group %q may only run on %s, not on %s (possible_owners)", name, strings.Join(possible, ","), node)
	}
	if err := l.startGroup(g, node, requestID); err != nil {
		return nil, err
	}
	return l.state.Group(name), nil
}

// alreadyStarted reports whether a start of g (on node, when given) has
// nothing to do: the group is meant to run and runs, or is on its way
// (starting, or stopping for a planned move), on that node if one was
// named.
func alreadyStarted(g *havenv1.Group, node string) bool {
	if !fsm.WantsRun(g) || g.GetOwner() == "" {
		return false
	}
	return node == "" || node == g.GetOwner() && g.GetMoveTo() == ""
}

// startable refuses a start that cannot be honoured as asked.
func startable(g *havenv1.Group, node string) error {
	name := g.GetSpec().GetName()
	switch {
	case !fsm.WantsRun(g) && g.GetState() == havenv1.GroupState_GROUP_STATE_STOPPING:
		return refuse(ErrConflict, "group %q is stopping on %s: start it once it is offline", name, g.GetOwner())
	case fsm.WantsRun(g) && g.GetOwner() != "" && node != "" && (node != g.GetOwner() || g.GetMoveTo() != ""):
		return refuse(ErrConflict, "group %q already runs on %s: moving it is MoveGroup's job", name, g.GetOwner())
	}
	return nil
}

// StopGroup records the operator's stop, whatever the group is doing: the
// FSM turns it into stopping, offline or a cancelled move, and nothing
// decided before it can undo it.
func (l *Leader) StopGroup(name, requestID string) (*havenv1.Group, error) {
	if l.current() == nil {
		return nil, ErrNotLeader
	}
	if err := l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{
		Name: name, Reason: "stop requested"}}}); err != nil {
		return nil, err
	}
	g := l.state.Group(name)
	if g == nil {
		// Only a retried request whose group was deleted since.
		return nil, refuse(ErrNotFound, "group %q was stopped by request %s and deleted since", name, requestID)
	}
	return g, nil
}

// SetDrain starts or ends the drain of a node; the groups move off it in
// the leader's loop (drain).
func (l *Leader) SetDrain(node string, draining bool, requestID string) (*havenv1.Node, error) {
	if l.current() == nil {
		return nil, ErrNotLeader
	}
	if l.state.Node(node) == nil {
		return nil, refuse(ErrNotFound, "node %q not found", node)
	}
	if err := l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: node, Draining: draining}}}); err != nil {
		return nil, err
	}
	return l.state.Node(node), nil
}

// ReserveReport is the answer to "can the cluster sustain K failures?".
type ReserveReport struct {
	*placement.Reserve
	// Kept is the K the leader keeps (placement.reserve, capped by the
	// nodes that can host groups); Configured is the setting.
	Kept, Configured int
	// KeptSites is the site-loss reserve the leader keeps (0 or 1:
	// placement.reserve_sites, 0 while fewer than two sites host groups);
	// ConfiguredSites is the setting.
	KeptSites, ConfiguredSites int
	Leader                     string
	CPUOvercommit              float64
}

// Reserve checks the reserve for k failures; 0 means the kept K. The
// site-loss reserve is checked as kept, whatever k.
func (l *Leader) Reserve(k int) (ReserveReport, error) {
	if l.current() == nil {
		return ReserveReport{}, ErrNotLeader
	}
	if k < 0 || k > MaxReserve {
		return ReserveReport{}, refuse(ErrInvalid, "k: %d is more than %d", k, MaxReserve)
	}
	st := l.placementState()
	kept := l.reserveSpec(st)
	var r *placement.Reserve
	if k == 0 || k == kept.K {
		r = l.reserveFor(st, kept)
	} else {
		// Another K than the one kept: answered, not kept.
		r = placement.CheckReserveSpec(st, placement.Spec{K: k, SiteLoss: kept.SiteLoss})
	}
	return l.report(r, kept), nil
}

func (l *Leader) report(r *placement.Reserve, kept placement.Spec) ReserveReport {
	rep := ReserveReport{Reserve: r, Kept: kept.K, Configured: l.cfg.Reserve, ConfiguredSites: l.cfg.ReserveSites,
		Leader: l.cfg.Name, CPUOvercommit: l.cfg.CPUOvercommit}
	if kept.SiteLoss {
		rep.KeptSites = 1
	}
	return rep
}

// KeptReserve is the reserve kept on the current state (K failures and,
// when kept, any one site's loss) with the settings; its Reserve is nil
// when none is kept (K = 0 and no site-loss reserve). Any node may ask:
// it is computed from its own copy of the state, with this node's
// placement settings.
//
// A status call asks every second or so. While the FSM's index and
// gossip's members stand still, and no start is pending, the answer is
// the one found last: at 10,000 groups building the state and its key
// was a seventh of a steady leader's CPU (leader profile at 48 agents).
// When the state changed, the answer may be the reserve before the
// change while the new state is checked (reserveSoon).
func (l *Leader) KeptReserve() ReserveReport {
	// Read before the state: what the state is built from is then at
	// least this, and a change after it shows in the next call's.
	now := reserveSeen{index: l.state.Index(), members: l.cfg.Members.Members(), at: time.Now()}
	quiet := !l.pending.any()
	if seen, ok := l.reserve.seenAt(now); ok && quiet {
		return l.report(seen.r, seen.spec)
	}
	st := l.placementState()
	spec := l.reserveSpec(st)
	var r *placement.Reserve
	exact := true
	if spec.On() {
		r, exact = l.reserveSoon(st, spec)
	}
	if exact && quiet && !l.pending.any() {
		l.reserve.see(now, r, spec)
	}
	return l.report(r, spec)
}

// Rank rates every node for a group of the given spec, keeping the
// reserve; it also returns the reserve kept.
func (l *Leader) Rank(spec *havenv1.GroupSpec) ([]placement.Ranked, placement.Spec, error) {
	if l.current() == nil {
		return nil, placement.Spec{}, ErrNotLeader
	}
	g := l.placementGroup(spec)
	st := l.placementState()
	want := l.reserveSpec(st)
	if !want.On() {
		return placement.Rank(st, g), want, nil
	}
	ranked, err := l.reserveFor(st, want).Rank(g)
	return ranked, want, err
}

// Balance runs the balancer on the current state. The mode is the
// configured one; a dry run with the balancer off answers as recommend
// mode would.
func (l *Leader) Balance(power, dryRun bool) (BalanceReport, error) {
	t := l.current()
	if t == nil {
		return BalanceReport{}, ErrNotLeader
	}
	rep := BalanceReport{Mode: l.cfg.Balancer, Threshold: balanceThreshold, CostPerSecond: balanceCostPerSecond}
	mode := l.cfg.Balancer
	if mode == placement.ModeOff && dryRun {
		// A dry run is a question; the answer is what recommend would say.
		mode = placement.ModeRecommend
		rep.Notes = append(rep.Notes, "placement.balancer is off: this dry run shows what recommend mode would propose")
	}
	rep.Proposal, rep.ReserveK = l.proposal(t, mode, power, dryRun, time.Now())
	if rep.Proposal.Execute {
		n := l.execute(t, rep.Proposal)
		rep.Notes = append(rep.Notes, fmt.Sprintf("automatic mode: %d of the %d moves started (live, at most %d at once, none while another move is in flight); see haven ops", n, len(rep.Proposal.Moves), l.maxParallelMoves()))
	}
	rep.Notes = append(rep.Notes, rep.Proposal.Notes...)
	return rep, nil
}

// BalanceReport is the balancer's proposal with its settings.
type BalanceReport struct {
	placement.Proposal
	Mode                     placement.Mode
	Threshold, CostPerSecond float64
	ReserveK                 int
	// Notes are the proposal's and the leader's remarks.
	Notes []string
}
