package agent

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func (s *clusterService) DrainNode(ctx context.Context, req *havenv1.DrainNodeRequest) (*havenv1.DrainNodeResponse, error) {
	id, err := checkDrainRequest(req.GetNode(), req.GetRequestId())
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.DrainNodeResponse, error) {
			return c.DrainNode(ctx, req)
		})
	}
	if err := s.a.commitDrain(id, req.GetNode(), true); err != nil {
		return nil, err
	}
	resp := &havenv1.DrainNodeResponse{Node: s.a.fsm.Node(req.GetNode())}
	for _, g := range s.a.fsm.Groups() {
		if g.GetOwner() == req.GetNode() && fsm.Active(g.GetState()) {
			resp.Groups = append(resp.Groups, g.GetSpec().GetName())
		}
	}
	return resp, nil
}

func (s *clusterService) ResumeNode(ctx context.Context, req *havenv1.ResumeNodeRequest) (*havenv1.ResumeNodeResponse, error) {
	id, err := checkDrainRequest(req.GetNode(), req.GetRequestId())
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.ResumeNodeResponse, error) {
			return c.ResumeNode(ctx, req)
		})
	}
	if err := s.a.commitDrain(id, req.GetNode(), false); err != nil {
		return nil, err
	}
	return &havenv1.ResumeNodeResponse{Node: s.a.fsm.Node(req.GetNode())}, nil
}

func checkDrainRequest(node, requestID string) (string, error) {
	if !fsm.ValidName(node) {
		return "", status.Errorf(codes.InvalidArgument, "node: %q is not a valid node name", node)
	}
	return newRequestID(requestID)
}

func (a *Agent) commitDrain(id, node string, draining bool) error {
	if a.fsm.Node(node) == nil {
		return status.Errorf(codes.NotFound, "node %q not found", node)
	}
	return a.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: node, Draining: draining}}})
}
