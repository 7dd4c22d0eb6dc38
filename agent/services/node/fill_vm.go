package node

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// FillVM implements haven.v1.NodeService: a test's hand on a guest, behind
// the fault-injection setting like CrashVM.
func (s *Service) FillVM(_ context.Context, req *havenv1.FillVMRequest) (*havenv1.FillVMResponse, error) {
	fi, ok := s.cfg.Driver.(driver.FaultInjector)
	if !s.cfg.FaultInjection || !ok {
		return nil, errNoFaultInjection
	}
	n, err := fi.FillMemory(driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()})
	if err != nil {
		if errors.Is(err, driver.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "vm %s/%s is not on %s", req.GetGroup(), req.GetVm(), s.cfg.Name)
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &havenv1.FillVMResponse{Bytes: n}, nil
}
