package leader

import (
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// failover moves the groups of every node that has been silent past its
// failover time. The decision and marking the groups pending happen under
// the lease table's lock (ClaimDue), so no grant can list them from then
// on (step 5). Where they go is the restart plan the reserve check made
// for this failure (see restartPlan); only the choice of node is
// placement's. A group that is not meant to run (an operator stopped it)
// is only taken off the dead node. Every assignment is a compare-and-set
// on the epoch and the desired state it was decided on, so an operator's
// stop committed meanwhile wins.
func (l *Leader) failover(t *term, now time.Time) {
	var owned []*havenv1.Group
	for _, o := range l.leases.Overdue(l.state.Owners(), now) {
		if o == l.cfg.Name {
			continue
		}
		for _, g := range l.state.GroupsFor(o) {
			if g.GetOwner() == o && fsm.Active(g.GetState()) {
				owned = append(owned, g)
			}
		}
	}
	moving := l.leases.ClaimDue(owned, now)
	if len(moving) == 0 {
		return
	}
	var names []string
	for _, g := range moving {
		names = append(names, g.GetSpec().GetName())
	}
	defer l.leases.Release(names...)
	sortByPriority(moving)
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	locked := time.Now()
	var restart, failed []string
	fences, silent := map[string]*havenv1.NodeFence{}, map[string]time.Time{}
	for _, g := range moving {
		o := g.GetOwner()
		if fences[o] == nil {
			since, fenced := l.leases.Silence(o)
			silent[o] = since
			fences[o] = &havenv1.NodeFence{Node: o, LastGrant: timestamppb.New(since), FencedAt: timestamppb.New(fenced)}
			failed = append(failed, o)
		}
		fences[o].Groups = append(fences[o].Groups, g.GetSpec().GetName())
		if fsm.WantsRun(g) && g.GetSpec().GetPriority() != havenv1.Priority_PRIORITY_NO_AUTO_START {
			restart = append(restart, g.GetSpec().GetName())
		}
	}
	sort.Strings(failed)
	var targets, why map[string]string
	if len(restart) > 0 {
		st := l.placementState()
		targets, why, _ = l.restartPlan(st, restart, failed, l.leaseHolders(st, now))
	}
	cmds := make([]*havenv1.AssignGroupCommand, 0, len(moving))
	for _, g := range moving {
		cmds = append(cmds, failoverCommand(g, targets, why))
	}
	fenced := make([]*havenv1.NodeFence, 0, len(failed))
	for _, o := range failed {
		fenced = append(fenced, fences[o])
	}
	planned := time.Now()
	errs := l.assignAll(cmds, fenced)
	committed := time.Now()
	took := map[string]bool{}
	for i, cmd := range cmds {
		from := moving[i].GetOwner()
		if errs[i] != nil {
			l.log.Warn("failover not committed", "group", cmd.Name, "from", from, "error", errs[i])
			continue
		}
		if cmd.Owner != "" {
			l.leases.Assigned(cmd.Name, now)
			t.moves.record(cmd.Name, from, cmd.Owner, now)
		}
		took[from] = true
		l.cfg.Metrics.Failover(failoverOutcome(cmd), committed.Sub(silent[from]))
		l.log.Info("group failed over", "group", cmd.Name, "from", from, "to", cmd.Owner, "epoch", moving[i].GetEpoch()+1, "state", cmd.State)
	}
	for _, o := range failed {
		if took[o] {
			l.cfg.Metrics.Fenced()
			// Where the time from the node's last grant went: silent_for
			// is the silence when this look began (failover_after plus
			// how late the look was), then the wait for the other
			// placement decisions, this one's, and its commit.
			l.log.Info("node's groups failed over", "node", o, "groups", len(fences[o].Groups),
				"silent_for", now.Sub(silent[o]).Round(time.Millisecond), "lock_wait", locked.Sub(now).Round(time.Millisecond),
				"decide", planned.Sub(locked).Round(time.Millisecond), "commit", committed.Sub(planned).Round(time.Millisecond))
		}
	}
}

// failoverOutcome names what a failover did with a group, for metrics.
func failoverOutcome(cmd *havenv1.AssignGroupCommand) string {
	switch {
	case cmd.Owner != "":
		return "restarted"
	case cmd.State == havenv1.GroupState_GROUP_STATE_FAILED:
		return "failed"
	}
	return "stopped"
}

// failoverCommand is the assignment that takes g off its failed owner.
func failoverCommand(g *havenv1.Group, targets, why map[string]string) *havenv1.AssignGroupCommand {
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
	return cmd
}

// assignAll commits assignments in one command, so a node's failover is
// one Raft commit however many groups it held, and returns each
// assignment's outcome (each is its own compare-and-set). fences names the
// failed nodes, for the events.
func (l *Leader) assignAll(cmds []*havenv1.AssignGroupCommand, fences []*havenv1.NodeFence) []error {
	errs := make([]error, len(cmds))
	res, err := l.cfg.Raft.Commit(&havenv1.Command{Cmd: &havenv1.Command_AssignGroups{AssignGroups: &havenv1.AssignGroupsCommand{Assignments: cmds, Fences: fences}}})
	switch {
	case err != nil:
	case res.Err != nil:
		err = res.Err
	case len(res.Items) != len(cmds):
		err = fmt.Errorf("batch of %d assignments answered with %d outcomes", len(cmds), len(res.Items))
	}
	for i := range errs {
		if err != nil {
			errs[i] = err
		} else if res.Items[i] != nil {
			errs[i] = res.Items[i]
		}
	}
	return errs
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
func (l *Leader) placeWaiting(t *term) {
	memo := &t.waitMemo
	var waiting []*havenv1.Group
	for _, g := range l.state.Groups() {
		if g.GetState() == havenv1.GroupState_GROUP_STATE_FAILED && g.GetOwner() == "" && fsm.WantsRun(g) {
			waiting = append(waiting, g)
		}
	}
	if len(waiting) == 0 {
		return
	}
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	now := time.Now()
	st := l.placementState()
	key := stateKey(st, placement.Spec{})
	if memo.tried && memo.key == key && now.Before(memo.until) {
		return
	}
	sortByPriority(waiting)
	var names []string
	for _, g := range waiting {
		names = append(names, g.GetSpec().GetName())
	}
	targets, _ := placeGroups(st, names, nil, l.leaseHolders(st, now))
	memo.tried, memo.key, memo.until = len(targets) == 0, key, now.Add(time.Minute)
	for _, g := range waiting {
		owner := targets[g.GetSpec().GetName()]
		if owner == "" {
			continue
		}
		if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: g.GetSpec().GetName(), ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner,
			State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "placed after waiting for a node",
		}}}); err != nil {
			l.log.Warn("placement not committed", "group", g.GetSpec().GetName(), "error", err)
			continue
		}
		l.leases.Assigned(g.GetSpec().GetName(), now)
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
