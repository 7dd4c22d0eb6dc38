package node

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fillDriver is a fault-injecting driver that records what it filled.
type fillDriver struct {
	crashDriver
	err    error
	filled []driver.VMID
}

func (d *fillDriver) FillMemory(id driver.VMID) (int64, error) {
	d.filled = append(d.filled, id)
	return 1 << 30, d.err
}

func TestFillVM(t *testing.T) {
	d := &fillDriver{}
	f := newFixture(t, d, true)
	resp, err := f.svc.FillVM(context.Background(), &havenv1.FillVMRequest{Group: "web", Vm: "vm0"})
	if err != nil || resp.GetBytes() != 1<<30 {
		t.Fatalf("FillVM = %v, %v", resp, err)
	}
	if len(d.filled) != 1 || d.filled[0] != (driver.VMID{Group: "web", Resource: "vm0"}) {
		t.Errorf("driver filled %v, want web/vm0", d.filled)
	}
}

// Like CrashVM, it takes the setting and a driver that can.
func TestFillVMDenied(t *testing.T) {
	able := &fillDriver{}
	for _, c := range []struct {
		name    string
		drv     driver.Hypervisor
		enabled bool
	}{
		{"setting off", able, false},
		{"driver cannot", plainDriver{}, true},
		{"no driver", nil, true},
	} {
		f := newFixture(t, c.drv, c.enabled)
		_, err := f.svc.FillVM(context.Background(), &havenv1.FillVMRequest{Group: "web", Vm: "vm0"})
		wantStatus(t, err, codes.PermissionDenied, "fault injection is disabled")
	}
	if len(able.filled) != 0 {
		t.Errorf("filled %v with fault injection off", able.filled)
	}
}

func TestFillVMRefused(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{fmt.Errorf("web/vm0: %w", driver.ErrNotFound), codes.NotFound, "vm web/vm0 is not on n1"},
		{fmt.Errorf("web/vm0 is frozen: %w", driver.ErrInvalidState), codes.FailedPrecondition, "web/vm0 is frozen"},
	} {
		f := newFixture(t, &fillDriver{err: c.err}, true)
		_, err := f.svc.FillVM(context.Background(), &havenv1.FillVMRequest{Group: "web", Vm: "vm0"})
		wantStatus(t, err, c.code, c.msg)
	}
}
