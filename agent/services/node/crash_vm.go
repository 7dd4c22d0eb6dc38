package node

import (
	"context"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// CrashVM makes a VM on this node crash, for tests of the restart policy.
func (s *Service) CrashVM(_ context.Context, req *havenv1.CrashVMRequest) (*havenv1.CrashVMResponse, error) {
	fi, err := s.faultInjector()
	if err != nil {
		return nil, err
	}
	id := driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()}
	if err := fi.Crash(id, "injected crash"); err != nil {
		return nil, s.vmError(id, err)
	}
	return &havenv1.CrashVMResponse{}, nil
}
