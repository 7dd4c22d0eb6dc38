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

// The test hands that act on a VM (CrashVM, HangVM, FillVM) take the setting and
// a driver that can, both, and do nothing otherwise.
func TestVMHandsDenied(t *testing.T) {
	for _, h := range vmHands {
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
			wantStatus(t, h.call(f.svc), codes.PermissionDenied, "fault injection is disabled")
		}
		if len(able.crashed) != 0 || len(able.hung) != 0 || len(able.filled) != 0 {
			t.Errorf("%s: crashed %v, hung %v, filled %v with fault injection off", h.name, able.crashed, able.hung, able.filled)
		}
	}
}

// A driver's refusal reaches the caller as NotFound or FailedPrecondition.
func TestVMHandsRefused(t *testing.T) {
	for _, h := range vmHands {
		for _, c := range []struct {
			err  error
			code codes.Code
			msg  string
		}{
			{fmt.Errorf("web/vm0: %w", driver.ErrNotFound), codes.NotFound, "vm web/vm0 is not on n1"},
			{fmt.Errorf("web/vm0 is stopped: %w", driver.ErrInvalidState), codes.FailedPrecondition, "web/vm0 is stopped"},
		} {
			f := newFixture(t, &fillDriver{crashDriver: crashDriver{err: c.err}, err: c.err}, true)
			wantStatus(t, h.call(f.svc), c.code, c.msg)
		}
	}
}

// vmHands call each test hand that acts on web/vm0.
var vmHands = []struct {
	name string
	call func(*Service) error
}{
	{"CrashVM", func(s *Service) error {
		_, err := s.CrashVM(context.Background(), &havenv1.CrashVMRequest{Group: "web", Vm: "vm0"})
		return err
	}},
	{"HangVM", func(s *Service) error {
		_, err := s.HangVM(context.Background(), &havenv1.HangVMRequest{Group: "web", Vm: "vm0"})
		return err
	}},
	{"FillVM", func(s *Service) error {
		_, err := s.FillVM(context.Background(), &havenv1.FillVMRequest{Group: "web", Vm: "vm0"})
		return err
	}},
}
