package node

import (
	"context"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// HangVM makes a guest on this node lock up, for tests of guest health:
// only its watchdog notices.
func (s *Service) HangVM(_ context.Context, req *havenv1.HangVMRequest) (*havenv1.HangVMResponse, error) {
	fi, err := s.faultInjector()
	if err != nil {
		return nil, err
	}
	id := driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()}
	if err := fi.Hang(id); err != nil {
		return nil, s.vmError(id, err)
	}
	return &havenv1.HangVMResponse{}, nil
}
