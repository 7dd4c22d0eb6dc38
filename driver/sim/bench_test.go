package sim

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// BenchmarkFleet measures what hundreds of sim VMs cost a node: 300 VMs of
// 64 MiB with a 4 MiB working set dirtied at 1 MiB/s, one disk each and a
// 100 ms tick (the defaults of a busy dev cluster). It reports the CPU the
// whole process used over a 5 s window, as a percentage of one core, and
// the resident set at the end. Run it alone, once:
//
//	go test -run '^$' -bench BenchmarkFleet -benchtime 1x ./driver/sim
//
// The first seconds include the page faults of the working sets being
// touched for the first time; -fleet.warmup 20s measures the steady state.
// -fleet.scale runs the scale scenario's light VMs instead: 100 of 16 MiB,
// no disk, nothing dirtied, a 2 s tick, over a 30 s window (the share of
// an agent's CPU that is its simulated guests, not haven).
var (
	fleetWarmup = flag.Duration("fleet.warmup", time.Second, "BenchmarkFleet: run this long before measuring")
	fleetScale  = flag.Bool("fleet.scale", false, "BenchmarkFleet: the scale scenario's light VMs")
)

func BenchmarkFleet(b *testing.B) {
	vms, measure, mem := 300, 5*time.Second, int64(64<<20)
	guest := Guest{WorkingSetBytes: 4 << 20, DirtyRateBytesPerSec: 1 << 20, Tick: 100 * time.Millisecond}
	disks := func(group string) []driver.DiskSpec {
		return []driver.DiskSpec{{Name: "root", Path: "disks/" + group + ".img"}}
	}
	if *fleetScale {
		vms, measure, mem = 100, 30*time.Second, 16<<20
		guest = Guest{Tick: 2 * time.Second}
		disks = func(string) []driver.DiskSpec { return nil }
	}
	d := New(Config{Node: "n1", SharedDir: b.TempDir(), Guest: guest})
	defer d.Close()
	lease := time.Now().Add(time.Hour)
	for i := range vms {
		id := driver.VMID{Group: fmt.Sprintf("g%03d", i), Resource: "vm"}
		spec := driver.VMSpec{ID: id, Epoch: 1, VCPUs: 1, MemoryBytes: mem, Disks: disks(id.Group)}
		if err := d.Start(context.Background(), spec, lease); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(*fleetWarmup) // a measurement window, not a wait for a condition
	cpu0, t0 := cpuTime(b), time.Now()
	time.Sleep(measure)
	cpu1, t1 := cpuTime(b), time.Now()

	var ticks uint64
	for _, st := range d.List() {
		if st.State != driver.StateRunning {
			b.Fatalf("%s is %s", st.ID, st.State)
		}
		ticks += st.Counter
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(100*float64(cpu1-cpu0)/float64(t1.Sub(t0)), "cpu%")
	b.ReportMetric(float64(rssBytes(b))/(1<<20), "rss-MiB")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(ticks)/float64(vms), "ticks/vm")
}

// cpuTime is user plus system CPU time of this process.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssBytes is the current resident set (Linux /proc), or 0 elsewhere.
func rssBytes(b *testing.B) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Logf("no RSS: %v", err)
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
