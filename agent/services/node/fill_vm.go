package node

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// MemoryFiller is a driver that can fill a guest's memory with data (the
// sim's FillMemory), for benchmarks of moves.
type MemoryFiller interface {
	FillMemory(id driver.VMID) (int64, error)
}

// FillVM implements haven.v1.NodeService: it is fault injection's kin, a
// test's hand on a guest, and takes the same setting.
func (s *Service) FillVM(_ context.Context, req *havenv1.FillVMRequest) (*havenv1.FillVMResponse, error) {
	f, ok := s.cfg.Driver.(MemoryFiller)
	if !s.cfg.FaultInjection || !ok {
		return nil, status.Error(codes.PermissionDenied, "filling guest memory is disabled (sim.fault_injection)")
	}
	n, err := f.FillMemory(driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()})
	if err != nil {
		if errors.Is(err, driver.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "vm %s/%s is not on %s", req.GetGroup(), req.GetVm(), s.cfg.Name)
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &havenv1.FillVMResponse{Bytes: n}, nil
}
