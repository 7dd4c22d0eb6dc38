package node

import (
	"context"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// FillVM implements haven.v1.NodeService: a test's hand on a guest, behind
// the fault-injection setting like CrashVM.
func (s *Service) FillVM(_ context.Context, req *havenv1.FillVMRequest) (*havenv1.FillVMResponse, error) {
	fi, err := s.faultInjector()
	if err != nil {
		return nil, err
	}
	id := driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()}
	n, err := fi.FillMemory(id)
	if err != nil {
		return nil, s.vmError(id, err)
	}
	return &havenv1.FillVMResponse{Bytes: n}, nil
}
