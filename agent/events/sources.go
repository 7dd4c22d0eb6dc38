package events

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// MemberFailed is the event of a member that stopped answering probes;
// the other membership events are "member-join", "member-update" and
// "member-leave", after heartbeat's event types.
const MemberFailed Kind = "member-failed"

// Kinds that are not named after a command.
const (
	// NodeFenced: the leader found a node's lease run out unrenewed and
	// takes its groups off it; the failover's own events follow, at the
	// same index.
	NodeFenced Kind = "node-fenced"
	// Failover: a group taken off a fenced node, to its new owner (or to
	// no owner, with the reason).
	Failover Kind = "failover"
	// AdmissionRefused: the leader refused a create, start or move to keep
	// the reserve or for want of room. The leader's own: not in the log.
	AdmissionRefused Kind = "admission-refused"
	// VMFrozen and VMThawed: a VM of this node froze at its lease end and
	// ran again on a later grant. The node's own: not in the log.
	VMFrozen Kind = "vm-frozen"
	VMThawed Kind = "vm-thawed"
)

// FromMembership is the event of a gossip membership change.
func FromMembership(e heartbeat.Event) Event {
	return Event{Kind: Kind("member-" + e.Type.String()), Time: time.Now(), Node: e.Member.Name, State: e.Member.State.String()}
}

// Observe wraps f so that every command it applies is published to b.
// The FSM itself stays free of it: it is pure, and replays the same log
// the same way with or without subscribers.
// Every apply is also counted in m (nil counts nothing).
func Observe(f *fsm.FSM, b *Broker, m *metrics.Metrics) *Observed {
	return &Observed{FSM: f, b: b, m: m}
}

// Observed is an FSM whose applies are published.
type Observed struct {
	*fsm.FSM
	b       *Broker
	m       *metrics.Metrics
	applied atomic.Pointer[func()]
}

// OnApply has f called after every command applied, before the next; f
// must not block. The executor is woken so: a move's commit reaches the
// target's VM at once, not at its next look.
func (o *Observed) OnApply(f func()) { o.applied.Store(&f) }

// Apply implements raft.FSM.
func (o *Observed) Apply(l *raft.Log) any {
	res := o.FSM.Apply(l)
	// A duplicate request changed nothing: no event.
	if r, ok := res.(*fsm.Result); ok && r.Command.GetCmd() != nil && !r.Duplicate {
		for _, e := range fromCommand(l.Index, r, o.FSM.Operation) {
			o.b.Publish(e)
		}
		o.m.Applied(string(kindOf(r.Command)))
	}
	if f := o.applied.Load(); f != nil {
		(*f)()
	}
	return res
}

// Restore implements raft.FSM. A snapshot installed (a follower that fell
// behind the leader's log) changes what this node runs as much as the
// commands it stands for, so it calls OnApply's f too: a steady executor
// would otherwise see the change only at its safety pass.
func (o *Observed) Restore(rc io.ReadCloser) error {
	err := o.FSM.Restore(rc)
	if f := o.applied.Load(); f != nil {
		(*f)()
	}
	return err
}

// fromCommand is the events of a command the FSM applied (or refused),
// named after the command: "create-group", "assign-group", ... A batch of
// assignments is one "assign-group" event per assignment (a "failover"
// event, after a "node-fenced" per node, when the batch is a failover's), at the batch's
// index, each with its own outcome.
func fromCommand(index uint64, r *fsm.Result, operation func(id string) *havenv1.Operation) []Event {
	c := r.Command
	if b := c.GetAssignGroups(); b != nil {
		var out []Event
		for _, f := range b.GetFences() {
			out = append(out, Event{Index: index, Time: c.GetTime().AsTime(), Kind: NodeFenced, Node: f.GetNode(),
				Reason: fmt.Sprintf("no lease since %s, fenced from %s: %d group(s) taken off (%s)",
					stamp(f.GetLastGrant()), stamp(f.GetFencedAt()), len(f.GetGroups()), strings.Join(f.GetGroups(), ", "))})
		}
		for i, a := range b.GetAssignments() {
			e := assignEvent(index, c, a)
			if len(b.GetFences()) > 0 {
				e.Kind = Failover
			}
			if i < len(r.Items) && r.Items[i] != nil {
				e.Refused = r.Items[i].Msg
			}
			out = append(out, e)
		}
		return out
	}
	e := Event{Index: index, Time: c.GetTime().AsTime(), Kind: kindOf(c)}
	switch x := c.GetCmd().(type) {
	case *havenv1.Command_CreateGroup:
		e.Group = x.CreateGroup.GetSpec().GetName()
	case *havenv1.Command_DeleteGroup:
		e.Group = x.DeleteGroup.GetName()
	case *havenv1.Command_AssignGroup:
		e = assignEvent(index, c, x.AssignGroup)
	case *havenv1.Command_SetGroupState:
		s := x.SetGroupState
		e.Group, e.State, e.Reason, e.Epoch = s.GetName(), s.GetState().String(), s.GetReason(), s.GetEpoch()
	case *havenv1.Command_StopGroup:
		e.Group, e.Reason = x.StopGroup.GetName(), x.StopGroup.GetReason()
	case *havenv1.Command_ReportGroup:
		r := x.ReportGroup
		e.Group, e.Node, e.State, e.Reason, e.Epoch = r.GetName(), r.GetNode(), r.GetState().String(), r.GetReason(), r.GetEpoch()
	case *havenv1.Command_UpsertNode:
		e.Node, e.State = x.UpsertNode.GetNode().GetName(), x.UpsertNode.GetNode().GetStatus().String()
	case *havenv1.Command_SetNodeStatus:
		e.Node, e.State = x.SetNodeStatus.GetName(), x.SetNodeStatus.GetStatus().String()
	case *havenv1.Command_SetNodeDrain:
		e.Node, e.State = x.SetNodeDrain.GetName(), fmt.Sprintf("draining=%t", x.SetNodeDrain.GetDraining())
	case *havenv1.Command_BeginMove:
		op := x.BeginMove.GetOperation()
		e.Group, e.Node, e.Epoch, e.State = op.GetGroup(), op.GetSource(), x.BeginMove.GetExpectEpoch(), "SETUP"
		e.Reason = fmt.Sprintf("%s %s move %s to %s", op.GetCause(), moveKind(op.GetKind()), op.GetId(), op.GetTarget())
	case *havenv1.Command_MoveProgress:
		moveEvent(&e, operation(x.MoveProgress.GetId()))
		e.State = strings.TrimPrefix(x.MoveProgress.GetPhase().String(), "OPERATION_PHASE_")
	case *havenv1.Command_CommitMove:
		moveEvent(&e, operation(x.CommitMove.GetId()))
	case *havenv1.Command_EndMove:
		moveEvent(&e, operation(x.EndMove.GetId()))
		e.State, e.Reason = strings.TrimPrefix(x.EndMove.GetOutcome().String(), "OPERATION_OUTCOME_"), x.EndMove.GetReason()
	case *havenv1.Command_AttachDisk:
		d := x.AttachDisk.GetDisk()
		e.Group, e.Epoch = x.AttachDisk.GetGroup(), x.AttachDisk.GetExpectEpoch()
		e.Reason = fmt.Sprintf("attach disk %s (%s)", d.GetName(), d.GetDisk().GetPath())
	case *havenv1.Command_DetachDisk:
		e.Group, e.Epoch = x.DetachDisk.GetGroup(), x.DetachDisk.GetExpectEpoch()
		e.Reason = "detach disk " + x.DetachDisk.GetDisk()
	case *havenv1.Command_SetNodeChecks:
		e.Node = x.SetNodeChecks.GetName()
		var ds []string
		for _, r := range x.SetNodeChecks.GetCannotRun() {
			ds = append(ds, r.GetGroup()+": "+r.GetReason())
		}
		e.Reason = "cannot run " + strconv.Itoa(len(ds)) + " group(s)"
		if len(ds) > 0 {
			e.Reason += ": " + strings.Join(ds, "; ")
		}
	case *havenv1.Command_BootstrapAcl:
		e.Reason = tokenReason(x.BootstrapAcl.GetToken())
	case *havenv1.Command_CreateAclToken:
		e.Reason = tokenReason(x.CreateAclToken.GetToken())
	case *havenv1.Command_RevokeAclToken:
		e.Reason = "token " + x.RevokeAclToken.GetAccessorId()
	case *havenv1.Command_EndDiskChange:
		c := x.EndDiskChange
		e.Group, e.Node, e.Epoch, e.Reason = c.GetGroup(), c.GetNode(), c.GetEpoch(), c.GetReason()
		e.State = strings.TrimPrefix(c.GetOutcome().String(), "DISK_CHANGE_OUTCOME_")
	}
	if r.Err != nil {
		e.Refused = r.Err.Msg
	}
	return []Event{e}
}

// tokenReason names a token by its name, accessor and role, never its
// hash.
func tokenReason(t *havenv1.AclToken) string {
	return fmt.Sprintf("token %s (%s), role %s", t.GetName(), t.GetAccessorId(), strings.ToLower(strings.TrimPrefix(t.GetRole().String(), "ACL_ROLE_")))
}

func assignEvent(index uint64, c *havenv1.Command, a *havenv1.AssignGroupCommand) Event {
	return Event{Index: index, Time: c.GetTime().AsTime(), Kind: "assign-group", Group: a.GetName(), Node: a.GetOwner(),
		State: a.GetState().String(), Reason: a.GetReason(), Epoch: a.GetExpectEpoch() + 1}
}

// stamp is a time in an event's reason: UTC, to the millisecond.
func stamp(t interface{ AsTime() time.Time }) string {
	return t.AsTime().UTC().Format("15:04:05.000")
}

// kindOf names a command's event after its oneof field: assign_group ->
// assign-group.
func kindOf(c *havenv1.Command) Kind {
	m := c.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("cmd"))
	if fd == nil {
		return "unknown"
	}
	return Kind(strings.ReplaceAll(string(fd.Name()), "_", "-"))
}

// moveEvent fills e from the move it is about, as applied: the group, the
// target when committed (at the target epoch), the source before.
func moveEvent(e *Event, op *havenv1.Operation) {
	if op == nil {
		return
	}
	e.Group, e.Node, e.Epoch = op.GetGroup(), op.GetSource(), op.GetSourceEpoch()
	e.State = strings.TrimPrefix(op.GetPhase().String(), "OPERATION_PHASE_")
	e.Reason = fmt.Sprintf("%s move %s to %s", moveKind(op.GetKind()), op.GetId(), op.GetTarget())
	if fsm.Committed(op) {
		e.Node, e.Epoch = op.GetTarget(), op.GetTargetEpoch()
	}
}

func moveKind(k havenv1.MoveKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "MOVE_KIND_"))
}
