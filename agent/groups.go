package agent

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The leader's group duties: place groups on start, restart the groups of
// fenced nodes elsewhere, act on the owners' reports.

// groupsLoop runs while this node leads and its barrier is applied.
func (a *Agent) groupsLoop(ctx context.Context, stop <-chan struct{}) {
	const every = 100 * time.Millisecond
	tick := time.NewTicker(every)
	defer tick.Stop()
	last := time.Now()
	var memo waitMemo
	drainMemo := map[string]uint64{}
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		if now.Sub(last) > 5*every {
			// This process could not run (SIGSTOP, starvation): nodes
			// could not renew with it either.
			a.log.Warn("leader stalled; restarting every node's silence", "stalled", now.Sub(last).Round(time.Millisecond))
			a.leases.mu.Lock()
			if a.leases.grants != nil {
				a.leases.grants.Stalled(now)
			}
			a.leases.mu.Unlock()
		}
		last = now
		a.failover(now)
		a.failback(now)
		a.drain(now, drainMemo)
		a.placeWaiting(&memo)
	}
}

// failover moves the groups of every node that has been silent past its
// failover time. The decision and marking the groups pending happen under
// the lease lock, so no grant can list them from then on (step 5). Where
// they go is the restart plan the reserve check made for this failure
// (see restartPlan); only the choice of node is placement's. A group that
// is not meant to run (an operator stopped it) is only taken off the dead
// node. Every assignment is a compare-and-set on the epoch and the desired
// state it was decided on, so an operator's stop committed meanwhile wins.
func (a *Agent) failover(now time.Time) {
	byOwner := map[string][]*havenv1.Group{}
	for _, g := range a.fsm.Groups() {
		if o := g.GetOwner(); o != "" && o != a.cfg.Name && fsm.Active(g.GetState()) {
			byOwner[o] = append(byOwner[o], g)
		}
	}
	var moving []*havenv1.Group
	a.leases.mu.Lock()
	if a.leases.grants == nil || !a.leases.grants.CanGrant() {
		a.leases.mu.Unlock()
		return
	}
	for owner, groups := range byOwner {
		for _, g := range groups {
			name := g.GetSpec().GetName()
			if now.Before(a.leases.grants.GroupFailoverAt(owner, a.leases.assigned[name])) {
				continue
			}
			if !a.leases.pending[name] {
				a.leases.pending[name] = true
				moving = append(moving, g)
			}
		}
	}
	a.leases.mu.Unlock()
	if len(moving) == 0 {
		return
	}
	sortByPriority(moving)
	a.placeMu.Lock()
	defer a.placeMu.Unlock()
	var restart, failed []string
	seenOwner := map[string]bool{}
	for _, g := range moving {
		if o := g.GetOwner(); !seenOwner[o] {
			seenOwner[o] = true
			failed = append(failed, o)
		}
		if fsm.WantsRun(g) && g.GetSpec().GetPriority() != havenv1.Priority_PRIORITY_NO_AUTO_START {
			restart = append(restart, g.GetSpec().GetName())
		}
	}
	sort.Strings(failed)
	var targets, why map[string]string
	if len(restart) > 0 {
		st := a.placementState()
		targets, why, _ = a.restartPlan(st, restart, failed, a.leaseHolders(st, now))
	}
	for _, g := range moving {
		name, from := g.GetSpec().GetName(), g.GetOwner()
		cmd := &havenv1.AssignGroupCommand{Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_STARTING}
		switch {
		case !fsm.WantsRun(g):
			cmd.State, cmd.Reason = havenv1.GroupState_GROUP_STATE_OFFLINE, fmt.Sprintf("was stopping on %s, which failed", from)
		case g.GetSpec().GetPriority() == havenv1.Priority_PRIORITY_NO_AUTO_START:
			// The leader decides for the operator here: the group stays
			// stopped until someone starts it.
			cmd.State, cmd.Reason = havenv1.GroupState_GROUP_STATE_OFFLINE, fmt.Sprintf("owner %s failed; no-auto-start groups wait for an operator", from)
			cmd.Desired = havenv1.DesiredState_DESIRED_STATE_STOPPED
		case targets[name] == "":
			cmd.State, cmd.Reason = havenv1.GroupState_GROUP_STATE_FAILED, fmt.Sprintf("owner %s failed and no node can host it: %s", from, why[name])
		default:
			cmd.Owner, cmd.Reason = targets[name], fmt.Sprintf("failed over from %s", from)
		}
		err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: cmd}})
		a.leases.mu.Lock()
		delete(a.leases.pending, name)
		a.leases.mu.Unlock()
		if err != nil {
			a.log.Warn("failover not committed", "group", name, "from", from, "error", err)
			continue
		}
		if cmd.Owner != "" {
			a.assigned(name, cmd.Owner, now)
			a.moves.record(name, from, cmd.Owner, now)
		}
		a.log.Info("group failed over", "group", name, "from", from, "to", cmd.Owner, "epoch", g.GetEpoch()+1, "state", cmd.State)
	}
}

// assigned records that this leader committed group to owner at now: the
// group's failover clock starts there (quorum.Grants.GroupFailoverAt).
func (a *Agent) assigned(group, owner string, now time.Time) {
	a.leases.mu.Lock()
	if a.leases.assigned != nil {
		a.leases.assigned[group] = now
	}
	a.leases.mu.Unlock()
}

// failureHoldOff is how long placement keeps a group away from a node it
// failed on (start failures, a fenced disk, crashes past the restart
// policy), as WSFC waits an hour before it retries a failed group. An
// operator's start clears the record at once.
const failureHoldOff = time.Hour

// recentFailures lists the nodes g failed on within failureHoldOff of now.
func recentFailures(g *havenv1.Group, now time.Time) []string {
	var out []string
	for _, f := range g.GetFailures() {
		if now.Sub(f.GetTime().AsTime()) < failureHoldOff {
			out = append(out, f.GetNode())
		}
	}
	return out
}

// placeWaiting retries groups that failed for want of a node and are
// still meant to run. An attempt that placed nothing is not repeated until
// the cluster changes, or a minute has passed (failures age out of their
// hold-off by time alone).
func (a *Agent) placeWaiting(memo *waitMemo) {
	var waiting []*havenv1.Group
	for _, g := range a.fsm.Groups() {
		if g.GetState() == havenv1.GroupState_GROUP_STATE_FAILED && g.GetOwner() == "" && fsm.WantsRun(g) {
			waiting = append(waiting, g)
		}
	}
	if len(waiting) == 0 {
		return
	}
	a.placeMu.Lock()
	defer a.placeMu.Unlock()
	now := time.Now()
	st := a.placementState()
	key := stateKey(st, 0)
	if memo.tried && memo.key == key && now.Before(memo.until) {
		return
	}
	sortByPriority(waiting)
	var names []string
	for _, g := range waiting {
		names = append(names, g.GetSpec().GetName())
	}
	targets, _ := placeGroups(st, names, nil, a.leaseHolders(st, now))
	memo.tried, memo.key, memo.until = len(targets) == 0, key, now.Add(time.Minute)
	for _, g := range waiting {
		owner := targets[g.GetSpec().GetName()]
		if owner == "" {
			continue
		}
		if err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: g.GetSpec().GetName(), ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner,
			State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "placed after waiting for a node",
		}}}); err != nil {
			a.log.Warn("placement not committed", "group", g.GetSpec().GetName(), "error", err)
			continue
		}
		a.assigned(g.GetSpec().GetName(), owner, now)
	}
}

// waitMemo remembers the state of the last placeWaiting attempt that
// placed nothing.
type waitMemo struct {
	tried bool
	key   uint64
	until time.Time
}

// sortByPriority orders groups as placement does, most important first,
// then by name.
func sortByPriority(gs []*havenv1.Group) {
	sort.SliceStable(gs, func(i, j int) bool {
		pi, pj := placementPriority(gs[i].GetSpec().GetPriority()), placementPriority(gs[j].GetSpec().GetPriority())
		if pi != pj {
			return pi < pj
		}
		return gs[i].GetSpec().GetName() < gs[j].GetSpec().GetName()
	})
}

// holds reports whether node renewed its lease with this leader recently
// enough to be running now.
func (l *leases) holds(node string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.grants != nil && now.Before(l.grants.LeaseEnd(node))
}

// handleReport applies an owner's report at the epoch and desired index
// it acted on; the FSM refuses one that no longer follows (the owner
// raced an operator's stop, or the group moved on). A group that failed
// on its owner (its start kept failing, its disk fenced it, it crashed
// past its restart policy) moves to another node it has not failed on
// lately, or is marked failed with the reason when there is none.
func (a *Agent) handleReport(req *havenv1.ReportGroupRequest) error {
	g := a.fsm.Group(req.GetName())
	if g == nil {
		return status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	if g.GetOwner() != req.GetNode() || g.GetEpoch() != req.GetEpoch() {
		return status.Errorf(codes.FailedPrecondition, "group %q is owned by %q at epoch %d, not %q at %d", req.GetName(), g.GetOwner(), g.GetEpoch(), req.GetNode(), req.GetEpoch())
	}
	if req.GetState() != havenv1.GroupState_GROUP_STATE_FAILED {
		return a.commit(&havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
			Name: req.GetName(), Node: req.GetNode(), Epoch: req.GetEpoch(), DesiredIndex: req.GetDesiredIndex(), State: req.GetState(), Reason: req.GetReason(),
		}}})
	}
	a.placeMu.Lock()
	defer a.placeMu.Unlock()
	now := time.Now()
	failure := &havenv1.GroupFailure{Node: req.GetNode(), Time: timestamppb.New(now), Reason: req.GetReason()}
	cmd := &havenv1.AssignGroupCommand{Name: req.GetName(), ExpectEpoch: req.GetEpoch(), ExpectDesiredIndex: req.GetDesiredIndex(), Failure: failure}
	if !fsm.WantsRun(g) {
		cmd.State, cmd.Reason = havenv1.GroupState_GROUP_STATE_OFFLINE, req.GetReason()+"; stopped"
	} else {
		pst := a.placementState()
		targets, why := placeGroups(pst, []string{req.GetName()}, []string{req.GetNode()}, a.leaseHolders(pst, now))
		cmd.Owner, cmd.State, cmd.Reason = targets[req.GetName()], havenv1.GroupState_GROUP_STATE_STARTING, req.GetReason()+"; failed over"
		if cmd.Owner == "" {
			cmd.State, cmd.Reason = havenv1.GroupState_GROUP_STATE_FAILED, req.GetReason()+"; no other node can host it: "+why[req.GetName()]
		}
	}
	if err := a.commit(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: cmd}}); err != nil {
		return err
	}
	a.log.Warn("group failed on its owner", "group", req.GetName(), "node", req.GetNode(), "reason", req.GetReason(), "to", cmd.Owner, "state", cmd.State)
	if cmd.Owner != "" {
		a.assigned(req.GetName(), cmd.Owner, now)
		a.moves.record(req.GetName(), req.GetNode(), cmd.Owner, now)
	}
	return nil
}

// commit proposes c and maps a refusal to its status.
func (a *Agent) commit(c *havenv1.Command) error {
	res, err := a.propose(c)
	if err != nil {
		return err
	}
	if res.Err != nil {
		return fsmError(res.Err)
	}
	return nil
}
