package cluster

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/services"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// GetOperation reads one move.
func (s *Service) GetOperation(_ context.Context, req *havenv1.GetOperationRequest) (*havenv1.GetOperationResponse, error) {
	if req.GetId() == "" {
		return nil, services.Invalid("id: is empty")
	}
	meta, err := s.consistent(req.GetConsistent())
	if err != nil {
		return nil, err
	}
	op := s.cfg.State.Operation(req.GetId())
	if op == nil {
		return nil, status.Errorf(codes.NotFound, "operation %s not found (finished ones are kept only so long)", req.GetId())
	}
	return &havenv1.GetOperationResponse{Operation: op, Meta: meta}, nil
}

// ListOperations lists the moves kept, oldest first.
func (s *Service) ListOperations(_ context.Context, req *havenv1.ListOperationsRequest) (*havenv1.ListOperationsResponse, error) {
	meta, err := s.consistent(req.GetConsistent())
	if err != nil {
		return nil, err
	}
	resp := &havenv1.ListOperationsResponse{Meta: meta}
	for _, op := range s.cfg.State.Operations() {
		if req.GetGroup() == "" || op.GetGroup() == req.GetGroup() {
			resp.Operations = append(resp.Operations, op)
		}
	}
	return resp, nil
}

// CancelOperation rolls back a move that has not committed.
func (s *Service) CancelOperation(_ context.Context, req *havenv1.CancelOperationRequest) (*havenv1.CancelOperationResponse, error) {
	if req.GetId() == "" {
		return nil, services.Invalid("id: is empty")
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	op, err := s.cfg.Leader.CancelOperation(req.GetId(), id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.CancelOperationResponse{Operation: op}, nil
}
