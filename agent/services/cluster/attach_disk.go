package cluster

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// AttachDisk checks the disk and has the leader add it to the group,
// waiting for the owner to hot-plug it into a running group's VMs within
// the call's deadline (see diskWait).
func (s *Service) AttachDisk(ctx context.Context, req *havenv1.AttachDiskRequest) (*havenv1.AttachDiskResponse, error) {
	if err := checkDiskGroup(req.GetGroup()); err != nil {
		return nil, err
	}
	if err := fsm.ValidateDiskResource(req.GetDisk()); err != nil {
		return nil, services.Invalid("%v", err)
	}
	disk := proto.Clone(req.GetDisk()).(*havenv1.Resource)
	disk.Kind = havenv1.ResourceKind_RESOURCE_KIND_DISK
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	wctx, cancel := diskWait(ctx)
	defer cancel()
	g, dc, err := s.cfg.Leader.AttachDisk(wctx, req.GetGroup(), disk, id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.AttachDiskResponse{Group: g, Change: dc}, nil
}

// MaxDiskWait bounds how long AttachDisk and DetachDisk wait for a running
// group's owner to apply the change.
const MaxDiskWait = 30 * time.Second

// diskWait is how long a disk change may wait for the owner: up to
// MaxDiskWait, and ending a tenth (at least 200 ms) before the caller's
// deadline, so that the caller hears "pending" rather than its own
// timeout.
func diskWait(ctx context.Context) (context.Context, context.CancelFunc) {
	d := MaxDiskWait
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		d = min(d, left-max(left/10, 200*time.Millisecond))
	}
	return context.WithTimeout(ctx, max(d, 0))
}

func checkDiskGroup(name string) error {
	if name == "" {
		return services.Invalid("group: is empty")
	}
	if !fsm.ValidName(name) {
		return services.Invalid("group: %q is not a valid group name", name)
	}
	return nil
}
