package node

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestCrashVM(t *testing.T) {
	d := &crashDriver{}
	f := newFixture(t, d, true)
	if _, err := f.svc.CrashVM(context.Background(), &havenv1.CrashVMRequest{Group: "web", Vm: "vm0"}); err != nil {
		t.Fatal(err)
	}
	if len(d.crashed) != 1 || d.crashed[0] != (driver.VMID{Group: "web", Resource: "vm0"}) || d.reasons[0] != "injected crash" {
		t.Errorf("driver crashed %v (%q), want web/vm0, an injected crash", d.crashed, d.reasons)
	}
}

// Crashing VMs on purpose is for tests: it takes the setting and a driver
// that can, both.
func TestCrashVMDenied(t *testing.T) {
	able := &crashDriver{}
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
		_, err := f.svc.CrashVM(context.Background(), &havenv1.CrashVMRequest{Group: "web", Vm: "vm0"})
		wantStatus(t, err, codes.PermissionDenied, "fault injection is disabled")
	}
	if len(able.crashed) != 0 {
		t.Errorf("crashed %v with fault injection off", able.crashed)
	}
}

func TestCrashVMRefused(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{fmt.Errorf("web/vm0: %w", driver.ErrNotFound), codes.NotFound, "vm web/vm0 is not on n1"},
		{fmt.Errorf("web/vm0 is stopped: %w", driver.ErrInvalidState), codes.FailedPrecondition, "web/vm0 is stopped"},
	} {
		f := newFixture(t, &crashDriver{err: c.err}, true)
		_, err := f.svc.CrashVM(context.Background(), &havenv1.CrashVMRequest{Group: "web", Vm: "vm0"})
		wantStatus(t, err, c.code, c.msg)
	}
}
