package node

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// CrashVM makes a VM on this node crash, for tests of the restart policy.
func (s *Service) CrashVM(_ context.Context, req *havenv1.CrashVMRequest) (*havenv1.CrashVMResponse, error) {
	fi, ok := s.cfg.Driver.(driver.FaultInjector)
	if !s.cfg.FaultInjection || !ok {
		return nil, errNoFaultInjection
	}
	if err := fi.Crash(driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()}, "injected crash"); err != nil {
		if errors.Is(err, driver.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "vm %s/%s is not on %s", req.GetGroup(), req.GetVm(), s.cfg.Name)
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &havenv1.CrashVMResponse{}, nil
}
