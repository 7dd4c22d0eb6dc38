package node

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// inspectDriver has one VM, web/vm0, in the state st, whose memory hashes
// to sum or fails with sumErr.
type inspectDriver struct {
	crashDriver
	st     driver.Status
	sum    uint64
	sumErr error
}

func (d *inspectDriver) Status(id driver.VMID) (driver.Status, error) {
	if id != d.st.ID {
		return driver.Status{}, fmt.Errorf("%s: %w", id, driver.ErrNotFound)
	}
	return d.st, nil
}

func (d *inspectDriver) MemoryChecksum(driver.VMID) (uint64, error) { return d.sum, d.sumErr }

func TestInspectVM(t *testing.T) {
	vm0 := driver.VMID{Group: "web", Resource: "vm0"}
	for _, c := range []struct {
		name   string
		d      *inspectDriver
		state  string
		hasSum bool
	}{
		{"incoming", &inspectDriver{st: driver.Status{ID: vm0, Epoch: 7, State: driver.StateIncoming, Counter: 42}, sum: 0xfeed}, "incoming", true},
		// Zero is a checksum like any other.
		{"paused", &inspectDriver{st: driver.Status{ID: vm0, Epoch: 7, State: driver.StatePaused, Counter: 42}}, "paused", true},
		{"stopped", &inspectDriver{st: driver.Status{ID: vm0, Epoch: 7, State: driver.StateStopped, Counter: 42}, sumErr: driver.ErrInvalidState}, "stopped", false},
	} {
		f := newFixture(t, c.d, true)
		resp, err := f.svc.InspectVM(context.Background(), &havenv1.InspectVMRequest{Group: "web", Vm: "vm0"})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if resp.GetState() != c.state || resp.GetEpoch() != 7 || resp.GetCounter() != 42 || (resp.Checksum != nil) != c.hasSum || resp.GetChecksum() != c.d.sum {
			t.Errorf("%s: %v, want %s at epoch 7, counter 42, checksum %v %#x", c.name, resp, c.state, c.hasSum, c.d.sum)
		}
	}
	f := newFixture(t, &inspectDriver{st: driver.Status{ID: vm0}}, true)
	_, err := f.svc.InspectVM(context.Background(), &havenv1.InspectVMRequest{Group: "web", Vm: "vm1"})
	wantStatus(t, err, codes.NotFound, "vm web/vm1 is not on n1")
}

func TestInspectVMDenied(t *testing.T) {
	for _, c := range []struct {
		name    string
		drv     driver.Hypervisor
		enabled bool
	}{
		{"setting off", &inspectDriver{}, false},
		{"driver cannot", plainDriver{}, true},
	} {
		f := newFixture(t, c.drv, c.enabled)
		_, err := f.svc.InspectVM(context.Background(), &havenv1.InspectVMRequest{Group: "web", Vm: "vm0"})
		wantStatus(t, err, codes.PermissionDenied, "fault injection is disabled")
	}
}
