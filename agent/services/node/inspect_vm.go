package node

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// InspectVM reports a VM of this node's driver and a checksum of its
// memory read now, for tests of what a move did with it.
func (s *Service) InspectVM(_ context.Context, req *havenv1.InspectVMRequest) (*havenv1.InspectVMResponse, error) {
	fi, err := s.faultInjector()
	if err != nil {
		return nil, err
	}
	id := driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()}
	st, err := s.cfg.Driver.Status(id)
	if errors.Is(err, driver.ErrNotFound) {
		return nil, s.vmError(id, err)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &havenv1.InspectVMResponse{State: st.State.String(), Epoch: st.Epoch, Counter: st.Counter}
	switch sum, err := fi.MemoryChecksum(id); {
	case err == nil:
		resp.Checksum = &sum
	case errors.Is(err, driver.ErrNotFound), errors.Is(err, driver.ErrInvalidState):
		// Forgotten since, or no memory to read: no checksum.
	default:
		return nil, status.Error(codes.Internal, err.Error())
	}
	return resp, nil
}
