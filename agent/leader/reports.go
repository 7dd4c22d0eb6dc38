package leader

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Report applies an owner's report at the epoch and desired index
// it acted on; the FSM refuses one that no longer follows (the owner
// raced an operator's stop, or the group moved on). A group that failed
// on its owner (its start kept failing, its disk fenced it, it crashed
// past its restart policy) moves to another node it has not failed on
// lately, or is marked failed with the reason when there is none.
func (l *Leader) Report(req *havenv1.ReportGroupRequest) error {
	t := l.current()
	if t == nil {
		return ErrNotLeader
	}
	g := l.state.Group(req.GetName())
	if g == nil {
		return refuse(ErrNotFound, "group %q not found", req.GetName())
	}
	if g.GetOwner() != req.GetNode() || g.GetEpoch() != req.GetEpoch() {
		return refuse(ErrConflict, "group %q is owned by %q at epoch %d, not %q at %d", req.GetName(), g.GetOwner(), g.GetEpoch(), req.GetNode(), req.GetEpoch())
	}
	if req.GetState() != havenv1.GroupState_GROUP_STATE_FAILED {
		return l.apply(&havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
			Name: req.GetName(), Node: req.GetNode(), Epoch: req.GetEpoch(), DesiredIndex: req.GetDesiredIndex(), State: req.GetState(), Reason: req.GetReason(),
		}}})
	}
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	now := time.Now()
	failure := &havenv1.GroupFailure{Node: req.GetNode(), Time: timestamppb.New(now), Reason: req.GetReason()}
	cmd := &havenv1.AssignGroupCommand{Name: req.GetName(), ExpectEpoch: req.GetEpoch(), ExpectDesiredIndex: req.GetDesiredIndex(), Failure: failure}
	if !fsm.WantsRun(g) {
		cmd.State, cmd.Reason = havenv1.GroupState_GROUP_STATE_OFFLINE, req.GetReason()+"; stopped"
	} else {
		pst := l.placementState()
		targets, why := placeGroups(pst, []string{req.GetName()}, []string{req.GetNode()}, l.leaseHolders(pst, now))
		cmd.Owner, cmd.State, cmd.Reason = targets[req.GetName()], havenv1.GroupState_GROUP_STATE_STARTING, req.GetReason()+"; failed over"
		if cmd.Owner == "" {
			cmd.State, cmd.Reason = havenv1.GroupState_GROUP_STATE_FAILED, req.GetReason()+"; no other node can host it: "+why[req.GetName()]
		}
	}
	if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: cmd}}); err != nil {
		return err
	}
	l.log.Warn("group failed on its owner", "group", req.GetName(), "node", req.GetNode(), "reason", req.GetReason(), "to", cmd.Owner, "state", cmd.State)
	if cmd.Owner != "" {
		l.leases.Assigned(req.GetName(), now)
		t.moves.record(req.GetName(), req.GetNode(), cmd.Owner, now)
	}
	return nil
}
