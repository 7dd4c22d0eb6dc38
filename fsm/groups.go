package fsm

import (
	"path"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A group's life in the state machine. Two things are kept apart, as Nomad
// and Kubernetes keep them apart:
//
//   - desired (run or stopped, with the index that asked): set by an
//     operator's create, start and stop, and by the leader only where it
//     decides on the operator's behalf;
//   - state, the observed state: set by the leader's placement (starting,
//     failed for want of a node) and by the owner's reports (online,
//     offline after a stop).
//
// Every command that acts on what it read is a compare-and-set: the
// leader's assignments and planned moves on (epoch, desired_index), an
// owner's report on (owner, epoch, desired_index). So a stop acknowledged
// to an operator can never be undone by a report or a decision made
// before it: they name an older desired_index and change nothing.

// Desired is g's desired state. Groups written before desired existed have
// none; for them it follows from what the owner was told to do.
func Desired(g *havenv1.Group) havenv1.DesiredState {
	if d := g.GetDesired(); d != havenv1.DesiredState_DESIRED_STATE_UNSPECIFIED {
		return d
	}
	switch g.GetState() {
	case havenv1.GroupState_GROUP_STATE_STARTING, havenv1.GroupState_GROUP_STATE_ONLINE, havenv1.GroupState_GROUP_STATE_FAILED:
		return havenv1.DesiredState_DESIRED_STATE_RUN
	case havenv1.GroupState_GROUP_STATE_STOPPING:
		if g.GetMoveTo() != "" {
			return havenv1.DesiredState_DESIRED_STATE_RUN
		}
	}
	return havenv1.DesiredState_DESIRED_STATE_STOPPED
}

// WantsRun reports whether g is meant to run.
func WantsRun(g *havenv1.Group) bool { return Desired(g) == havenv1.DesiredState_DESIRED_STATE_RUN }

// Active is an observed state in which the owner may run the group.
func Active(s havenv1.GroupState) bool {
	switch s {
	case havenv1.GroupState_GROUP_STATE_STARTING, havenv1.GroupState_GROUP_STATE_ONLINE, havenv1.GroupState_GROUP_STATE_STOPPING:
		return true
	}
	return false
}

// DiskPaths lists the cleaned paths of a spec's disks: the keys under which
// a disk belongs to one group.
func DiskPaths(spec *havenv1.GroupSpec) []string {
	var out []string
	for _, r := range spec.GetResources() {
		if d := r.GetDisk(); d != nil && d.GetPath() != "" {
			out = append(out, path.Clean(d.GetPath()))
		}
	}
	return out
}

func (s *state) createGroup(index uint64, c *havenv1.CreateGroupCommand, now time.Time) *Error {
	name := c.GetSpec().GetName()
	if name == "" {
		return errorf(CodeInvalidArgument, "group: name is empty")
	}
	if _, ok := s.groups[name]; ok {
		return errorf(CodeAlreadyExists, "group %q already exists", name)
	}
	disks := DiskPaths(c.GetSpec())
	for _, p := range disks {
		if holder, ok := s.disks[p]; ok {
			return errorf(CodeAlreadyExists, "group %q: disk %s belongs to group %q", name, p, holder)
		}
	}
	ts := timestamppb.New(now)
	spec := proto.Clone(c.GetSpec()).(*havenv1.GroupSpec)
	var entering []string
	for _, r := range spec.GetResources() {
		if d := r.GetDisk(); d != nil {
			d.Slot = 0 // ignored on input
			entering = append(entering, r.GetName())
		}
	}
	placeDisks(spec, entering...)
	s.setGroup(&havenv1.Group{
		Spec:  spec,
		State: havenv1.GroupState_GROUP_STATE_OFFLINE,
		// Epochs continue across a delete and a create under the same
		// name: a disk or a driver remembers the highest epoch that
		// claimed it, and every epoch of an earlier group of this name
		// was taken by a log entry before this one.
		Epoch:        index,
		CreateIndex:  index,
		ModifyIndex:  index,
		CreateTime:   ts,
		Desired:      havenv1.DesiredState_DESIRED_STATE_STOPPED,
		DesiredIndex: index,
		DesiredTime:  ts,
		StateTime:    ts,
	})
	for _, p := range disks {
		s.disks[p] = name
	}
	return nil
}

func (s *state) deleteGroup(c *havenv1.DeleteGroupCommand) *Error {
	g, ok := s.groups[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetName())
	}
	if g.GetOwner() != "" && Active(g.GetState()) {
		return errorf(CodeFailedPrecondition, "group %q is %s on %s: stop it first", c.GetName(), g.GetState(), g.GetOwner())
	}
	if WantsRun(g) {
		// Failed and waiting for a node: the leader would place it.
		return errorf(CodeFailedPrecondition, "group %q is meant to run (%s): stop it first", c.GetName(), g.GetState())
	}
	s.removeGroup(g)
	for _, p := range DiskPaths(g.GetSpec()) {
		if s.disks[p] == c.GetName() {
			delete(s.disks, p)
		}
	}
	return nil
}

// stale refuses a decision made on a view of g that is no longer current.
func stale(g *havenv1.Group, epoch, desiredIndex uint64) *Error {
	name := g.GetSpec().GetName()
	switch {
	case g.GetEpoch() != epoch:
		return errorf(CodeFailedPrecondition, "group %q is at epoch %d, not %d: decided on a stale view", name, g.GetEpoch(), epoch)
	case g.GetDesiredIndex() != desiredIndex:
		return errorf(CodeFailedPrecondition, "group %q: its desired state (%s) was set at index %d, not %d: decided on a stale view", name, Desired(g), g.GetDesiredIndex(), desiredIndex)
	}
	return nil
}

// store records g as changed at index; state_time follows the observed
// state, and a pending disk change whose VMs are gone is settled.
func (s *state) store(index uint64, old, g *havenv1.Group, now time.Time) {
	s.settleDiskChange(g, now)
	if g.GetState() != old.GetState() {
		g.StateTime = timestamppb.New(now)
	}
	g.ModifyIndex = index
	s.setGroup(g)
}

// setGroup files g under its name, in place of the record there, and
// keeps the name, change and owner indexes.
func (s *state) setGroup(g *havenv1.Group) {
	name := g.GetSpec().GetName()
	if old, ok := s.groups[name]; ok {
		s.unown(old)
		s.changed.Delete(change{old.GetModifyIndex(), name})
	} else {
		s.names.ReplaceOrInsert(name)
	}
	s.changed.ReplaceOrInsert(change{g.GetModifyIndex(), name})
	s.groups[name] = g
	if o := g.GetOwner(); o != "" {
		if s.owned[o] == nil {
			s.owned[o] = map[string]struct{}{}
		}
		s.owned[o][name] = struct{}{}
	}
}

// removeGroup forgets g and its place in the indexes (not its disks).
func (s *state) removeGroup(g *havenv1.Group) {
	name := g.GetSpec().GetName()
	s.unown(g)
	delete(s.groups, name)
	s.names.Delete(name)
	s.changed.Delete(change{g.GetModifyIndex(), name})
}

func (s *state) unown(g *havenv1.Group) {
	o := g.GetOwner()
	if o == "" {
		return
	}
	delete(s.owned[o], g.GetSpec().GetName())
	if len(s.owned[o]) == 0 {
		delete(s.owned, o)
	}
}

func (s *state) assignGroup(index uint64, c *havenv1.AssignGroupCommand, now time.Time) *Error {
	old, ok := s.groups[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetName())
	}
	if err := stale(old, c.GetExpectEpoch(), c.GetExpectDesiredIndex()); err != nil {
		return err
	}
	desired := Desired(old)
	if d := c.GetDesired(); d != havenv1.DesiredState_DESIRED_STATE_UNSPECIFIED {
		desired = d
	}
	if c.GetOwner() != "" && Active(c.GetState()) && desired != havenv1.DesiredState_DESIRED_STATE_RUN {
		return errorf(CodeFailedPrecondition, "group %q is stopped: it is not assigned to run", c.GetName())
	}
	old = s.endMoveOf(index, old, "the group was reassigned: "+c.GetReason(), outcomeRolledBack, now)
	g := proto.Clone(old).(*havenv1.Group)
	// Every assignment, even to the same node or to none, takes a new
	// epoch: whatever ran under the old one is fenced off.
	g.Epoch++
	g.Owner = c.GetOwner()
	g.MoveTo = ""
	g.State = c.GetState()
	g.StateReason = c.GetReason()
	if c.GetDesired() != havenv1.DesiredState_DESIRED_STATE_UNSPECIFIED {
		g.Desired, g.DesiredIndex, g.DesiredTime = c.GetDesired(), index, timestamppb.New(now)
	}
	if c.GetClearFailures() {
		g.Failures = nil
	}
	if f := c.GetFailure(); f != nil {
		g.Failures = withFailure(g.GetFailures(), f)
	}
	s.store(index, old, g, now)
	return nil
}

// assignGroups applies each assignment exactly as a command of its own
// would be, all at one index, so a batch and the same assignments sent
// one by one decide alike.
func (s *state) assignGroups(index uint64, c *havenv1.AssignGroupsCommand, now time.Time) []*Error {
	var errs []*Error
	for _, a := range c.GetAssignments() {
		errs = append(errs, s.assignGroup(index, a, now))
	}
	return errs
}

// maxFailures bounds Group.failures: one entry per node, the oldest
// dropped first.
const maxFailures = 16

func withFailure(fs []*havenv1.GroupFailure, f *havenv1.GroupFailure) []*havenv1.GroupFailure {
	out := slices.DeleteFunc(slices.Clone(fs), func(x *havenv1.GroupFailure) bool { return x.GetNode() == f.GetNode() })
	out = append(out, proto.Clone(f).(*havenv1.GroupFailure))
	if len(out) > maxFailures {
		out = out[len(out)-maxFailures:]
	}
	return out
}

// setGroupState is the leader's planned move: a group online and meant to
// run stops on its owner, to restart on move_to once offline.
func (s *state) setGroupState(index uint64, c *havenv1.SetGroupStateCommand, now time.Time) *Error {
	old, ok := s.groups[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetName())
	}
	if err := stale(old, c.GetEpoch(), c.GetExpectDesiredIndex()); err != nil {
		return err
	}
	switch {
	case c.GetState() != havenv1.GroupState_GROUP_STATE_STOPPING || c.GetMoveTo() == "":
		return errorf(CodeInvalidArgument, "group %q: a planned move stops the group and names its target", c.GetName())
	case !WantsRun(old):
		return errorf(CodeFailedPrecondition, "group %q is stopped: there is nothing to move", c.GetName())
	case old.GetOperation() != "":
		return errorf(CodeFailedPrecondition, "group %q: move %s is in flight", c.GetName(), old.GetOperation())
	case old.GetState() == havenv1.GroupState_GROUP_STATE_STOPPING && old.GetMoveTo() == c.GetMoveTo():
		return nil
	case old.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE:
		return errorf(CodeFailedPrecondition, "group %q is %s: only an online group is moved", c.GetName(), old.GetState())
	}
	g := proto.Clone(old).(*havenv1.Group)
	g.State = c.GetState()
	g.StateReason = c.GetReason()
	g.MoveTo = c.GetMoveTo()
	s.store(index, old, g, now)
	return nil
}

// stopGroup is an operator's stop. It applies whatever the epoch: the
// intent is the operator's, and the owner finds it at its next look.
func (s *state) stopGroup(index uint64, c *havenv1.StopGroupCommand, now time.Time) *Error {
	old, ok := s.groups[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetName())
	}
	if !WantsRun(old) && old.GetMoveTo() == "" && old.GetDesired() != havenv1.DesiredState_DESIRED_STATE_UNSPECIFIED {
		return nil
	}
	old = s.endMoveOf(index, old, "the group was stopped on request", outcomeCancelled, now)
	g := proto.Clone(old).(*havenv1.Group)
	g.Desired, g.DesiredIndex, g.DesiredTime = havenv1.DesiredState_DESIRED_STATE_STOPPED, index, timestamppb.New(now)
	g.MoveTo = ""
	reason := c.GetReason()
	if reason == "" {
		reason = "stop requested"
	}
	switch {
	case g.GetOwner() != "" && Active(g.GetState()):
		if old.GetMoveTo() != "" {
			reason += "; planned move cancelled"
		}
		g.State, g.StateReason = havenv1.GroupState_GROUP_STATE_STOPPING, reason
	default:
		// Nothing runs (offline, or failed and waiting for a node).
		g.State, g.StateReason = havenv1.GroupState_GROUP_STATE_OFFLINE, reason
	}
	s.store(index, old, g, now)
	return nil
}

// reportGroup applies an owner's observation. The owner acted on the
// group at (epoch, desired_index); if either moved on since, the report
// describes a past the cluster has left, and changes nothing. Only the
// transitions an executor makes are accepted: starting to online, and
// stopping to offline. A failure is the leader's to act on (it reassigns
// the group), so it never arrives here.
func (s *state) reportGroup(index uint64, c *havenv1.ReportGroupCommand, now time.Time) *Error {
	old, ok := s.groups[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetName())
	}
	if old.GetOwner() != c.GetNode() {
		return errorf(CodeFailedPrecondition, "group %q is owned by %q, not %q", c.GetName(), old.GetOwner(), c.GetNode())
	}
	if err := stale(old, c.GetEpoch(), c.GetDesiredIndex()); err != nil {
		return err
	}
	from, to := old.GetState(), c.GetState()
	switch {
	case to == havenv1.GroupState_GROUP_STATE_ONLINE && WantsRun(old) &&
		(from == havenv1.GroupState_GROUP_STATE_STARTING || from == havenv1.GroupState_GROUP_STATE_ONLINE):
	case to == havenv1.GroupState_GROUP_STATE_OFFLINE && from == havenv1.GroupState_GROUP_STATE_STOPPING:
	case to == havenv1.GroupState_GROUP_STATE_OFFLINE && from == to:
		// A retried report whose first copy was applied.
		return nil
	default:
		return errorf(CodeFailedPrecondition, "group %q is %s (desired %s): a report of %s does not follow", c.GetName(), from, Desired(old), to)
	}
	if op := s.ops[old.GetOperation()]; to == havenv1.GroupState_GROUP_STATE_ONLINE && InFlight(op) && op.GetPhase() == phaseCommitted && c.GetEpoch() == op.GetTargetEpoch() {
		// The target runs the group: the move is done.
		s.finishMove(index, op, outcomeCompleted, "running on "+op.GetTarget(), now)
		old = s.groups[c.GetName()]
	}
	if from == to && c.GetReason() == old.GetStateReason() {
		return nil
	}
	g := proto.Clone(old).(*havenv1.Group)
	g.State, g.StateReason = to, c.GetReason()
	s.store(index, old, g, now)
	return nil
}
