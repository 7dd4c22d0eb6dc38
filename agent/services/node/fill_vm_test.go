package node

import (
	"context"
	"testing"

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
