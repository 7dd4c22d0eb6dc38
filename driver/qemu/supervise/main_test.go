//go:build linux

package supervise

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/haven-ha/haven/internal/waitfor"
)

// helperEnv makes the test binary one of the processes the tests need
// instead of running tests; its first argument says which (see helper).
// The supervisor's child inherits it, as a QEMU would inherit haven's
// environment.
const helperEnv = "HAVEN_SUPERVISE_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helper(os.Args[1:]))
	}
	// Orphans of the processes the tests start (a supervisor whose starter
	// was killed, a child whose supervisor was killed) are adopted by this
	// process instead of pid 1, so a test can reap them and see how they
	// died, and none is left behind as a zombie.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func helper(args []string) int {
	role := ""
	if len(args) > 0 {
		role, args = args[0], args[1:]
	}
	switch role {
	case "supervise": // what `haven qemu-supervise` is
		return Main(args)
	case "child":
		return childMain(args)
	case "starter":
		return starterMain(args)
	}
	fmt.Fprintf(os.Stderr, "%s: unknown helper role %q\n", helperEnv, role)
	return 2
}

// childMain stands in for QEMU: it appends "N MONO" to -out every -tick,
// MONO being the CLOCK_MONOTONIC time at which it wrote line N, so that
// every line is evidence of execution at that time. After -lines lines
// (0: never) it exits with -code.
func childMain(args []string) int {
	fs := flag.NewFlagSet("child", flag.ContinueOnError)
	out := fs.String("out", "", "")
	tick := fs.Duration("tick", 2*time.Millisecond, "")
	lines := fs.Int("lines", 0, "")
	code := fs.Int("code", 0, "")
	if fs.Parse(args) != nil {
		return 2
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for n := 1; ; n++ {
		// One write per line: a reader sees whole lines, and at most a
		// last one without its newline, which it skips.
		if _, err := fmt.Fprintf(f, "%d %d\n", n, MonoNow()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if *lines > 0 && n >= *lines {
			return *code
		}
		time.Sleep(*tick) // the child's pace, not a test's wait
	}
}

// starterMain stands in for an agent: it starts a supervisor (whose child
// is the child role) in -dir, prints "ready SUPERVISOR_PID CHILD_PID", and
// renews the lease to -lease from now every -every until it is killed.
func starterMain(args []string) int {
	fs := flag.NewFlagSet("starter", flag.ContinueOnError)
	dir := fs.String("dir", "", "")
	lease := fs.Duration("lease", 150*time.Millisecond, "")
	every := fs.Duration("every", 30*time.Millisecond, "")
	if fs.Parse(args) != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Start(ctx, fixtureIn(*dir).config(1, time.Now().Add(*lease)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 1
	}
	st, err := c.Status(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "status:", err)
		return 1
	}
	fmt.Printf("ready %d %d\n", st.SupervisorPID, st.PID)
	for {
		time.Sleep(*every) // the renewal period
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if _, err := c.Extend(rctx, 1, time.Now().Add(*lease)); err != nil {
			fmt.Fprintln(os.Stderr, "extend:", err)
		}
		cancel()
	}
}

// helperEnviron is the environment of a helper process. A race-enabled
// binary sleeps a second before it exits (the race runtime's
// atexit_sleep_ms), which would make every exit the tests wait for a
// second long.
func helperEnviron() []string {
	return append(os.Environ(), helperEnv+"=1", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
}

// fixture is one supervised child's directory: the control socket, the
// child's output, the supervisor's log and pid file.
type fixture struct {
	dir, socket, out, log, pidFile string
}

func newFixture(t *testing.T) *fixture { return fixtureIn(t.TempDir()) }

func fixtureIn(dir string) *fixture {
	return &fixture{
		dir:     dir,
		socket:  filepath.Join(dir, "ctl.sock"),
		out:     filepath.Join(dir, "out"),
		log:     filepath.Join(dir, "supervise.log"),
		pidFile: filepath.Join(dir, "supervise.pid"),
	}
}

// config supervises the child role, with its extra arguments, at epoch
// until leaseEnd (zero: unarmed).
func (fx *fixture) config(epoch uint64, leaseEnd time.Time, childArgs ...string) StartConfig {
	return StartConfig{
		Command: []string{os.Args[0], "supervise"},
		Env:     helperEnviron(),
		Socket:  fx.socket, LogFile: fx.log, PIDFile: fx.pidFile,
		Epoch: epoch, LeaseEnd: leaseEnd,
		Child: append([]string{os.Args[0], "child", "-out", fx.out}, childArgs...),
	}
}

// start runs a supervisor for the test. Cleanup kills what is left of it
// and its child, reaps both, and shows the supervisor's log if the test
// failed.
func (fx *fixture) start(t *testing.T, cfg StartConfig) *Client {
	t.Helper()
	c, err := Start(testCtx(t), cfg)
	if err != nil {
		fx.showLog(t)
		t.Fatal(err)
	}
	st, err := c.Status(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		_ = c.proc.Kill() // os.ErrProcessDone once released
		<-c.exited
		// Reaped by the supervisor, or adopted by this process if the
		// supervisor was killed, and killed by Pdeathsig.
		reap(t, st.PID, 5*time.Second)
		if t.Failed() {
			fx.showLog(t)
		}
	})
	return c
}

func (fx *fixture) showLog(t *testing.T) {
	b, _ := os.ReadFile(fx.log)
	t.Logf("supervisor log %s:\n%s", fx.log, b)
}

// line is one line of the child's output.
type line struct {
	n    int
	mono int64
}

// lines reads the child's output so far.
func (fx *fixture) lines(t *testing.T) []line {
	t.Helper()
	f, err := os.Open(fx.out)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ls []line
	r := bufio.NewReader(f)
	for {
		s, err := r.ReadString('\n')
		if err != nil {
			return ls // EOF, after at most a line still being written
		}
		n, mono, ok := strings.Cut(strings.TrimSpace(s), " ")
		var l line
		var err1, err2 error
		l.n, err1 = strconv.Atoi(n)
		l.mono, err2 = strconv.ParseInt(mono, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("bad line %q in %s", s, fx.out)
		}
		ls = append(ls, l)
	}
}

// last is the child's last line; zero if it wrote none.
func (fx *fixture) last(t *testing.T) line {
	ls := fx.lines(t)
	if len(ls) == 0 {
		return line{}
	}
	return ls[len(ls)-1]
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitState polls the supervisor until the child is in state want.
func waitState(t *testing.T, c *Client, want State) Status {
	t.Helper()
	var st Status
	waitfor.Cond(t, 5*time.Second, "the child "+string(want), func() bool {
		var err error
		if st, err = c.Status(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		return st.State == want
	})
	return st
}

// wire is the child's status as the supervisor sent it, its times exact
// CLOCK_MONOTONIC readings rather than converted to time.Time.
func wire(t *testing.T, c *Client) wireStatus {
	t.Helper()
	w, err := c.call(testCtx(t), request{Op: opStatus})
	if err != nil {
		t.Fatal(err)
	}
	return *w
}

// waitLines waits until the child has written a line after mono.
func waitLines(t *testing.T, fx *fixture, after int64, what string) {
	t.Helper()
	waitfor.Cond(t, 5*time.Second, what, func() bool { return fx.last(t).mono > after })
}

// steady checks that cond holds throughout d: the test of "nothing
// happens", which no condition to wait for can express. The loop's sleeps
// pace the checks; the window is the observation.
func steady(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if !cond() {
			t.Fatalf("%s: no longer so", what)
		}
	}
}

// stopped reports whether every thread of pid is stopped, from /proc.
func stopped(t *testing.T, pid int) bool {
	t.Helper()
	ok, err := threadsStopped(pid)
	if err != nil {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	return ok
}

// reap waits for pid, an orphan this process adopted as subreaper, to
// exit, and says how; ok is false if pid is not a child of this process
// (its parent reaped it). One still alive after within is killed: until
// it is reaped its pid cannot belong to another process.
func reap(t *testing.T, pid int, within time.Duration) (ws unix.WaitStatus, ok bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return ws, false
		case err != nil:
			t.Errorf("wait4 %d: %v", pid, err)
			return ws, false
		case got == pid:
			return ws, true
		}
		if time.Now().After(deadline) {
			t.Errorf("pid %d still alive after %s: killing it", pid, within)
			_ = unix.Kill(pid, unix.SIGKILL)
			_, err := unix.Wait4(pid, &ws, 0, nil)
			return ws, err == nil
		}
		time.Sleep(time.Millisecond) // polling the condition, within the bound
	}
}
