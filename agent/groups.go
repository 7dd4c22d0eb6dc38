package agent

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
// (see restartPlan); only the choice of node is placement's.
func (a *Agent) failover(now time.Time) {
	byOwner := map[string][]*havenv1.Group{}
	for _, g := range a.fsm.Groups() {
		if o := g.GetOwner(); o != "" && o != a.cfg.Name && active(g.GetState()) {
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
		if now.Before(a.leases.grants.FailoverAt(owner)) {
			continue
		}
		for _, g := range groups {
			if !a.leases.pending[g.GetSpec().GetName()] {
				a.leases.pending[g.GetSpec().GetName()] = true
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
		if !stoppingForGood(g) && g.GetSpec().GetPriority() != havenv1.Priority_PRIORITY_NO_AUTO_START {
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
		var owner, reason string
		st := havenv1.GroupState_GROUP_STATE_STARTING
		switch {
		case stoppingForGood(g):
			st, reason = havenv1.GroupState_GROUP_STATE_OFFLINE, fmt.Sprintf("was stopping on %s, which failed", from)
		case g.GetSpec().GetPriority() == havenv1.Priority_PRIORITY_NO_AUTO_START:
			st, reason = havenv1.GroupState_GROUP_STATE_OFFLINE, fmt.Sprintf("owner %s failed; no-auto-start groups wait for an operator", from)
		case targets[name] == "":
			st, reason = havenv1.GroupState_GROUP_STATE_FAILED, fmt.Sprintf("owner %s failed and no node can host it: %s", from, why[name])
		default:
			owner, reason = targets[name], fmt.Sprintf("failed over from %s", from)
		}
		err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: name, ExpectEpoch: g.GetEpoch(), Owner: owner, State: st, Reason: reason,
		}}})
		a.leases.mu.Lock()
		delete(a.leases.pending, name)
		a.leases.mu.Unlock()
		if err != nil {
			a.log.Warn("failover not committed", "group", name, "from", from, "error", err)
			continue
		}
		if owner != "" {
			a.moves.record(name, from, owner, now)
		}
		a.log.Info("group failed over", "group", name, "from", from, "to", owner, "epoch", g.GetEpoch()+1, "state", st)
	}
}

// stoppingForGood is a group an operator asked to stop; one stopping for a
// failback is still meant to run.
func stoppingForGood(g *havenv1.Group) bool {
	return g.GetState() == havenv1.GroupState_GROUP_STATE_STOPPING && g.GetMoveTo() == ""
}

// placeWaiting retries groups that failed for want of a node. An attempt
// that placed nothing is not repeated until the cluster changes: the
// answer would be the same.
func (a *Agent) placeWaiting(memo *waitMemo) {
	var waiting []*havenv1.Group
	for _, g := range a.fsm.Groups() {
		if g.GetState() == havenv1.GroupState_GROUP_STATE_FAILED && g.GetOwner() == "" {
			waiting = append(waiting, g)
		}
	}
	if len(waiting) == 0 {
		return
	}
	a.placeMu.Lock()
	defer a.placeMu.Unlock()
	st := a.placementState()
	key := stateKey(st, 0)
	if memo.tried && memo.key == key {
		return
	}
	sortByPriority(waiting)
	var names []string
	for _, g := range waiting {
		names = append(names, g.GetSpec().GetName())
	}
	now := time.Now()
	targets, _ := placeGroups(st, names, nil, a.leaseHolders(st, now))
	memo.tried, memo.key = len(targets) == 0, key
	for _, g := range waiting {
		owner := targets[g.GetSpec().GetName()]
		if owner == "" {
			continue
		}
		if err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: g.GetSpec().GetName(), ExpectEpoch: g.GetEpoch(), Owner: owner, State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "placed after waiting for a node",
		}}}); err != nil {
			a.log.Warn("placement not committed", "group", g.GetSpec().GetName(), "error", err)
		}
	}
}

// waitMemo remembers the state of the last placeWaiting attempt that
// placed nothing.
type waitMemo struct {
	tried bool
	key   uint64
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

// handleReport applies an owner's report at its epoch. A group that failed
// on its owner after its restarts moves to another node.
func (a *Agent) handleReport(req *havenv1.ReportGroupRequest) error {
	g := a.fsm.Group(req.GetName())
	if g == nil {
		return status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	if g.GetOwner() != req.GetNode() || g.GetEpoch() != req.GetEpoch() {
		return status.Errorf(codes.FailedPrecondition, "group %q is owned by %q at epoch %d, not %q at %d", req.GetName(), g.GetOwner(), g.GetEpoch(), req.GetNode(), req.GetEpoch())
	}
	if req.GetState() == havenv1.GroupState_GROUP_STATE_FAILED {
		a.placeMu.Lock()
		defer a.placeMu.Unlock()
		now := time.Now()
		pst := a.placementState()
		targets, why := placeGroups(pst, []string{req.GetName()}, []string{req.GetNode()}, a.leaseHolders(pst, now))
		owner := targets[req.GetName()]
		st, reason := havenv1.GroupState_GROUP_STATE_STARTING, req.GetReason()+"; failed over"
		if owner == "" {
			st, reason = havenv1.GroupState_GROUP_STATE_FAILED, req.GetReason()+"; no node can host it: "+why[req.GetName()]
		}
		err := a.commit(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: req.GetName(), ExpectEpoch: req.GetEpoch(), Owner: owner, State: st, Reason: reason,
		}}})
		if err == nil && owner != "" {
			a.moves.record(req.GetName(), req.GetNode(), owner, now)
		}
		return err
	}
	// An owner's report never changes where a stopping group goes next.
	return a.commit(&havenv1.Command{Cmd: &havenv1.Command_SetGroupState{SetGroupState: &havenv1.SetGroupStateCommand{
		Name: req.GetName(), Epoch: req.GetEpoch(), State: req.GetState(), Reason: req.GetReason(), MoveTo: g.GetMoveTo(),
	}}})
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
