package qemu

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/drivertest"
	"github.com/haven-ha/haven/driver/qemu/testguest"
)

// The driver contract on real QEMU, with a Linux guest that counts on its
// console: the same suite the sim passes.
func TestContract(t *testing.T) {
	needQEMU(t)
	guest := testguest.Build(t)
	var (
		mu   sync.Mutex
		dirs = map[string][2]string{} // test -> run and shared directories
	)
	env := func(t *testing.T) (run, shared string) {
		mu.Lock()
		defer mu.Unlock()
		d, ok := dirs[t.Name()]
		if !ok {
			d = [2]string{runDir(t), t.TempDir()}
			dirs[t.Name()] = d
		}
		return d[0], d[1]
	}
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T, node string) driver.Hypervisor {
			run, shared := env(t)
			return newTestDriver(t, node, run, shared)
		},
		Spec: func(t *testing.T, id driver.VMID, node string, epoch uint64) driver.VMSpec {
			return driver.VMSpec{ID: id, Node: node, Epoch: epoch, VCPUs: 1, MemoryBytes: 160 << 20, Boot: driver.Boot{
				Kernel: guest.Kernel, Initrd: guest.Initrd,
				Cmdline: guest.Append(testguest.Options{MemMiB: 16, TickMs: 20, WatchdogSec: 60}),
			}}
		},
		Progress: func(t *testing.T, _ driver.Hypervisor, id driver.VMID) uint64 {
			run, _ := env(t)
			return consoleTick(t, run, id)
		},
		Disk: func(t *testing.T, name string) driver.DiskSpec {
			_, shared := env(t)
			if err := os.MkdirAll(filepath.Join(shared, "disks"), 0o755); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join("disks", name+".img")
			if err := os.WriteFile(filepath.Join(shared, p), make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			return driver.DiskSpec{Name: name, Path: p, SizeBytes: 1 << 20}
		},
		Lease:  3 * time.Second,
		Boot:   90 * time.Second,
		Settle: 500 * time.Millisecond,
	})
}

// consoleTick is the last counter a test guest printed on its console.
func consoleTick(t *testing.T, run string, id driver.VMID) uint64 {
	s := testguest.NewSerial(vmDir(run, id) + "/" + consoleLog)
	defer s.Close()
	if err := s.Poll(); err != nil {
		return 0 // not booted yet
	}
	return uint64(s.Last().N)
}
