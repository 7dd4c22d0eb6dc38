package leader

import (
	"slices"
	"time"

	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// admitCreate refuses an HA group that could not be started now without
// breaking the reserve (or that fits on no node at all). Creating a group
// consumes nothing, but a group the cluster accepted is expected to run:
// saying so at creation is more honest than accepting it and refusing its
// start. No-auto-start groups are not HA and are never refused here; a
// name that exists is left to the FSM (AlreadyExists, or a retried
// request's first result).
func (l *Leader) admitCreate(spec *havenv1.GroupSpec) error {
	if spec.GetPriority() == havenv1.Priority_PRIORITY_NO_AUTO_START || l.state.Group(spec.GetName()) != nil {
		return nil
	}
	st := l.placementState()
	want := l.reserveSpec(st)
	if !want.On() {
		return nil
	}
	if _, err := l.reserveFor(st, want).Admit(l.placementGroup(spec)); err != nil {
		l.log.Info("group refused", "group", spec.GetName(), "reason", err)
		l.refused("create", spec.GetName(), err)
		return err
	}
	return nil
}

// refused counts and reports a refusal by admission.
func (l *Leader) refused(call, group string, err error) {
	l.cfg.Metrics.AdmissionRefused(call)
	if l.cfg.Refused != nil {
		l.cfg.Refused(call, group, err.Error())
	}
}

// startGroup places a group that is not running (on node, when given) so
// that the reserve still holds, and commits it.
func (l *Leader) startGroup(g *havenv1.Group, node, requestID string) error {
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	// Another decision may have been committed while this one waited for
	// the lock: a concurrent start of the same group has started it.
	cur := l.state.Group(g.GetSpec().GetName())
	switch {
	case cur == nil:
		return refuse(ErrNotFound, "group %q not found", g.GetSpec().GetName())
	case cur.GetEpoch() != g.GetEpoch() || cur.GetDesiredIndex() != g.GetDesiredIndex():
		// Changed while this start waited: decide again on what is now.
		if err := startable(cur, node); err != nil || alreadyStarted(cur, node) {
			return err
		}
	}
	g = cur
	now := time.Now()
	st := l.placementState()
	spec := l.reserveSpec(st)
	pg := l.placementGroup(g.GetSpec())
	// An operator's start may go where the group failed before: it
	// clears the record.
	pg.AvoidNodes = nil
	st = withGroup(st, pg)
	var owner string
	var kept *placement.Reserve
	var err error
	if node != "" {
		owner, err = admitOn(st, pg, node, spec)
	} else {
		owner, kept, err = l.admit(st, pg, spec, l.leaseHolders(st, now))
	}
	if err != nil {
		l.log.Info("start refused", "group", pg.Name, "reason", err)
		l.refused("start", pg.Name, err)
		return err
	}
	// The operator's intent (run, at this command's index) and the
	// placement go in one command; an operator's start also forgets where
	// the group failed before.
	if err := l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: pg.Name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner,
		State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "started on request",
		Desired: havenv1.DesiredState_DESIRED_STATE_RUN, ClearFailures: true,
	}}}); err != nil {
		return err
	}
	l.leases.Assigned(pg.Name, now)
	if node == "" {
		// The admission's reserve is the reserve of the state just
		// committed (unless something else changed meanwhile, which the
		// key tells): keeping it spares the next check.
		l.keepReserve(withAssign(st, map[string]string{pg.Name: owner}), spec, kept)
	}
	return nil
}

// admitOn admits a group on the node an operator chose: the node must take
// it, and with it there every failure set of spec (k nodes, a site) must
// still have a restart plan. The choice binds this start only: the group's own possible owners
// stay as they are for its restarts.
func admitOn(st placement.State, g placement.Group, node string, spec placement.Spec) (string, error) {
	here := g
	here.PossibleOwners = []string{node}
	if !slices.Contains(g.PossibleOwners, node) && len(g.PossibleOwners) > 0 {
		return "", refuse(ErrInvalid, "node: %s is not among the group's possible owners", node)
	}
	res := placement.Place(withGroup(st, here), []string{g.Name}, placement.Options{})
	if len(res.Unplaced) > 0 {
		return "", &placement.NoRoomError{Unplaced: res.Unplaced[0]}
	}
	if spec.On() {
		r := placement.CheckReserveSpec(withAssign(withGroup(st, g), map[string]string{g.Name: node}), spec)
		if !r.OK && r.Breach != nil {
			return "", &placement.ReserveError{Group: g.Name, K: spec.K, SiteLoss: spec.SiteLoss, Node: node, Breach: *r.Breach, Tried: []string{node}}
		}
	}
	return node, nil
}
