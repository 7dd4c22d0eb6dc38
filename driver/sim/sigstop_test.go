package sim

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The agent process is stopped (SIGSTOP) while its VM runs, stays stopped
// past the VM's lease end, and is continued. The guest must not write once
// it wakes: its loop checks the gate before anything else. This is the
// paused-agent case of notes/fencing (vi), on a real process and the real
// monotonic clock.
func TestSIGSTOPPastLeaseEnd(t *testing.T) {
	if dir := os.Getenv("HAVEN_SIM_SIGSTOP_CHILD"); dir != "" {
		sigstopChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSIGSTOPPastLeaseEnd$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HAVEN_SIM_SIGSTOP_CHILD="+dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	execLog := ExecLogPath(dir, web)
	var leaseEnd time.Time
	waitFor(t, "the child's VM to run", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "lease"))
		if err != nil || leaseEnd.UnmarshalText(b) != nil {
			return false
		}
		recs, _ := ReadExecLog(execLog)
		return len(recs) >= 3
	})
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if !time.Now().Before(leaseEnd) {
		t.Skip("the child's lease ended before it could be stopped (slow machine)")
	}
	time.Sleep(time.Until(leaseEnd) + 200*time.Millisecond) // the pause is the scenario
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // 40 ticks of the resumed guest
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	recs, err := ReadExecLog(execLog)
	if err != nil {
		t.Fatal(err)
	}
	_, disk := readDisk(t, filepath.Join(dir, testSpec(web, 1).Disks[0].Path))
	for _, r := range append(recs, disk...) {
		if !r.Wall.Before(leaseEnd) {
			t.Errorf("record written at %s, after the lease end %s: the guest ran after SIGCONT", r.Wall.Format(time.RFC3339Nano), leaseEnd.Format(time.RFC3339Nano))
		}
	}
	t.Logf("%d records, the last at %s; lease end %s", len(recs), recs[len(recs)-1].Wall.Format(time.RFC3339Nano), leaseEnd.Format(time.RFC3339Nano))
}

// sigstopChild runs one VM with a short lease and waits to be killed.
func sigstopChild(t *testing.T, dir string) {
	guest := testGuest
	guest.Tick = 5 * time.Millisecond
	d := New(Config{Node: "n1", SharedDir: dir, Guest: guest})
	spec := testSpec(web, 1)
	leaseEnd := time.Now().Add(time.Second)
	if err := d.Start(context.Background(), spec, leaseEnd); err != nil {
		t.Fatal(err)
	}
	b, _ := leaseEnd.UTC().MarshalText()
	if err := os.WriteFile(filepath.Join(dir, "lease"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	select {} // the parent stops, continues and kills this process
}
