package sim_test

import (
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/drivertest"
	"github.com/haven-ha/haven/driver/sim"
)

func TestContract(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T, node string) driver.Hypervisor {
			return sim.New(sim.Config{Node: node, SharedDir: sharedDir(t), Guest: sim.Guest{Tick: 2 * time.Millisecond}})
		},
		Spec: func(t *testing.T, id driver.VMID, node string, epoch uint64) driver.VMSpec {
			return driver.VMSpec{ID: id, Node: node, Epoch: epoch, VCPUs: 1, MemoryBytes: 1 << 20}
		},
		Progress: func(t *testing.T, h driver.Hypervisor, id driver.VMID) uint64 {
			// The execution log is the guest's own record, written
			// beside the disks: its last counter is its progress.
			recs, err := sim.ReadExecLog(sim.ExecLogPath(sharedDir(t), id))
			if err != nil || len(recs) == 0 {
				return 0
			}
			return recs[len(recs)-1].Counter
		},
		Lease:  300 * time.Millisecond,
		Boot:   5 * time.Second,
		Settle: 50 * time.Millisecond,
		// A sim disk is made by its first claim.
		Disk: func(t *testing.T, name string) driver.DiskSpec {
			return driver.DiskSpec{Name: name, Path: "disks/" + name + ".img", SizeBytes: 1 << 20}
		},
	})
}

// dirs holds one shared storage root per test, as a site's nodes share
// one: the harness's drivers and its progress reader find it by the test.
var dirs struct {
	sync.Mutex
	m map[string]string
}

func sharedDir(t *testing.T) string {
	dirs.Lock()
	defer dirs.Unlock()
	if dirs.m == nil {
		dirs.m = map[string]string{}
	}
	d, ok := dirs.m[t.Name()]
	if !ok {
		d = t.TempDir()
		dirs.m[t.Name()] = d
	}
	return d
}
