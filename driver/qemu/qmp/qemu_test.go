package qmp

// Contract tests: the client against a real QEMU 7.2, diskless, under
// TCG, with the command line of /work/shared/notes/QEMU.md. They fail if
// a command, argument or field name is wrong, which the fake server
// cannot tell.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/waitfor"
)

const (
	qemuBinary = "qemu-system-x86_64"
	guestMiB   = 128
)

// needQEMU skips the test when QEMU is not installed, except in CI
// (CI set), which installs it: there a skip would hide the contract.
func needQEMU(t *testing.T, binaries ...string) {
	t.Helper()
	for _, b := range append([]string{qemuBinary}, binaries...) {
		if _, err := exec.LookPath(b); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("CI must have %s installed: %v", b, err)
			}
			t.Skipf("%s not installed: %v", b, err)
		}
	}
}

// testVM is one QEMU process and its QMP client.
type testVM struct {
	name   string
	dir    string
	qmp    *Client
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been reaped
}

// startQEMU starts a diskless VM in dir and connects to its QMP socket.
// The process is killed at cleanup, whatever the test's outcome. extra is
// appended to the command line (-incoming defer for a target).
func startQEMU(t *testing.T, dir, name string, extra ...string) *testVM {
	t.Helper()
	needQEMU(t)
	sock := filepath.Join(dir, name+".qmp")
	args := []string{
		"-name", name,
		"-machine", "pc-q35-7.2", "-accel", "tcg,tb-size=32", "-cpu", "qemu64",
		"-m", fmt.Sprint(guestMiB), "-smp", "1",
		"-nodefaults", "-display", "none",
		"-serial", "file:" + filepath.Join(dir, name+".serial"),
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		"-device", "virtio-scsi-pci,id=scsi0",
		"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x10",
		"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
	}
	args = append(args, extra...)
	stderrPath := filepath.Join(dir, name+".stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()

	cmd := exec.Command(qemuBinary, args...)
	cmd.Stderr = stderr
	cmd.Stdout = stderr
	// Should the test binary die without its cleanups, QEMU goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	vm := &testVM{name: name, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		if vm.qmp != nil {
			vm.qmp.Close()
		}
		cmd.Process.Kill()
		<-vm.exited
		if t.Failed() {
			if b, _ := os.ReadFile(stderrPath); len(b) > 0 {
				t.Logf("%s stderr:\n%s", name, b)
			}
		}
	})

	log := testLogger(t).With("vm", name)
	waitfor.Cond(t, 10*time.Second, name+"'s QMP socket", func() bool {
		select {
		case <-vm.exited:
			return true
		default:
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		c, err := Dial(ctx, sock, log)
		vm.qmp = c
		return err == nil
	})
	if vm.qmp == nil {
		b, _ := os.ReadFile(stderrPath)
		t.Fatalf("%s exited before its QMP socket answered: %s", name, b)
	}
	if v := vm.qmp.Version(); v.Major != 7 || v.Minor != 2 {
		t.Logf("QEMU %s, not the 7.2 this client was written for", v)
	}
	return vm
}

// waitExit waits for the process to end and returns its exit code.
func (vm *testVM) waitExit(t *testing.T) int {
	t.Helper()
	select {
	case <-vm.exited:
		return vm.cmd.ProcessState.ExitCode()
	case <-time.After(testTimeout):
		t.Fatalf("%s did not exit", vm.name)
		return 0
	}
}

func mustStatus(t *testing.T, ctx context.Context, vm *testVM, want string, running bool) {
	t.Helper()
	s, err := vm.qmp.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != want || s.Running != running {
		t.Fatalf("%s: status %+v, want %s running=%v", vm.name, s, want, running)
	}
}

func wantQMPError(t *testing.T, err error, class string) {
	t.Helper()
	var qerr *Error
	if !errors.As(err, &qerr) || qerr.Class != class {
		t.Fatalf("error %v, want a QMP %s", err, class)
	}
}

func TestQEMUStatusStopContActionsQuit(t *testing.T) {
	needQEMU(t)
	ctx := testContext(t)
	vm := startQEMU(t, t.TempDir(), "vm")
	c := vm.qmp

	mustStatus(t, ctx, vm, StatusRunning, true)

	events := c.Subscribe(EventStop, EventResume, EventShutdown)
	defer events.Close()
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if e, err := events.Next(ctx); err != nil || e.Name != EventStop {
		t.Fatalf("after stop: %s %v, want STOP", e.Name, err)
	}
	mustStatus(t, ctx, vm, StatusPaused, false)
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if e, err := events.Next(ctx); err != nil || e.Name != EventResume {
		t.Fatalf("after cont: %s %v, want RESUME", e.Name, err)
	}
	mustStatus(t, ctx, vm, StatusRunning, true)

	if err := c.SetAction(ctx, Actions{Watchdog: "pause", Panic: "pause", Reboot: "shutdown", Shutdown: "poweroff"}); err != nil {
		t.Fatal(err)
	}
	wantQMPError(t, c.SetAction(ctx, Actions{Watchdog: "explode"}), "GenericError")
	wantQMPError(t, c.Execute(ctx, "no-such-command", nil, nil), "CommandNotFound")

	// SeaBIOS has no ACPI power button handler: the VM runs on.
	if err := c.SystemPowerdown(ctx); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, ctx, vm, StatusRunning, true)

	if err := c.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	e, err := events.Next(ctx)
	if err != nil || e.Name != EventShutdown {
		t.Fatalf("after quit: %s %v, want SHUTDOWN", e.Name, err)
	}
	var sd ShutdownData
	if err := e.Decode(&sd); err != nil || sd.Guest || sd.Reason != "host-qmp-quit" {
		t.Errorf("SHUTDOWN data %s (%v)", e.Data, err)
	}
	if time.Since(e.Timestamp).Abs() > time.Minute {
		t.Errorf("SHUTDOWN stamped %v", e.Timestamp)
	}
	select {
	case <-c.Done():
	case <-time.After(testTimeout):
		t.Fatal("connection still up after quit")
	}
	if err := c.Err(); !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Errorf("Err after quit: %v, want ErrClosed caused by EOF", err)
	}
	if code := vm.waitExit(t); code != 0 {
		t.Errorf("exit code %d after quit", code)
	}
}

func TestQEMUMigrationParametersAndCapabilities(t *testing.T) {
	needQEMU(t)
	ctx := testContext(t)
	c := startQEMU(t, t.TempDir(), "vm").qmp

	defaults, err := c.QueryMigrateParameters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// QEMU.md's defaults; also proof that the tags read something.
	if *defaults.MaxBandwidth != 128<<20 || *defaults.DowntimeLimit != 300 || *defaults.MultifdChannels != 2 {
		t.Errorf("defaults: max-bandwidth %d, downtime-limit %d, multifd-channels %d",
			*defaults.MaxBandwidth, *defaults.DowntimeLimit, *defaults.MultifdChannels)
	}

	set := MigrationParameters{
		MaxBandwidth:             new(int64(10 << 30)),
		DowntimeLimit:            new(int64(123)),
		MultifdChannels:          new(int64(4)),
		CPUThrottleInitial:       new(int64(60)),
		CPUThrottleIncrement:     new(int64(20)),
		MaxCPUThrottle:           new(int64(95)),
		CPUThrottleTailslow:      new(true),
		ThrottleTriggerThreshold: new(int64(40)),
		MaxPostcopyBandwidth:     new(int64(256 << 20)),
		XBZRLECacheSize:          new(int64(32 << 20)),
		MultifdCompression:       new("zlib"),
	}
	if err := c.MigrateSetParameters(ctx, set); err != nil {
		t.Fatal(err)
	}
	got, err := c.QueryMigrateParameters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffParameters(set, got); d != "" {
		t.Errorf("read back differs:\n%s", d)
	}

	// Setting one leaves the others.
	if err := c.MigrateSetParameters(ctx, MigrationParameters{DowntimeLimit: new(int64(50))}); err != nil {
		t.Fatal(err)
	}
	got, err = c.QueryMigrateParameters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	set.DowntimeLimit = new(int64(50))
	if d := diffParameters(set, got); d != "" {
		t.Errorf("after setting downtime-limit alone:\n%s", d)
	}
	wantQMPError(t, c.MigrateSetParameters(ctx, MigrationParameters{MaxCPUThrottle: new(int64(101))}), "GenericError")

	caps := map[string]bool{
		CapXBZRLE: true, CapAutoConverge: true, CapEvents: true, CapPostcopyRAM: true,
		CapReturnPath: true, CapPauseBeforeSwitchover: true, CapMultifd: true,
	}
	if err := c.MigrateSetCapabilities(ctx, caps); err != nil {
		t.Fatal(err)
	}
	state, err := c.QueryMigrateCapabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, on := range caps {
		if got, ok := state[name]; !ok || got != on {
			t.Errorf("capability %s: %v (reported %v), want %v", name, got, ok, on)
		}
	}
	if state[CapZeroCopySend] {
		t.Errorf("%s on though never set", CapZeroCopySend)
	}
	wantQMPError(t, c.MigrateSetCapabilities(ctx, map[string]bool{"no-such-capability": true}), "GenericError")
}

// diffParameters lists the parameters set in want that got does not
// equal.
func diffParameters(want, got MigrationParameters) string {
	var d string
	check := func(name string, w, g any) {
		if w != g {
			d += fmt.Sprintf("%s: got %v, want %v\n", name, g, w)
		}
	}
	check("max-bandwidth", *want.MaxBandwidth, deref(got.MaxBandwidth))
	check("downtime-limit", *want.DowntimeLimit, deref(got.DowntimeLimit))
	check("multifd-channels", *want.MultifdChannels, deref(got.MultifdChannels))
	check("cpu-throttle-initial", *want.CPUThrottleInitial, deref(got.CPUThrottleInitial))
	check("cpu-throttle-increment", *want.CPUThrottleIncrement, deref(got.CPUThrottleIncrement))
	check("max-cpu-throttle", *want.MaxCPUThrottle, deref(got.MaxCPUThrottle))
	check("cpu-throttle-tailslow", *want.CPUThrottleTailslow, deref(got.CPUThrottleTailslow))
	check("throttle-trigger-threshold", *want.ThrottleTriggerThreshold, deref(got.ThrottleTriggerThreshold))
	check("max-postcopy-bandwidth", *want.MaxPostcopyBandwidth, deref(got.MaxPostcopyBandwidth))
	check("xbzrle-cache-size", *want.XBZRLECacheSize, deref(got.XBZRLECacheSize))
	check("multifd-compression", *want.MultifdCompression, deref(got.MultifdCompression))
	return d
}

// deref reads a reported parameter; a missing one shows as nil.
func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// prepareMigration sets what QEMU.md says both ends need.
func prepareMigration(t *testing.T, ctx context.Context, vms ...*testVM) {
	t.Helper()
	for _, vm := range vms {
		if err := vm.qmp.MigrateSetCapabilities(ctx, map[string]bool{CapReturnPath: true, CapEvents: true}); err != nil {
			t.Fatal(err)
		}
		if err := vm.qmp.MigrateSetParameters(ctx, MigrationParameters{MaxBandwidth: new(int64(10 << 30))}); err != nil {
			t.Fatal(err)
		}
	}
}

// listen makes the target listen on a loopback port of QEMU's choice and
// returns the source's URI for it.
func listen(t *testing.T, ctx context.Context, target *testVM) string {
	t.Helper()
	if err := target.qmp.MigrateIncoming(ctx, "tcp:127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	info, err := target.qmp.QueryMigrate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.SocketAddress) != 1 {
		t.Fatalf("target listens on %+v, want one address", info.SocketAddress)
	}
	a := info.SocketAddress[0]
	if a.Type != "inet" || a.Host != "127.0.0.1" || a.Port == "" || a.Port == "0" {
		t.Fatalf("target listens on %+v", a)
	}
	return "tcp:" + a.Host + ":" + a.Port
}

func TestQEMULiveMigration(t *testing.T) {
	needQEMU(t)
	ctx := testContext(t)
	dir := t.TempDir()
	src := startQEMU(t, dir, "src")
	dst := startQEMU(t, dir, "dst", "-incoming", "defer")
	prepareMigration(t, ctx, src, dst)
	mustStatus(t, ctx, dst, StatusInMigrate, false)

	dstEvents := dst.qmp.Subscribe(EventMigration, EventResume)
	defer dstEvents.Close()
	srcEvents := src.qmp.Subscribe(EventMigration, EventMigrationPass, EventStop)
	defer srcEvents.Close()
	uri := listen(t, ctx, dst)

	if err := src.qmp.Migrate(ctx, uri); err != nil {
		t.Fatal(err)
	}
	var seen []string
	passes := 0
	_, err := srcEvents.Wait(ctx, func(e Event) bool {
		switch e.Name {
		case EventMigrationPass:
			passes++
			return false
		case EventMigration:
			var d MigrationEventData
			if err := e.Decode(&d); err != nil {
				t.Error(err)
			}
			seen = append(seen, d.Status)
		}
		return MigrationStatus(MigrationCompleted, MigrationFailed, MigrationCancelled)(e)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source went through %v, %d MIGRATION_PASS events", seen, passes)
	if last := seen[len(seen)-1]; last != MigrationCompleted {
		t.Fatalf("migration ended %s", last)
	}
	if passes == 0 {
		t.Error("no MIGRATION_PASS event")
	}

	waitPostMigrate(t, ctx, src)
	info, err := src.qmp.QueryMigrate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source: status %s, total %d ms, setup %d ms, downtime %v ms, ram %+v",
		info.Status, info.TotalTime, info.SetupTime, deref(info.Downtime), deref(info.RAM))
	if info.Status != MigrationCompleted {
		t.Fatalf("status %q", info.Status)
	}
	if info.TotalTime <= 0 || info.SetupTime < 0 || info.Downtime == nil || *info.Downtime < 0 {
		t.Errorf("times: total %d, setup %d, downtime %v", info.TotalTime, info.SetupTime, deref(info.Downtime))
	}
	if info.ExpectedDowntime != nil {
		t.Errorf("expected-downtime %d reported after completion", *info.ExpectedDowntime)
	}
	checkRAMStats(t, info.RAM, true)

	// The target emits RESUME before its MIGRATION completed.
	var dstSeen []string
	for range 2 {
		e, err := dstEvents.Wait(ctx, func(e Event) bool {
			dstSeen = append(dstSeen, e.Name+" "+string(e.Data))
			return e.Name == EventResume || MigrationStatus(MigrationCompleted, MigrationFailed)(e)
		})
		if err != nil {
			t.Fatalf("target's events %v: %v", dstSeen, err)
		}
		if MigrationStatus(MigrationFailed)(e) {
			t.Fatalf("target's events %v", dstSeen)
		}
	}
	t.Logf("target's events: %v", dstSeen)
	mustStatus(t, ctx, dst, StatusRunning, true)
}

// waitPostMigrate waits for the source of a completed migration to reach
// the run state postmigrate. QEMU 7.2 reports the status completed (event
// and query-migrate) before it computes total-time, downtime and mbps and
// sets that run state, both at once: until then they read 0.
func waitPostMigrate(t *testing.T, ctx context.Context, src *testVM) {
	t.Helper()
	waitfor.Cond(t, testTimeout, src.name+"'s run state postmigrate", func() bool {
		s, err := src.qmp.QueryStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.Status == StatusPostMigrate
	})
}

// checkRAMStats checks the RAM figures of a completed migration of an
// idle, diskless guest; live says whether it ran while the migration ran.
func checkRAMStats(t *testing.T, ram *MigrationStats, live bool) {
	t.Helper()
	if ram == nil {
		t.Fatal("no ram statistics")
	}
	// ram.total counts every migratable RAM block: the guest's RAM and
	// the small blocks of firmware and ACPI tables beside it.
	const guest = guestMiB << 20
	if ram.Total < guest || ram.Total > guest+4<<20 {
		t.Errorf("ram total %d, want the guest's %d and at most 4 MiB of firmware", ram.Total, int64(guest))
	}
	if ram.Transferred <= 0 || ram.Remaining != 0 || ram.PageSize != 4096 {
		t.Errorf("transferred %d, remaining %d, page size %d", ram.Transferred, ram.Remaining, ram.PageSize)
	}
	// Every page went, as a zero page or a normal one.
	if pages := ram.Duplicate + ram.Normal; pages*ram.PageSize < guest {
		t.Errorf("%d zero and %d normal pages, fewer than the guest's", ram.Duplicate, ram.Normal)
	}
	if ram.Normal <= 0 || ram.NormalBytes != ram.Normal*ram.PageSize {
		t.Errorf("normal %d pages, %d bytes", ram.Normal, ram.NormalBytes)
	}
	if ram.DirtySyncCount < 1 {
		t.Errorf("dirty-sync-count %d", ram.DirtySyncCount)
	}
	// Live, RAM goes before the pause (and what the guest dirtied last,
	// often nothing when idle, during it); a stopped guest's RAM all goes
	// in its downtime. (Not checked: mbps, which QEMU 7.2 leaves 0 now
	// and then after a migration this short.)
	if live && ram.PrecopyBytes <= 0 {
		t.Errorf("live migration: precopy-bytes %d", ram.PrecopyBytes)
	}
	if !live && (ram.PrecopyBytes != 0 || ram.DowntimeBytes <= 0) {
		t.Errorf("migration of a stopped guest: precopy-bytes %d, downtime-bytes %d", ram.PrecopyBytes, ram.DowntimeBytes)
	}
	if ram.PrecopyBytes+ram.DowntimeBytes+ram.PostcopyBytes > ram.Transferred {
		t.Errorf("precopy %d + downtime %d + postcopy %d bytes exceed the %d transferred",
			ram.PrecopyBytes, ram.DowntimeBytes, ram.PostcopyBytes, ram.Transferred)
	}
}

// A migration paused before its switchover and cancelled: the source
// runs on, the target exits (QEMU.md).
func TestQEMUMigrationPauseBeforeSwitchoverAndCancel(t *testing.T) {
	needQEMU(t)
	ctx := testContext(t)
	dir := t.TempDir()
	src := startQEMU(t, dir, "src")
	dst := startQEMU(t, dir, "dst", "-incoming", "defer")
	prepareMigration(t, ctx, src, dst)
	if err := src.qmp.MigrateSetCapabilities(ctx, map[string]bool{CapPauseBeforeSwitchover: true}); err != nil {
		t.Fatal(err)
	}
	uri := listen(t, ctx, dst)

	events := src.qmp.Subscribe(EventMigration)
	defer events.Close()
	if err := src.qmp.Migrate(ctx, uri); err != nil {
		t.Fatal(err)
	}
	if _, err := events.Wait(ctx, MigrationStatus(MigrationPreSwitchover, MigrationFailed)); err != nil {
		t.Fatal(err)
	}
	info, err := src.qmp.QueryMigrate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Status != MigrationPreSwitchover || info.RAM == nil || info.RAM.Transferred <= 0 {
		t.Fatalf("paused migration: %+v", info)
	}
	mustStatus(t, ctx, src, StatusFinishMigrate, false)

	// Without postcopy-ram QEMU refuses post-copy, which proves the
	// command's name.
	wantQMPError(t, src.qmp.MigrateStartPostcopy(ctx), "GenericError")

	if err := src.qmp.MigrateCancel(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := events.Wait(ctx, MigrationStatus(MigrationCancelled)); err != nil {
		t.Fatal(err)
	}
	// QEMU restarts the vCPUs after it reports cancelled.
	waitfor.Cond(t, testTimeout, "the source to run again", func() bool {
		s, err := src.qmp.QueryStatus(ctx)
		return err == nil && s.Running
	})
	if code := dst.waitExit(t); code == 0 {
		t.Errorf("target exited with 0 after a cancelled incoming migration")
	}
}

// A pause at the switchover released with migrate-continue completes.
func TestQEMUMigrationContinueAfterPause(t *testing.T) {
	needQEMU(t)
	ctx := testContext(t)
	dir := t.TempDir()
	src := startQEMU(t, dir, "src")
	dst := startQEMU(t, dir, "dst", "-incoming", "defer")
	prepareMigration(t, ctx, src, dst)
	if err := src.qmp.MigrateSetCapabilities(ctx, map[string]bool{CapPauseBeforeSwitchover: true}); err != nil {
		t.Fatal(err)
	}
	uri := listen(t, ctx, dst)

	events := src.qmp.Subscribe(EventMigration)
	defer events.Close()
	if err := src.qmp.Migrate(ctx, uri); err != nil {
		t.Fatal(err)
	}
	if _, err := events.Wait(ctx, MigrationStatus(MigrationPreSwitchover, MigrationFailed)); err != nil {
		t.Fatal(err)
	}
	if err := src.qmp.MigrateContinue(ctx); err != nil {
		t.Fatal(err)
	}
	e, err := events.Wait(ctx, MigrationStatus(MigrationCompleted, MigrationFailed))
	if err != nil {
		t.Fatal(err)
	}
	if !MigrationStatus(MigrationCompleted)(e) {
		t.Fatalf("migration ended %s", e.Data)
	}
	waitfor.Cond(t, testTimeout, "the target to run", func() bool {
		s, err := dst.qmp.QueryStatus(ctx)
		return err == nil && s.Running
	})
}

// Quick migration: the stopped source saves to a file through a
// descriptor; a new QEMU restores from it, paused, and runs on cont.
func TestQEMUQuickMigrationThroughFile(t *testing.T) {
	needQEMU(t)
	ctx := testContext(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "vm.state")

	src := startQEMU(t, dir, "src")
	if err := src.qmp.MigrateSetCapabilities(ctx, map[string]bool{CapEvents: true}); err != nil {
		t.Fatal(err)
	}
	if err := src.qmp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.qmp.MigrateSetParameters(ctx, MigrationParameters{MaxBandwidth: new(int64(10 << 30))}); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(state)
	if err != nil {
		t.Fatal(err)
	}
	err = src.qmp.Getfd(ctx, "save", out)
	out.Close() // QEMU holds its own copy
	if err != nil {
		t.Fatal(err)
	}
	events := src.qmp.Subscribe(EventMigration)
	defer events.Close()
	if err := src.qmp.Migrate(ctx, "fd:save"); err != nil {
		t.Fatal(err)
	}
	if _, err := events.Wait(ctx, MigrationStatus(MigrationCompleted)); err != nil {
		t.Fatal(err)
	}
	waitPostMigrate(t, ctx, src)
	info, err := src.qmp.QueryMigrate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkRAMStats(t, info.RAM, false)
	// migrate took the descriptor over: the name is gone.
	wantQMPError(t, src.qmp.Closefd(ctx, "save"), "GenericError")
	if err := src.qmp.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	src.waitExit(t)
	st, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() < info.RAM.Transferred {
		t.Errorf("state file of %d bytes, %d transferred", st.Size(), info.RAM.Transferred)
	}

	dst := startQEMU(t, dir, "dst", "-incoming", "defer")
	if err := dst.qmp.MigrateSetCapabilities(ctx, map[string]bool{CapEvents: true}); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	err = dst.qmp.Getfd(ctx, "restore", in)
	in.Close()
	if err != nil {
		t.Fatal(err)
	}
	dstEvents := dst.qmp.Subscribe(EventMigration, EventResume)
	defer dstEvents.Close()
	if err := dst.qmp.MigrateIncoming(ctx, "fd:restore"); err != nil {
		t.Fatal(err)
	}
	if _, err := dstEvents.Wait(ctx, MigrationStatus(MigrationCompleted, MigrationFailed)); err != nil {
		t.Fatal(err)
	}
	if info, err := dst.qmp.QueryMigrate(ctx); err != nil || info.Status != MigrationCompleted {
		t.Fatalf("restore: %+v %v", info, err)
	}
	mustStatus(t, ctx, dst, StatusPaused, false)
	if err := dst.qmp.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dstEvents.Wait(ctx, func(e Event) bool { return e.Name == EventResume }); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, ctx, dst, StatusRunning, true)
}

func TestQEMUDiskHotPlug(t *testing.T) {
	needQEMU(t, "qemu-img")
	ctx := testContext(t)
	dir := t.TempDir()
	vm := startQEMU(t, dir, "vm")
	c := vm.qmp

	images := map[string]string{}
	for _, id := range []string{"d1", "d2"} {
		images[id] = filepath.Join(dir, id+".qcow2")
		if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-f", "qcow2", images[id], "64M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
	}
	addDrive := func(id string) {
		t.Helper()
		err := c.BlockdevAdd(ctx, map[string]any{
			"driver": "qcow2", "node-name": "drive-" + id,
			"file": map[string]any{"driver": "file", "filename": images[id], "node-name": "file-" + id},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	addDrive("d1")
	if err := c.DeviceAdd(ctx, map[string]any{
		"driver": "scsi-hd", "id": "d1", "drive": "drive-d1",
		"bus": "scsi0.0", "channel": 0, "scsi-id": 0, "lun": 1,
	}); err != nil {
		t.Fatal(err)
	}
	addDrive("d2")
	if err := c.DeviceAdd(ctx, map[string]any{
		"driver": "virtio-blk-pci", "id": "d2", "drive": "drive-d2", "bus": "rp1",
	}); err != nil {
		t.Fatal(err)
	}
	peripherals := func() map[string]string {
		t.Helper()
		props, err := c.QOMList(ctx, "/machine/peripheral")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, p := range props {
			m[p.Name] = p.Type
		}
		return m
	}
	p := peripherals()
	if p["d1"] != "child<scsi-hd>" || p["d2"] != "child<virtio-blk-pci>" {
		t.Fatalf("/machine/peripheral: %v", p)
	}

	wantQMPError(t, c.DeviceDel(ctx, "no-such-device"), "DeviceNotFound")
	// A node in use cannot go.
	wantQMPError(t, c.BlockdevDel(ctx, "drive-d1"), "GenericError")

	for _, id := range []string{"d1", "d2"} {
		events := c.Subscribe(EventDeviceDeleted)
		if err := c.DeviceDel(ctx, id); err != nil {
			t.Fatal(err)
		}
		var before []string
		_, err := events.Wait(ctx, func(e Event) bool {
			if DeviceDeleted(id)(e) {
				return true
			}
			before = append(before, string(e.Data))
			return false
		})
		events.Close()
		if err != nil {
			t.Fatalf("waiting for %s's DEVICE_DELETED: %v", id, err)
		}
		t.Logf("%s: DEVICE_DELETED events before the one with its id: %v", id, before)
		if err := c.BlockdevDel(ctx, "drive-"+id); err != nil {
			t.Fatal(err)
		}
	}
	if p := peripherals(); p["d1"] != "" || p["d2"] != "" {
		t.Fatalf("/machine/peripheral after removal: %v", p)
	}
	// The inline file node went with its parent.
	wantQMPError(t, c.BlockdevDel(ctx, "file-d1"), "GenericError")
}
