package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// MoveGroup starts a move of a running group.
func (s *Service) MoveGroup(_ context.Context, req *havenv1.MoveGroupRequest) (*havenv1.MoveGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	switch {
	case req.GetTarget() != "" && !fsm.ValidName(req.GetTarget()):
		return nil, services.Invalid("target: %q is not a valid node name", req.GetTarget())
	case req.GetDowntimeTarget() != nil && (!req.GetDowntimeTarget().IsValid() || req.GetDowntimeTarget().AsDuration() <= 0):
		return nil, services.Invalid("downtime_target: must be a positive duration")
	case req.GetBandwidthLimit() < 0:
		return nil, services.Invalid("bandwidth_limit: %d must not be negative", req.GetBandwidthLimit())
	case req.GetChannels() > leader.MaxChannels:
		return nil, services.Invalid("channels: %d is more than %d", req.GetChannels(), leader.MaxChannels)
	}
	if _, ok := havenv1.MoveKind_name[int32(req.GetKind())]; !ok {
		return nil, services.Invalid("kind: %d is not a kind of move", req.GetKind())
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	op, err := s.cfg.Leader.MoveGroup(leader.MoveRequest{
		Group: req.GetName(), Target: req.GetTarget(), Kind: req.GetKind(),
		DowntimeTarget: req.GetDowntimeTarget().AsDuration(), BandwidthLimit: req.GetBandwidthLimit(),
		Channels: req.GetChannels(), Postcopy: req.GetPostcopy(),
		Cause: "operator", RequestID: id,
	})
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.MoveGroupResponse{Operation: op}, nil
}
