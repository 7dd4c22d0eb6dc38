//go:build linux

package supervise

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/waitfor"
)

// lagBound is the most the child may run past its lease end: the timer's
// and the signal's latency on a busy two-core machine, with the race
// detector. The leader's fencing margin must cover it (DESIGN.md, step 2).
const lagBound = 50 * time.Millisecond

// With no renewal the child stops at its lease end: its last line is
// within lagBound of it, no line is written after the supervisor saw every
// thread stopped, and none while it stays frozen. Measured over a series
// of freezes, whose lag the test prints.
func TestFreezesAtLeaseEnd(t *testing.T) {
	fx := newFixture(t)
	c := fx.start(t, fx.config(1, time.Now().Add(500*time.Millisecond)))
	waitLines(t, fx, 0, "the child's first line")

	const cycles = 20
	var lags, childLags []time.Duration
	for i := range cycles {
		if i > 0 {
			st, err := c.Extend(testCtx(t), 1, time.Now().Add(30*time.Millisecond))
			if err != nil || st.State != StateRunning {
				t.Fatalf("extend of a frozen child: %v, %s", err, st.State)
			}
		}
		st := waitState(t, c, StateFrozen)
		w := wire(t, c)
		last := fx.last(t)
		if last.mono > w.FrozenAt {
			t.Fatalf("line %d at %s after the lease end, after the freeze was confirmed (%s)", last.n,
				time.Duration(last.mono-w.LeaseEnd), time.Duration(w.FrozenAt-w.LeaseEnd))
		}
		lags = append(lags, time.Duration(w.FrozenAt-w.LeaseEnd))
		childLags = append(childLags, time.Duration(last.mono-w.LeaseEnd))
		if !stopped(t, st.PID) {
			t.Fatal("frozen, but /proc shows a thread of the child not stopped")
		}
		if i == 0 {
			steady(t, 200*time.Millisecond, "no line while frozen", func() bool {
				return fx.last(t) == last && stopped(t, st.PID)
			})
		}
	}
	slices.Sort(lags)
	slices.Sort(childLags)
	t.Logf("freeze lag over %d lease ends: confirmed stopped after median %s, max %s; the child's last line median %s, max %s after the lease end (it writes every 2 ms)",
		cycles, lags[cycles/2], lags[cycles-1], childLags[cycles/2], childLags[cycles-1])
	if lags[cycles-1] > lagBound || childLags[cycles-1] > lagBound {
		t.Errorf("the child ran up to %s (last line %s) past its lease end; the bound is %s", lags[cycles-1], childLags[cycles-1], lagBound)
	}
}

// An extend before the lease end keeps the child running across it; one
// that moves the end backwards changes nothing; one whose lease end has
// passed is refused and leaves the frozen child frozen; only one with a
// lease end after now thaws it.
func TestExtend(t *testing.T) {
	fx := newFixture(t)
	c := fx.start(t, fx.config(1, time.Now().Add(400*time.Millisecond)))
	ctx := testCtx(t)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldEnd := st.LeaseEnd
	st, err = c.Extend(ctx, 1, time.Now().Add(5*time.Second))
	if err != nil || st.State != StateRunning || st.Freezes != 0 {
		t.Fatalf("extend before the lease end: %v, %s after %d freezes", err, st.State, st.Freezes)
	}
	waitLines(t, fx, MonoFromTime(oldEnd)+int64(50*time.Millisecond), "a line 50 ms after the old lease end")
	before := wire(t, c)
	if _, err = c.Extend(ctx, 1, time.Now().Add(time.Second)); err != nil {
		t.Fatalf("extend backwards: %v", err)
	}
	if after := wire(t, c); after != before || after.State != StateRunning || after.Freezes != 0 {
		t.Fatalf("extend backwards: %+v, was %+v; want it unchanged, running and never frozen", after, before)
	}

	// Let it freeze; arm the lease end 50 ms from now with a new epoch.
	if _, err := c.Arm(ctx, 2, time.Now().Add(50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	st = waitState(t, c, StateFrozen)
	last := fx.last(t)
	for _, until := range []time.Time{time.Now().Add(-time.Millisecond), st.LeaseEnd, time.Now()} {
		got, err := c.Extend(ctx, 2, until)
		if !errors.Is(err, driver.ErrLeaseExpired) {
			t.Fatalf("late extend to %s from now: %v, want %v", time.Until(until), err, driver.ErrLeaseExpired)
		}
		if got.State != StateFrozen || !stopped(t, got.PID) {
			t.Fatalf("a refused extend left the child %s", got.State)
		}
	}
	steady(t, 100*time.Millisecond, "no line after refused extends", func() bool {
		return fx.last(t) == last && stopped(t, st.PID)
	})
	if st, err = c.Extend(ctx, 2, time.Now().Add(5*time.Second)); err != nil || st.State != StateRunning {
		t.Fatalf("extend of a frozen child to 5 s from now: %v, %s", err, st.State)
	}
	waitLines(t, fx, last.mono, "a line after the thaw")
}

// Extends at the edge, racing the freeze timer and the clock, a few
// hundred times: each refused one must leave the child frozen (stopped in
// /proc), each accepted one running until the new lease end (or frozen at
// it, if it has passed already), and the child must never have run later
// than its lease allowed.
func TestLateExtendRace(t *testing.T) {
	fx := newFixture(t)
	// A lease that ends soon, but not before the supervisor has started:
	// under -race beside the other packages a start took over 100 ms.
	c := fx.start(t, fx.config(1, time.Now().Add(time.Second)))
	ctx := testCtx(t)
	// The supervisor's own CLOCK_MONOTONIC values throughout, exactly.
	w := wire(t, c)
	// grants are the accepted lease ends and when they were asked for:
	// a line at mono is allowed by the latest lease end asked before it.
	type grant struct{ sent, end int64 }
	grants := []grant{{0, w.LeaseEnd}}
	jitter := func(lo, hi time.Duration) int64 { return int64(lo + rand.N(hi-lo)) }

	var accepted, refused int
	for range 300 {
		var until int64
		if w.State == StateFrozen {
			// Around now, so that the check against the clock is the race.
			// (StopAhead later: a lease end closer than that is as good
			// as passed.)
			until = MonoNow() + int64(StopAhead) + jitter(-500*time.Microsecond, 2*time.Millisecond)
		} else {
			// Around the freeze (StopAhead before the lease end), racing
			// the timer; never before the lease end, so a refusal always
			// means the lease has ended.
			sleepUntil(w.LeaseEnd - int64(StopAhead) + jitter(-time.Millisecond, time.Millisecond))
			until = w.LeaseEnd + jitter(0, 1500*time.Microsecond)
		}
		sent := MonoNow()
		got, err := c.call(ctx, request{Op: opExtend, Epoch: 1, Until: until})
		switch {
		case err == nil:
			accepted++
			// Running until the new end, or already frozen at it: a lease
			// end microseconds after the check may pass before the reply.
			atNewEnd := got.State == StateFrozen && got.FrozenAt >= got.LeaseEnd-int64(StopAhead)
			if got.LeaseEnd != until || got.State != StateRunning && !atNewEnd {
				t.Fatalf("accepted extend to %d: %s until %d", until, got.State, got.LeaseEnd)
			}
			grants = append(grants, grant{sent, until})
		case errors.Is(err, driver.ErrLeaseExpired):
			refused++
			if got.State != StateFrozen || !stopped(t, got.PID) {
				t.Fatalf("refused extend (%v) left the child %s", err, got.State)
			}
		default:
			t.Fatal(err)
		}
		w = *got
	}
	st := waitState(t, c, StateFrozen)
	t.Logf("%d extends accepted, %d refused, %d freezes", accepted, refused, st.Freezes)
	if accepted == 0 || refused == 0 {
		t.Errorf("no race at the edge: %d accepted, %d refused", accepted, refused)
	}
	for _, l := range fx.lines(t) {
		var end int64
		for _, g := range grants {
			if g.sent <= l.mono {
				end = max(end, g.end)
			}
		}
		if l.mono >= end+int64(lagBound) {
			t.Fatalf("line %d written %s after the lease end in force", l.n, time.Duration(l.mono-end))
		}
	}
}

// Extend needs the child's epoch; Arm a higher one (a migration's commit),
// and may thaw a frozen child; neither changes anything when refused.
func TestEpochs(t *testing.T) {
	fx := newFixture(t)
	c := fx.start(t, fx.config(5, time.Now().Add(10*time.Second)))
	ctx := testCtx(t)
	before := wire(t, c)
	unchanged := func(what string, err error, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("%s: %v, want %v", what, err, want)
		}
		if after := wire(t, c); after != before {
			t.Fatalf("%s changed the child: %+v, was %+v", what, after, before)
		}
	}
	far := time.Now().Add(20 * time.Second)
	for _, epoch := range []uint64{4, 6} {
		_, err := c.Extend(ctx, epoch, far)
		unchanged(fmt.Sprintf("extend at epoch %d", epoch), err, driver.ErrStaleEpoch)
	}
	for _, epoch := range []uint64{4, 5} {
		_, err := c.Arm(ctx, epoch, far)
		unchanged(fmt.Sprintf("arm at epoch %d", epoch), err, driver.ErrStaleEpoch)
	}
	st, err := c.Arm(ctx, 7, time.Now().Add(-time.Millisecond))
	unchanged("arm with a past lease end", err, driver.ErrLeaseExpired)
	if st.State != StateRunning {
		t.Fatalf("a refused arm's reply: %s", st.State)
	}

	// A new epoch's lease replaces the old one, even if it ends sooner.
	if st, err = c.Arm(ctx, 7, time.Now().Add(50*time.Millisecond)); err != nil || st.Epoch != 7 || time.Until(st.LeaseEnd) > time.Second {
		t.Fatalf("arm at epoch 7: %v, %+v", err, st)
	}
	if _, err := c.Extend(ctx, 5, far); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Fatalf("extend at the old epoch: %v", err)
	}
	waitState(t, c, StateFrozen)
	if st, err = c.Arm(ctx, 8, time.Now().Add(5*time.Second)); err != nil || st.State != StateRunning || st.Epoch != 8 {
		t.Fatalf("arm of a frozen child at epoch 8: %v, %+v", err, st)
	}
	if _, err = c.Extend(ctx, 8, time.Now().Add(6*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// A child with no lease yet runs unfenced (it is a migration's target,
// waiting for QMP), is never frozen, and a refused request leaves it so;
// the first Extend at its epoch, or an Arm, fences it.
func TestUnarmed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		arm   func(ctx context.Context, c *Client, until time.Time) (Status, error)
		epoch uint64
	}{
		{"extend", func(ctx context.Context, c *Client, until time.Time) (Status, error) { return c.Extend(ctx, 3, until) }, 3},
		{"arm", func(ctx context.Context, c *Client, until time.Time) (Status, error) { return c.Arm(ctx, 4, until) }, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t)
			c := fx.start(t, fx.config(3, time.Time{}))
			ctx := testCtx(t)
			st, err := c.Status(ctx)
			if err != nil || st.State != StateUnarmed || !st.LeaseEnd.IsZero() {
				t.Fatalf("%v, %+v: want unarmed with no lease end", err, st)
			}
			if _, err := c.Extend(ctx, 2, time.Now().Add(time.Second)); !errors.Is(err, driver.ErrStaleEpoch) {
				t.Fatalf("extend at an older epoch: %v", err)
			}
			if _, err := c.Arm(ctx, 2, time.Now().Add(time.Second)); !errors.Is(err, driver.ErrStaleEpoch) {
				t.Fatalf("arm at an older epoch: %v", err)
			}
			if st, err := tc.arm(ctx, c, time.Now().Add(-time.Millisecond)); !errors.Is(err, driver.ErrLeaseExpired) || st.State != StateUnarmed {
				t.Fatalf("first lease already ended: %v, %s; want refused and still unarmed", err, st.State)
			}
			start := MonoNow()
			waitLines(t, fx, start+int64(20*time.Millisecond), "the unarmed child to run")
			st, err = tc.arm(ctx, c, time.Now().Add(100*time.Millisecond))
			if err != nil || st.State != StateRunning || st.Epoch != tc.epoch {
				t.Fatalf("first lease: %v, %+v", err, st)
			}
			waitState(t, c, StateFrozen)
		})
	}
}

// The agent that started the supervisor is stopped and then killed, with a
// signal to its whole process group: the supervisor and the child live on,
// the lease is enforced without the agent, and a new client re-adopts
// them and can thaw, kill and release.
func TestAgentDies(t *testing.T) {
	fx := newFixture(t)
	const lease = 150 * time.Millisecond
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	stderr, err := os.Create(fx.dir + "/starter.err")
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	agent := exec.Command(os.Args[0], "starter", "-dir", fx.dir, "-lease", lease.String(), "-every", "30ms")
	agent.Env = helperEnviron()
	agent.Stdout, agent.Stderr = pw, stderr
	// A process group of its own, as a shell gives an agent: the test
	// signals the whole group.
	agent.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var supPID, childPID int
	t.Cleanup(func() {
		_ = syscall.Kill(-agent.Process.Pid, syscall.SIGKILL)
		_ = agent.Wait()
		// Adopted by this process once the agent died.
		if supPID != 0 {
			reap(t, supPID, 5*time.Second)
			reap(t, childPID, 5*time.Second)
		}
		if t.Failed() {
			fx.showLog(t)
			b, _ := os.ReadFile(stderr.Name())
			t.Logf("starter's stderr:\n%s", b)
		}
	})
	_ = pr.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ready string
	if _, err := fmt.Fscanln(pr, &ready, &supPID, &childPID); err != nil || ready != "ready" {
		t.Fatalf("the starter's ready line: %v", err)
	}
	waitLines(t, fx, MonoNow()+int64(2*lease), "the child to run on renewed leases")

	if err := syscall.Kill(-agent.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	c, err := Dial(ctx, fx.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := waitState(t, c, StateFrozen)
	if st.PID != childPID || st.SupervisorPID != supPID {
		t.Fatalf("status names child %d and supervisor %d, the starter %d and %d", st.PID, st.SupervisorPID, childPID, supPID)
	}
	last := fx.last(t)
	if d := time.Duration(last.mono - MonoFromTime(st.LeaseEnd)); d > lagBound {
		t.Fatalf("the child wrote %s after its lease end", d)
	}

	if err := syscall.Kill(-agent.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = agent.Wait()
	steady(t, 100*time.Millisecond, "the child frozen after the agent's death", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.State == StateFrozen && fx.last(t) == last && stopped(t, childPID)
	})
	c.Close()

	// A restarted agent re-adopts the VM.
	c2, err := Dial(ctx, fx.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if st, err = c2.Extend(ctx, 1, time.Now().Add(5*time.Second)); err != nil || st.State != StateRunning {
		t.Fatalf("re-adopted extend: %v, %s", err, st.State)
	}
	waitLines(t, fx, last.mono, "the re-adopted child to run")
	if st, err = c2.Kill(ctx); err != nil || st.Exit == nil || st.Exit.Signal != syscall.SIGKILL {
		t.Fatalf("kill: %v, %+v", err, st)
	}
	if _, err := c2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ws, ok := reap(t, supPID, 5*time.Second); !ok || !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("the released supervisor: adopted %v, status %#x", ok, ws)
	}
	supPID = 0 // reaped, and its child by it
	if _, err := os.Stat(fx.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after release: %v", err)
	}
}

// SIGKILL of the supervisor takes the child with it (Pdeathsig); its
// socket is left behind, refuses connections, is reported as no
// supervisor, and is replaced by the next Start. A stopped supervisor
// does not answer within the caller's deadline.
func TestSupervisorKilled(t *testing.T) {
	fx := newFixture(t)
	c := fx.start(t, fx.config(1, time.Now().Add(10*time.Second)))
	ctx := testCtx(t)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if err := c.proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 5*time.Second, "the supervisor stopped", func() bool { return stopped(t, c.proc.Pid) })
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = Dial(short, fx.socket)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial of a stopped supervisor: %v, want a deadline", err)
	}
	if err := c.proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("status once continued: %v", err)
	}

	if err := c.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	if ws, ok := reap(t, st.PID, 5*time.Second); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the child after its supervisor's SIGKILL: adopted %v, status %#x; want killed", ok, ws)
	}
	if _, err := c.Status(ctx); !errors.Is(err, ErrNoSupervisor) {
		t.Fatalf("status on the old connection: %v, want %v", err, ErrNoSupervisor)
	}
	_, err = Dial(ctx, fx.socket)
	if !errors.Is(err, ErrNoSupervisor) || !strings.Contains(err.Error(), "nothing listens") {
		t.Fatalf("dial of a stale socket: %v", err)
	}
	t.Log(err)
	if _, err := os.Stat(fx.socket); err != nil {
		t.Fatalf("the stale socket: %v", err)
	}

	c2 := fx.start(t, fx.config(1, time.Now().Add(10*time.Second)))
	if _, err := Start(ctx, fx.config(1, time.Now().Add(10*time.Second))); err == nil || !strings.Contains(err.Error(), "another supervisor") {
		t.Fatalf("a second supervisor on a live socket: %v", err)
	}
	if _, err := c2.Status(ctx); err != nil {
		t.Fatalf("the live supervisor after the second was refused: %v", err)
	}
}

// Kill ends the child, also a frozen one; Status reports how; nothing but
// Status, Wait and Release is accepted then; Release ends the supervisor,
// which removes its socket and pid file.
func TestKillAndRelease(t *testing.T) {
	for _, frozen := range []bool{false, true} {
		t.Run(fmt.Sprintf("frozen=%v", frozen), func(t *testing.T) {
			fx := newFixture(t)
			lease := 10 * time.Second
			if frozen {
				// Frozen soon, but not before the start is done: under
				// load a start took over 100 ms.
				lease = time.Second
			}
			c := fx.start(t, fx.config(1, time.Now().Add(lease)))
			ctx := testCtx(t)
			if frozen {
				waitState(t, c, StateFrozen)
			}
			if _, err := c.Release(ctx); !errors.Is(err, ErrAlive) || !errors.Is(err, driver.ErrInvalidState) {
				t.Fatalf("release of a live child: %v, want %v", err, ErrAlive)
			}
			st, err := c.Kill(ctx)
			if err != nil || st.State != StateExited || st.Exit == nil || st.Exit.Signal != syscall.SIGKILL {
				t.Fatalf("kill: %v, %+v", err, st)
			}
			if _, err := c.Extend(ctx, 1, time.Now().Add(time.Second)); !errors.Is(err, ErrExited) {
				t.Fatalf("extend after kill: %v", err)
			}
			if _, err := c.Arm(ctx, 2, time.Now().Add(time.Second)); !errors.Is(err, ErrExited) {
				t.Fatalf("arm after kill: %v", err)
			}
			if _, err := c.Signal(ctx, syscall.SIGCONT); err == nil {
				t.Fatal("SIGCONT accepted")
			}
			if _, err := c.Signal(ctx, syscall.SIGTERM); err != nil {
				t.Fatalf("signal after kill: %v", err)
			}
			if st, err = c.Release(ctx); err != nil || st.Exit == nil || st.Exit.Signal != syscall.SIGKILL {
				t.Fatalf("release: %v, %+v", err, st)
			}
			select {
			case <-c.exited:
			default:
				t.Fatal("Release returned before the supervisor exited")
			}
			for _, path := range []string{fx.socket, fx.pidFile} {
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s after release: %v", path, err)
				}
			}
			if _, err := Dial(ctx, fx.socket); !errors.Is(err, ErrNoSupervisor) {
				t.Fatalf("dial after release: %v", err)
			}
		})
	}
}

// A child that exits on its own, or of a signal it was sent, is reported
// with its exit code or signal until released.
func TestChildExits(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		sig  syscall.Signal
		want Exit
	}{
		{"code", []string{"-lines", "5", "-code", "3"}, 0, Exit{Code: 3}},
		{"SIGTERM", nil, syscall.SIGTERM, Exit{Code: -1, Signal: syscall.SIGTERM}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t)
			c := fx.start(t, fx.config(1, time.Now().Add(10*time.Second), tc.args...))
			ctx := testCtx(t)
			if tc.sig != 0 {
				if _, err := c.Signal(ctx, tc.sig); err != nil {
					t.Fatal(err)
				}
			}
			st, err := c.Wait(ctx)
			if err != nil || st.State != StateExited || st.Exit == nil || *st.Exit != tc.want {
				t.Fatalf("wait: %v, %+v; want exited, %s", err, st, tc.want)
			}
			if st, err = c.Status(ctx); err != nil || *st.Exit != tc.want {
				t.Fatalf("status: %v, %+v", err, st)
			}
			if _, err := c.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// What cannot start says why and leaves nothing behind.
func TestStartRefused(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	if _, err := Start(ctx, fx.config(1, time.Now().Add(-time.Millisecond))); !errors.Is(err, driver.ErrLeaseExpired) {
		t.Fatalf("start with a past lease end: %v", err)
	}
	cfg := fx.config(1, time.Now().Add(time.Second))
	cfg.Child = []string{fx.dir + "/no-such-qemu"}
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "no-such-qemu") {
		t.Fatalf("start of a missing child: %v", err)
	}
	if _, err := os.Stat(fx.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after a failed start: %v", err)
	}
	// The supervisor's own check, for a lease that ends on the way.
	if code := Main([]string{"-socket", fx.socket, "-log", fx.log, "-lease-end", "1", "--", "true"}); code != exitError {
		t.Fatalf("Main with a lease ended long ago: exit %d", code)
	}
	for _, args := range [][]string{nil, {"-socket", fx.socket}, {"-socket", fx.socket, "-lease-end", "-1", "--", "true"}} {
		if code := Main(args); code != exitUsage {
			t.Fatalf("Main(%q): exit %d, want %d", args, code, exitUsage)
		}
	}
}

func TestStatState(t *testing.T) {
	for stat, want := range map[string]byte{
		"12 (qemu-system-x86) T 1 12":  'T',
		"12 (a) (b) R 1 12":            'R',
		"12 (CPU 0/TCG) S 1 12":        'S',
		"12 (x":                        '?',
		"":                             '?',
		"7 (worker) t 1 12 0 0 0 0 0 ": 't',
	} {
		if got := statState([]byte(stat)); got != want {
			t.Errorf("statState(%q) = %c, want %c", stat, got, want)
		}
	}
}

func TestMonoRoundTrip(t *testing.T) {
	for _, d := range []time.Duration{-time.Hour, 0, time.Millisecond, time.Hour} {
		want := time.Now().Add(d)
		got := TimeFromMono(MonoFromTime(want))
		// Both conversions err early, by the time between two clock reads.
		if diff := want.Sub(got); diff < 0 || diff > time.Millisecond {
			t.Errorf("%s from now: round trip off by %s", d, diff)
		}
	}
}

// With KillAfter, a child frozen that long past its lease end with no
// renewal is killed, and its exit says so; a renewal before then thaws it
// and cancels the kill, which a later freeze arms again.
func TestKillAfter(t *testing.T) {
	fx := newFixture(t)
	cfg := fx.config(1, time.Now().Add(time.Second))
	cfg.KillAfter = 400 * time.Millisecond
	c := fx.start(t, cfg)
	ctx := testCtx(t)

	// Thawed 200 ms into the freeze: not killed, not at the old kill time
	// either.
	st := waitState(t, c, StateFrozen)
	frozen := time.Now()
	time.Sleep(200 * time.Millisecond) // a deliberate part of the kill delay
	if _, err := c.Extend(ctx, 1, time.Now().Add(time.Second)); err != nil {
		t.Fatalf("extend of a frozen child within the kill delay: %v", err)
	}
	waitLines(t, fx, MonoFromTime(frozen)+int64(500*time.Millisecond), "a line past the first kill time")
	if st, err := c.Status(ctx); err != nil || st.State != StateRunning {
		t.Fatalf("after a thaw within the kill delay: %s, %v; want running", st.State, err)
	}

	// Frozen again, with no renewal: killed, and only after the delay.
	waitState(t, c, StateFrozen)
	w := wire(t, c)
	st = waitState(t, c, StateExited)
	killed := MonoNow()
	if st.Exit == nil || !st.Exit.Fenced || st.Exit.Signal != syscall.SIGKILL {
		t.Fatalf("exit %+v, want killed by the supervisor", st.Exit)
	}
	if d := time.Duration(killed - w.LeaseEnd); d < cfg.KillAfter {
		t.Errorf("killed %s past the lease end, before the kill delay %s", d, cfg.KillAfter)
	}
	if !strings.Contains(st.Exit.String(), "frozen past its lease") {
		t.Errorf("the exit reads %q", st.Exit)
	}
}
