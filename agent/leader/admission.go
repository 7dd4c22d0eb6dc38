package leader

import (
	"errors"
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
//
// The reserve kept from the last decision answers first, if it was kept
// for the reserve wanted now (K, site loss): if it admits the group, the
// creation goes ahead without reading every group again.
// The state may have moved on since, but creating consumes nothing and
// the start is admitted exactly; at 10,000 groups the exact answer costs
// a read of every group and a fingerprint of the state, each creation.
// A refusal, which the operator sees, is always the exact answer.
func (l *Leader) admitCreate(spec *havenv1.GroupSpec) error {
	if spec.GetPriority() == havenv1.Priority_PRIORITY_NO_AUTO_START || l.state.Group(spec.GetName()) != nil {
		return nil
	}
	if kept := l.keptReserve(); kept != nil && kept.Spec() == l.reserveSpec(buildState(l.state.Nodes(), nil, nil, 0, l.cfg.DirtyRate, time.Now())) {
		if _, err := kept.Admit(l.placementGroup(spec)); err == nil {
			return nil
		}
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
// that the reserve still holds, and commits it. The decision is made under
// placeMu, the commit after it: until the assignment is applied it is a
// pending start, which every later decision's state includes
// (placementState). Commits of starts so overlap, and Raft writes them
// together, instead of each start waiting for the one before to commit.
//
// The node chosen must have checked the group's spec (checks.go): if it
// has not yet, the start waits for its check, outside placeMu, and
// decides again, so that a node whose driver cannot run the group is left
// out. A refusal waits for every node's check before it is final: it may
// rest on a node that is about to say it cannot run the group, which
// changes the answer (no node can run it, or a restart plan elsewhere).
func (l *Leader) startGroup(g *havenv1.Group, node, requestID string) error {
	name := g.GetSpec().GetName()
	checks := time.Now().Add(checksWait)
	l.placeMu.Lock()
	var d startDecision
	for {
		// A start of the same group decided and not yet applied: its
		// outcome decides what this one does.
		for wait := l.pending.wait(name); wait != nil; wait = l.pending.wait(name) {
			l.placeMu.Unlock()
			<-wait
			l.placeMu.Lock()
		}
		// What the nodes had checked is read before the decision, whose
		// state then holds at least their refusals.
		index := g.GetCreateIndex()
		seen := l.checksAt(index)
		var err error
		d, err = l.decideStart(g, node)
		if d.g != nil && d.g.GetCreateIndex() != index {
			// Deleted and created again meanwhile: the checks read were
			// of the group before.
			g = d.g
			continue
		}
		var refusal *startRefusal
		if errors.As(err, &refusal) {
			if time.Now().Before(checks) && !seen.all {
				l.placeMu.Unlock()
				awaitChecks(func() bool { return l.checksAt(index).all }, checks)
				l.placeMu.Lock()
				continue
			}
			l.placeMu.Unlock()
			l.log.Info("start refused", "group", name, "reason", refusal.err)
			l.refused("start", name, refusal.err)
			return refusal.err
		}
		if err != nil || d.owner == "" {
			l.placeMu.Unlock()
			return err
		}
		if seen.checked[d.owner] || !time.Now().Before(checks) {
			break
		}
		l.placeMu.Unlock()
		owner := d.owner
		awaitChecks(func() bool { return l.checkedBy(owner, index) }, checks)
		l.placeMu.Lock()
		g = d.g
	}
	done := l.pending.add(name, d.owner)
	if node == "" {
		// The admission's reserve is the reserve of the state with this
		// start (unless something else changed meanwhile, which the key
		// tells): keeping it spares the next decision a full check.
		l.keepReserve(d.st, map[string]string{name: d.owner}, d.spec, d.kept)
	}
	l.placeMu.Unlock()
	defer done()
	// The operator's intent (run, at this command's index) and the
	// placement go in one command; an operator's start also forgets where
	// the group failed before.
	if err := l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: name, ExpectEpoch: d.g.GetEpoch(), ExpectDesiredIndex: d.g.GetDesiredIndex(), Owner: d.owner,
		State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "started on request",
		Desired: havenv1.DesiredState_DESIRED_STATE_RUN, ClearFailures: true,
	}}}); err != nil {
		return err
	}
	l.leases.Assigned(name, d.at)
	return nil
}

// startDecision is where a start goes and what it was decided on.
type startDecision struct {
	g     *havenv1.Group // as decided on
	owner string         // "": nothing to do, the group started meanwhile
	at    time.Time
	st    placement.State
	spec  placement.Spec
	kept  *placement.Reserve
}

// decideStart is startGroup's decision, made under placeMu.
func (l *Leader) decideStart(g *havenv1.Group, node string) (startDecision, error) {
	// Another decision may have been committed while this one waited for
	// the lock: a concurrent start of the same group has started it.
	cur := l.state.Group(g.GetSpec().GetName())
	switch {
	case cur == nil:
		return startDecision{}, refuse(ErrNotFound, "group %q not found", g.GetSpec().GetName())
	case cur.GetEpoch() != g.GetEpoch() || cur.GetDesiredIndex() != g.GetDesiredIndex():
		// Changed while this start waited: decide again on what is now.
		if err := startable(cur, node); err != nil || alreadyStarted(cur, node) {
			return startDecision{}, err
		}
	}
	d := startDecision{g: cur, at: time.Now()}
	d.st = l.placementState()
	d.spec = l.reserveSpec(d.st)
	pg := l.placementGroup(cur.GetSpec())
	// An operator's start may go where the group failed before: it
	// clears the record.
	pg.AvoidNodes = nil
	d.st = withGroupIn(d.st, pg)
	var err error
	if node != "" {
		d.owner, err = admitOn(d.st, pg, node, d.spec)
	} else {
		d.owner, d.kept, err = l.admit(d.st, pg, d.spec, l.leaseHolders(d.st, d.at))
	}
	if err != nil {
		return startDecision{g: cur}, &startRefusal{err: err}
	}
	return d, nil
}

// startRefusal is an admission's refusal of a start, as against a start
// with nothing to decide (a group gone, or started meanwhile).
type startRefusal struct{ err error }

func (r *startRefusal) Error() string { return r.err.Error() }
func (r *startRefusal) Unwrap() error { return r.err }

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
