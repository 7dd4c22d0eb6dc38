package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// DetachDisk has the leader take a disk out of the group, waiting for the
// owner to hot-unplug it from a running group's VMs within the call's
// deadline, as AttachDisk does.
func (s *Service) DetachDisk(ctx context.Context, req *havenv1.DetachDiskRequest) (*havenv1.DetachDiskResponse, error) {
	if err := checkDiskGroup(req.GetGroup()); err != nil {
		return nil, err
	}
	switch d := req.GetDisk(); {
	case d == "":
		return nil, services.Invalid("disk: is empty")
	case !fsm.ValidName(d):
		return nil, services.Invalid("disk: %q is not a valid resource name", d)
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	wctx, cancel := diskWait(ctx)
	defer cancel()
	g, dc, err := s.cfg.Leader.DetachDisk(wctx, req.GetGroup(), req.GetDisk(), id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.DetachDiskResponse{Group: g, Change: dc}, nil
}
