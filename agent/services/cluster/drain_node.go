package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// DrainNode marks a node draining and lists the groups that will move off
// it.
func (s *Service) DrainNode(_ context.Context, req *havenv1.DrainNodeRequest) (*havenv1.DrainNodeResponse, error) {
	id, err := checkDrainRequest(req.GetNode(), req.GetRequestId())
	if err != nil {
		return nil, err
	}
	n, err := s.cfg.Leader.SetDrain(req.GetNode(), true, id)
	if err != nil {
		return nil, s.status(err)
	}
	resp := &havenv1.DrainNodeResponse{Node: n}
	for _, g := range s.cfg.State.Groups() {
		if g.GetOwner() == req.GetNode() && fsm.Active(g.GetState()) {
			resp.Groups = append(resp.Groups, g.GetSpec().GetName())
		}
	}
	return resp, nil
}

func checkDrainRequest(node, requestID string) (string, error) {
	if !fsm.ValidName(node) {
		return "", services.Invalid("node: %q is not a valid node name", node)
	}
	return services.RequestID(requestID)
}
