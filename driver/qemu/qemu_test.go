package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/supervise"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/waitfor"
)

// The test binary is also the supervisor, as the haven binary is in an
// agent: the driver starts it as `<test binary> qemu-supervise ...`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "qemu-supervise" {
		os.Exit(supervise.Main(os.Args[2:]))
	}
	// A race-built supervisor would sleep a second on every exit.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

// needQEMU skips a test without QEMU, except in CI, which installs it.
func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must install QEMU: %v", err)
		}
		t.Skip("qemu-system-x86_64 is not installed")
	}
}

// runDir is a short directory for a driver's sockets: t.TempDir's names
// grow with the test's name, past what a unix socket path may be.
func runDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "hq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// newTestDriver opens a driver on runDir and shared, and kills whatever
// VMs it left behind when the test ends, passed or failed.
func newTestDriver(t *testing.T, node, run, shared string, mods ...func(*Config)) *Driver {
	t.Helper()
	cfg := Config{
		Node: node, SharedDir: shared, RunDir: run, Accel: "tcg", StopTimeout: time.Second,
		Supervisor: []string{os.Args[0], "qemu-supervise"}, Logger: logtest.New(t),
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	d, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Let go first: a driver still watching would take its QEMU's
		// death under the reaping for a crash, and end the supervisor
		// under Reap's feet.
		d.Close()
		reap(t, run)
	})
	return d
}

// reap kills every VM under run.
func reap(t *testing.T, run string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Reap(ctx, run); err != nil {
		t.Error(err)
	}
}

// qemuPID is the pid QEMU wrote for a VM.
func qemuPID(t *testing.T, run string, id driver.VMID) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vmDir(run, id), pidFile))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// stopped reports whether every thread of pid is stopped (state T).
func stopped(t *testing.T, pid int) bool {
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/stat")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of %d: %v", pid, err)
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			return false
		}
		s := string(b)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) == 0 || (f[0] != "T" && f[0] != "t") {
			return false
		}
	}
	return true
}

var web = driver.VMID{Group: "web", Resource: "vm"}

// A diskless VM (SeaBIOS finds nothing to boot and waits) is enough to
// see the process side of the gate: every thread of QEMU stopped at the
// lease end, a late renewal refused with QEMU left stopped, a timely one
// resuming it.
func TestFreezeIsTheProcess(t *testing.T) {
	needQEMU(t)
	run := runDir(t)
	d := newTestDriver(t, "n1", run, t.TempDir())
	spec := driver.VMSpec{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20}
	end := time.Now().Add(2 * time.Second)
	if err := d.Start(context.Background(), spec, end); err != nil {
		t.Fatal(err)
	}
	pid := qemuPID(t, run, web)
	if st, _ := d.Status(web); st.State != driver.StateRunning || stopped(t, pid) {
		t.Fatalf("after Start: %s, process stopped %v; want running", st.State, stopped(t, pid))
	}
	waitfor.Cond(t, 5*time.Second, "QEMU stopped by its supervisor", func() bool { return stopped(t, pid) })
	// The supervisor stops it StopAhead early, so that nothing runs at
	// the lease end itself; much earlier would be a lease cut short.
	if early := time.Until(end); early > supervise.StopAhead+100*time.Millisecond {
		t.Fatalf("QEMU stopped %s before its lease end", early)
	}
	// The driver reports it frozen from the lease end itself.
	waitfor.Cond(t, time.Second, "frozen in the driver's Status", func() bool {
		st, _ := d.Status(web)
		return st.State == driver.StateFrozen && !time.Now().Before(end)
	})
	if err := d.ExtendLease(web, 1, time.Now().Add(-time.Millisecond)); !errors.Is(err, driver.ErrLeaseExpired) {
		t.Errorf("a late renewal: %v, want ErrLeaseExpired", err)
	}
	if !stopped(t, pid) {
		t.Error("a refused renewal resumed QEMU")
	}
	if err := d.ExtendLease(web, 1, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if stopped(t, pid) {
		t.Error("a renewal in time left QEMU stopped")
	}
	if st, _ := d.Status(web); st.State != driver.StateRunning {
		t.Errorf("after the renewal: %s, want running", st.State)
	}
	if err := d.Stop(context.Background(), web, 1); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("kill", "-0", strconv.Itoa(pid)).Run(); err == nil {
		t.Error("QEMU outlived Stop")
	}
	if err := d.Forget(web, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vmDir(run, web)); !os.IsNotExist(err) {
		t.Errorf("Forget left the VM's directory: %v", err)
	}
}

// An agent that restarts takes its VMs back: the same QEMU, at its epoch,
// under the lease its supervisor holds; a VM whose QEMU died meanwhile is
// listed crashed, for the executor to forget.
func TestTakeBack(t *testing.T) {
	needQEMU(t)
	run, shared := runDir(t), t.TempDir()
	d := newTestDriver(t, "n1", run, shared)
	db := driver.VMID{Group: "db", Resource: "vm"}
	for _, id := range []driver.VMID{web, db} {
		if err := d.Start(context.Background(), driver.VMSpec{ID: id, Epoch: 4, VCPUs: 1, MemoryBytes: 64 << 20}, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	pid := qemuPID(t, run, web)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// db's QEMU dies while no agent runs.
	if err := exec.Command("kill", "-9", strconv.Itoa(qemuPID(t, run, db))).Run(); err != nil {
		t.Fatal(err)
	}

	d2 := newTestDriver(t, "n1", run, shared)
	st, err := d2.Status(web)
	if err != nil || st.State != driver.StateRunning || st.Epoch != 4 || time.Until(st.LeaseEnd) < 50*time.Second {
		t.Fatalf("web taken back as %+v, %v; want running at epoch 4 with its lease", st, err)
	}
	if qemuPID(t, run, web) != pid {
		t.Error("web's QEMU was restarted, not taken back")
	}
	waitfor.Cond(t, 10*time.Second, "db listed crashed", func() bool {
		st, err := d2.Status(db)
		return err == nil && st.State == driver.StateCrashed
	})
	if err := d2.ExtendLease(web, 4, time.Now().Add(2*time.Minute)); err != nil {
		t.Errorf("renewing the VM taken back: %v", err)
	}
	if err := d2.Kill(web, 4); err != nil {
		t.Fatal(err)
	}
	for _, id := range []driver.VMID{web, db} {
		if err := d2.Forget(id, 4); err != nil {
			t.Errorf("Forget(%s): %v", id, err)
		}
	}
}

// What QEMU or the node cannot run is refused before any process starts.
func TestStartRefusesBadSpec(t *testing.T) {
	needQEMU(t)
	run := runDir(t)
	d := newTestDriver(t, "n1", run, t.TempDir())
	for _, spec := range []driver.VMSpec{
		{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20, Machine: "pc-q35-1.0"},
		{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64 << 20, Boot: driver.Boot{Kernel: "/nonexistent/vmlinuz"}},
		{ID: web, Epoch: 1, VCPUs: 1, MemoryBytes: 64<<20 + 1},
	} {
		if err := d.Start(context.Background(), spec, time.Now().Add(time.Minute)); !errors.Is(err, driver.ErrInvalidSpec) {
			t.Errorf("Start(%+v): %v, want ErrInvalidSpec", spec, err)
		}
	}
	if entries, _ := os.ReadDir(run); len(entries) != 0 {
		t.Errorf("refused starts left %d entries in the run directory", len(entries))
	}
}
