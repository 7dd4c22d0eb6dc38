package supervise

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/haven-ha/haven/internal/logging"
)

// Exit statuses of Main.
// StopAhead is how long before its lease end the supervisor stops the
// child: the contract is that a VM executes nothing from its lease end on,
// and the stop itself takes time (this process being scheduled, the
// signal reaching every thread; about half a millisecond on an idle host).
// Stopping early is always safe; a renewal in time never lets it happen.
const StopAhead = 10 * time.Millisecond

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

const (
	// stopConfirm bounds the wait for every thread of the child to show
	// stopped after SIGSTOP. A thread in uninterruptible sleep (an I/O in
	// the kernel) stops only once the I/O is done; it cannot run user code
	// before, as the signal is pending. Past the bound the child is marked
	// frozen all the same and the log says the stop was not confirmed.
	stopConfirm = time.Second
	// maxWait caps one wait request, so that the handler of a client that
	// went away does not linger.
	maxWait = time.Minute
	// maxLine bounds a request line.
	maxLine = 4096
	// writeTimeout bounds a reply to a client that does not read.
	writeTimeout = 10 * time.Second
	// timerEarly is how long before the freeze the timer fires, to
	// sleep the last stretch precisely (onTimer): the runtime's timers can
	// be up to a millisecond late.
	timerEarly = 2 * time.Millisecond
	// termGrace is how long a supervisor told to stop (SIGTERM) waits for
	// its killed child to be reaped before it exits anyway.
	termGrace = 5 * time.Second
)

// Main is the supervisor process; it returns its exit status. args are the
// flags below, then the child's argv (after "--"):
//
//	-socket PATH     control socket (required)
//	-epoch N         the child's epoch
//	-lease-end NS    lease end, CLOCK_MONOTONIC nanoseconds; 0: no lease yet
//	-log PATH        append the log, and the child's stdout and stderr, here
//	                 (default: stderr)
//	-pidfile PATH    write the supervisor's pid here; removed on a clean exit
//	-ready-fd N      report readiness as one reply line on this inherited
//	                 file descriptor, then close it (Start uses fd 3)
//
// The caller starts it in a session of its own (Setsid), so that a signal
// to the caller's process group does not reach it, and with no pipe to
// itself on stdout or stderr, which it would break by dying.
func Main(args []string) int {
	cfg, err := parseArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "qemu-supervise:", err)
		return exitUsage
	}
	var ready *os.File
	if cfg.readyFD >= 0 {
		// The child must not inherit it: it would hold the pipe open and
		// Start would not see it close if this process died.
		syscall.CloseOnExec(cfg.readyFD)
		ready = os.NewFile(uintptr(cfg.readyFD), "ready")
	}
	out := os.Stderr
	if cfg.logFile != "" {
		f, err := os.OpenFile(cfg.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			fmt.Fprintln(os.Stderr, "qemu-supervise:", err)
			report(ready, errorReply(err, nil))
			return exitError
		}
		defer f.Close()
		out = f
	}
	log := logging.Named(logging.New(out, slog.LevelInfo), "supervise").With("socket", cfg.socket)
	// A write to a broken pipe (stderr, when there is no log file) must
	// fail, not raise a SIGPIPE that ends this process and, by Pdeathsig,
	// the VM. Notify rather than Ignore: an ignored signal would stay
	// ignored in the child.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	s := newSupervisor(cfg, log)
	st, err := s.start(out)
	if err != nil {
		log.Error("not started", "err", err)
		report(ready, errorReply(err, nil))
		return exitError
	}
	report(ready, reply{Status: &st})
	return s.serve()
}

type config struct {
	socket, pidFile, logFile string
	epoch                    uint64
	leaseEnd                 int64
	killAfter                time.Duration
	readyFD                  int
	child                    []string
}

func parseArgs(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("qemu-supervise", flag.ContinueOnError)
	fs.StringVar(&c.socket, "socket", "", "control socket `path` (required)")
	fs.Uint64Var(&c.epoch, "epoch", 0, "the child's epoch")
	fs.Int64Var(&c.leaseEnd, "lease-end", 0, "lease end, CLOCK_MONOTONIC `nanoseconds`; 0: no lease yet")
	fs.StringVar(&c.logFile, "log", "", "append the log and the child's output to this `path` (default stderr)")
	fs.StringVar(&c.pidFile, "pidfile", "", "write the supervisor's pid to this `path`")
	fs.IntVar(&c.readyFD, "ready-fd", -1, "report readiness on this inherited `fd`")
	fs.DurationVar(&c.killAfter, "kill-after", 0, "kill the child once frozen this `long` past its lease end with no renewal (0: never)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.child = fs.Args()
	switch {
	case c.socket == "":
		return c, errors.New("-socket is required")
	case c.leaseEnd < 0:
		return c, fmt.Errorf("-lease-end %d is negative", c.leaseEnd)
	case c.killAfter < 0:
		return c, fmt.Errorf("-kill-after %s is negative", c.killAfter)
	case len(c.child) == 0:
		return c, errors.New("no child command (after --)")
	}
	return c, nil
}

// report writes the readiness reply to Start's pipe and closes it. An
// error is not worth more than the log line already written: a Start that
// cannot read it sees the pipe close.
func report(ready *os.File, r reply) {
	if ready == nil {
		return
	}
	_ = json.NewEncoder(ready).Encode(r)
	ready.Close()
}

// supervisor runs one child under a lease.
type supervisor struct {
	cfg config
	log *slog.Logger
	ln  net.Listener

	proc   *os.Process   // the child; set before startChild returns
	exited chan struct{} // closed once the child is reaped, with exit set

	release     chan struct{} // closed by an accepted Release
	releaseOnce sync.Once

	connMu sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool // shutdown has closed every connection

	// mu orders everything that touches the gate: the timer's freeze,
	// the check and thaw of Extend and Arm, and the reaper's record.
	mu       sync.Mutex
	state    State
	epoch    uint64
	leaseEnd int64 // CLOCK_MONOTONIC ns; 0 while unarmed
	frozenAt int64 // when the last freeze was confirmed; 0 unless frozen
	freezes  uint64
	exit     *Exit
	timer    *time.Timer // fires at leaseEnd; nil until the first lease
	// killTimer fires killAfter past the lease end of a frozen child;
	// nil while none is due. fenced: it killed the child.
	killTimer *time.Timer
	fenced    bool
}

func newSupervisor(cfg config, log *slog.Logger) *supervisor {
	s := &supervisor{
		cfg: cfg, log: log,
		exited:  make(chan struct{}),
		release: make(chan struct{}),
		conns:   map[net.Conn]struct{}{},
		state:   StateRunning,
		epoch:   cfg.epoch, leaseEnd: cfg.leaseEnd,
	}
	if cfg.leaseEnd == 0 {
		s.state = StateUnarmed
	}
	return s
}

// start claims the socket and starts the child under its lease. A lease
// that has already ended starts nothing.
func (s *supervisor) start(out *os.File) (wireStatus, error) {
	if now := MonoNow(); s.leaseEnd != 0 && now >= s.leaseEnd {
		return wireStatus{}, refuse(codeLeaseExpired, "start: the lease ended %s ago", time.Duration(now-s.leaseEnd))
	}
	ln, err := listen(s.cfg.socket)
	if err != nil {
		return wireStatus{}, err
	}
	s.ln = ln
	if s.cfg.pidFile != "" {
		if err := writePIDFile(s.cfg.pidFile); err != nil {
			ln.Close()
			return wireStatus{}, err
		}
	}
	if err := s.startChild(out); err != nil {
		ln.Close()
		s.removePIDFile()
		return wireStatus{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The lease may have ended while the child started: then the gate
	// closes at once.
	now := MonoNow()
	s.gate(now)
	s.schedule(now)
	s.log.Info("child started", "pid", s.proc.Pid, "argv", s.cfg.child, "epoch", s.epoch, "state", s.state, "lease_left", s.leaseLeft(now))
	return s.statusLocked(), nil
}

// startChild starts the child and a goroutine that reaps it.
func (s *supervisor) startChild(out *os.File) error {
	attr, err := childAttr()
	if err != nil {
		return err
	}
	cmd := exec.Command(s.cfg.child[0], s.cfg.child[1:]...)
	cmd.SysProcAttr = attr
	cmd.Stdout, cmd.Stderr = out, out
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked the child exits,
		// not the process, and a Go program's threads can exit while it
		// lives on (the runtime ends the thread of any goroutine that
		// returns locked to it). So the child is forked on a thread
		// locked to this goroutine, which keeps it until the child is
		// reaped and then returns locked: the thread ends after the child.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		s.proc = cmd.Process
		started <- nil
		_ = cmd.Wait() // the exit is in ProcessState
		s.reaped(cmd.ProcessState)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting %s: %w", s.cfg.child[0], err)
	}
	return nil
}

// reaped records how the child ended.
func (s *supervisor) reaped(ps *os.ProcessState) {
	e := Exit{Code: -1}
	if ps != nil {
		e.Code = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal()
		}
	}
	s.mu.Lock()
	e.Fenced = s.fenced
	s.state, s.exit, s.frozenAt = StateExited, &e, 0
	if s.timer != nil {
		s.timer.Stop()
	}
	s.stopKillTimer()
	s.mu.Unlock()
	close(s.exited)
	s.log.Info("child exited", "pid", s.proc.Pid, "how", e.String())
}

// gate is step 4 of the fencing contract, with mu held: a running child
// whose lease end has come is stopped before anything else is done under
// mu. Extend and Arm, the only ways to thaw it, check their new lease end
// against the clock and send SIGCONT under mu too, so no thaw can slip in
// between, and none can come late. SIGSTOP cannot be caught or ignored and
// stops every thread of the child; the kernel does it, it cannot hang.
func (s *supervisor) gate(now int64) {
	if s.state != StateRunning || now < s.leaseEnd-int64(StopAhead) {
		return
	}
	err := s.proc.Signal(syscall.SIGSTOP)
	signalled := MonoNow()
	confirmed := false
	if err == nil {
		confirmed = s.waitStopped()
	} else {
		// os.ErrProcessDone: the child is gone, the reaper says how; its
		// pid may be another process's already.
		s.log.Warn("stopping the child", "err", err)
	}
	s.state = StateFrozen
	s.frozenAt = MonoNow()
	s.freezes++
	// Warn: a lease that runs out means the agent's renewals stopped (a
	// partition, a stalled or dead agent), and the VM is fenced now.
	s.log.Warn("child frozen at its lease end", "epoch", s.epoch, "confirmed", confirmed,
		"signal_lag", time.Duration(signalled-s.leaseEnd), "stopped_lag", time.Duration(s.frozenAt-s.leaseEnd))
	if s.cfg.killAfter > 0 {
		s.killTimer = time.AfterFunc(time.Duration(s.leaseEnd-s.frozenAt)+s.cfg.killAfter, s.onKillTimer)
	}
}

// onKillTimer kills a child still frozen killAfter past its lease end. A
// frozen child runs no more, but it still holds what it opened: QEMU's
// image locks keep the group's restart on another node from opening the
// disks, and a node cut off from the cluster may never come back to
// kill it. The cluster restarts a group only failover_after past its
// owner's last grant, later than this (the agent sets killAfter below
// that gap), so a renewal that could still thaw the child comes first.
func (s *supervisor) onKillTimer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := MonoNow()
	if s.state != StateFrozen || now < s.leaseEnd+int64(s.cfg.killAfter) {
		return // thawed meanwhile, or gone
	}
	if err := s.proc.Signal(syscall.SIGKILL); err != nil {
		s.log.Warn("killing the frozen child", "err", err)
		return
	}
	s.fenced = true
	s.log.Warn("frozen child killed: no renewal came", "epoch", s.epoch, "past_lease_end", time.Duration(now-s.leaseEnd))
}

// stopKillTimer, with mu held, cancels a due kill.
func (s *supervisor) stopKillTimer() {
	if s.killTimer != nil {
		s.killTimer.Stop()
		s.killTimer = nil
	}
}

// waitStopped waits, within stopConfirm, until no thread of the child can
// execute, so that frozen means stopped and not "signal sent". Each thread
// stops as soon as it gets a CPU: within microseconds on an idle host, a
// few hundred on a busy one. /proc is polled because a stop is reported
// to the parent's wait only, which the reaper owns.
func (s *supervisor) waitStopped() bool {
	deadline := time.Now().Add(stopConfirm)
	pause := 20 * time.Microsecond
	for {
		ok, err := threadsStopped(s.proc.Pid)
		if ok {
			return true
		}
		if err != nil {
			s.log.Warn("reading the child's threads", "err", err)
			return false
		}
		if time.Now().After(deadline) {
			return false
		}
		sleepUntil(MonoNow() + int64(pause)) // time.Sleep would round up to 1 ms
		pause = min(2*pause, 250*time.Microsecond)
	}
}

// thaw continues a frozen child, with mu held.
func (s *supervisor) thaw() {
	if s.state != StateFrozen {
		return
	}
	s.stopKillTimer()
	if err := s.proc.Signal(syscall.SIGCONT); err != nil {
		s.log.Warn("continuing the child", "err", err)
	}
	s.state, s.frozenAt = StateRunning, 0
	s.log.Info("child thawed", "epoch", s.epoch, "lease_left", s.leaseLeft(MonoNow()))
}

// resume, with mu held and a lease end that was after now at the caller's
// check, thaws a frozen child and sets the timer. Had this process been
// paused between that check and here, the lease could have ended
// meanwhile: the gate runs again before the timer is set, so that the
// child is stopped now rather than when the timer fires.
func (s *supervisor) resume() {
	s.thaw()
	now := MonoNow()
	s.gate(now)
	s.schedule(now)
}

// schedule sets the timer to a running child's lease end, less
// timerEarly, with mu held.
func (s *supervisor) schedule(now int64) {
	if s.state != StateRunning {
		return
	}
	d := time.Duration(s.leaseEnd-now) - StopAhead - timerEarly
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.onTimer)
		return
	}
	s.timer.Reset(d)
}

// onTimer runs timerEarly before the freeze (StopAhead before the lease end) and sleeps the rest of the
// way on the lease's own clock (sleepUntil), without mu, so that an Extend
// meanwhile is not held up. A firing for a lease end that an Extend has
// since moved finds the lease valid and sets the timer again (Extend did
// too; once more is harmless).
func (s *supervisor) onTimer() {
	s.mu.Lock()
	end, running := s.leaseEnd, s.state == StateRunning
	s.mu.Unlock()
	if running {
		sleepUntil(end - int64(StopAhead))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := MonoNow()
	s.gate(now)
	s.schedule(now)
}

// extend is ExtendLease's check and thaw. now is read with mu held:
// reading it before would make the check as old as the wait for mu.
func (s *supervisor) extend(epoch uint64, until int64) (wireStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := MonoNow()
	s.gate(now)
	switch {
	case epoch != s.epoch:
		return s.statusLocked(), refuse(codeStaleEpoch, "extend at epoch %d: the child is at epoch %d", epoch, s.epoch)
	case s.state == StateExited:
		return s.statusLocked(), refuse(codeExited, "extend: the child is gone (%s)", s.exit)
	case until-int64(StopAhead) <= now:
		// A lease end this close would be stopped at once (StopAhead):
		// as good as passed.
		return s.statusLocked(), refuse(codeLeaseExpired, "extend to a lease end %s from now, within the stop's %s", time.Duration(until-now), StopAhead)
	}
	switch {
	case s.state == StateUnarmed:
		s.state, s.leaseEnd = StateRunning, until
		s.log.Info("armed by extend", "epoch", s.epoch, "lease_left", s.leaseLeft(now))
	case until > s.leaseEnd: // never backwards
		s.leaseEnd = until
	}
	s.resume()
	return s.statusLocked(), nil
}

// arm gives the child a new epoch and its first lease at that epoch: an
// unarmed child at its epoch or a higher one, an armed child at a higher
// one only (Extend renews a lease). The lease end is set as given, even
// earlier than the old one: it is a new lease, not a renewal.
func (s *supervisor) arm(epoch uint64, until int64) (wireStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := MonoNow()
	s.gate(now)
	armed := s.state != StateUnarmed
	switch {
	case epoch < s.epoch || armed && epoch == s.epoch:
		return s.statusLocked(), refuse(codeStaleEpoch, "arm at epoch %d: the child is at epoch %d (%s)", epoch, s.epoch, s.state)
	case s.state == StateExited:
		return s.statusLocked(), refuse(codeExited, "arm: the child is gone (%s)", s.exit)
	case until <= now:
		return s.statusLocked(), refuse(codeLeaseExpired, "arm with a lease end %s ago", time.Duration(now-until))
	}
	s.epoch, s.leaseEnd = epoch, until
	if s.state == StateUnarmed {
		s.state = StateRunning
	}
	s.log.Info("armed", "epoch", epoch, "lease_left", s.leaseLeft(now))
	s.resume()
	return s.statusLocked(), nil
}

// signal sends the child SIGTERM or SIGKILL.
func (s *supervisor) signal(name string) (wireStatus, error) {
	sig, ok := signals[name]
	if !ok {
		return s.status(), refuse(codeBadRequest, "signal %q: only TERM and KILL", name)
	}
	if err := s.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return s.status(), err
	}
	s.log.Info("signalled the child", "signal", name)
	return s.status(), nil
}

// wait returns once the child has exited, or after d.
func (s *supervisor) wait(d time.Duration) wireStatus {
	t := time.NewTimer(min(max(d, 0), maxWait))
	defer t.Stop()
	select {
	case <-s.exited:
	case <-t.C:
	}
	return s.status()
}

// releasable refuses a Release while the child lives: the supervisor is
// all that fences it.
func (s *supervisor) releasable() (wireStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != StateExited {
		return s.statusLocked(), refuse(codeAlive, "release: the child (pid %d) is %s; kill it first", s.proc.Pid, s.state)
	}
	return s.statusLocked(), nil
}

func (s *supervisor) status() wireStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A child past its lease reads frozen even before the timer fires.
	s.gate(MonoNow())
	return s.statusLocked()
}

func (s *supervisor) statusLocked() wireStatus {
	return wireStatus{
		Protocol: protocol, State: s.state, Epoch: s.epoch,
		LeaseEnd: s.leaseEnd, FrozenAt: s.frozenAt, Freezes: s.freezes,
		PID: s.proc.Pid, SupervisorPID: os.Getpid(), Exit: s.exit,
	}
}

// leaseLeft is for the log: how long the lease runs from now, or "none".
func (s *supervisor) leaseLeft(now int64) string {
	if s.leaseEnd == 0 {
		return "none"
	}
	return time.Duration(s.leaseEnd - now).String()
}

// serve answers clients until a Release, or until SIGTERM or SIGINT, which
// kill the child first so that nothing is left running unsupervised.
func (s *supervisor) serve() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go s.accept()
	select {
	case <-s.release:
		s.log.Info("released")
	case sig := <-term:
		s.log.Warn("killing the child and exiting", "signal", sig)
		_ = s.proc.Signal(syscall.SIGKILL)
		t := time.NewTimer(termGrace)
		select {
		case <-s.exited:
		case <-t.C:
		}
		t.Stop()
	}
	s.shutdown()
	return exitOK
}

// shutdown removes what the supervisor put on disk (closing a unix
// listener removes its socket file) and closes every connection, so that
// clients read EOF now.
func (s *supervisor) shutdown() {
	s.ln.Close()
	s.removePIDFile()
	s.connMu.Lock()
	defer s.connMu.Unlock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
}

func (s *supervisor) accept() {
	for {
		c, err := s.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of file descriptors or the like: retry, without spinning.
			s.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.connMu.Lock()
		if s.closed {
			s.connMu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.connMu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn answers one client's requests in order until it goes away. A
// client that goes away changes nothing: the lease, the timer and the
// child are the supervisor's alone.
//
// The connection that released the supervisor stays open until shutdown
// closes it with the others, so that its EOF tells the client the socket
// is gone.
func (s *supervisor) serveConn(c net.Conn) {
	released := false
	defer func() {
		if released {
			return
		}
		s.connMu.Lock()
		delete(s.conns, c)
		s.connMu.Unlock()
		c.Close()
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 512), maxLine)
	for sc.Scan() {
		var rep reply
		rep, released = s.handle(sc.Bytes())
		b, err := json.Marshal(rep)
		if err != nil {
			panic(err) // plain structs: cannot fail
		}
		_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(append(b, '\n')); err != nil {
			return
		}
		if released {
			s.releaseOnce.Do(func() { close(s.release) })
			return
		}
	}
}

// handle answers one request line; true means an accepted Release.
func (s *supervisor) handle(line []byte) (reply, bool) {
	var req request
	var st wireStatus
	var err error
	if jerr := json.Unmarshal(line, &req); jerr != nil {
		st, err = s.status(), refuse(codeBadRequest, "request: %v", jerr)
		req.Op = "?"
	} else {
		switch req.Op {
		case opStatus:
			st = s.status()
		case opExtend:
			st, err = s.extend(req.Epoch, req.Until)
		case opArm:
			st, err = s.arm(req.Epoch, req.Until)
		case opSignal:
			st, err = s.signal(req.Signal)
		case opWait:
			st = s.wait(time.Duration(req.TimeoutMS) * time.Millisecond)
		case opRelease:
			st, err = s.releasable()
		default:
			st, err = s.status(), refuse(codeBadRequest, "unknown op %q", req.Op)
		}
	}
	if err != nil {
		s.log.Info("refused", "op", req.Op, "err", err)
		return errorReply(err, &st), false
	}
	return reply{Status: &st}, req.Op == opRelease
}

// listen claims the control socket. A socket file already there is a live
// supervisor's, which answers a connect (this one then refuses to start:
// one child per socket), or was left by a killed one, which refuses it:
// that file is replaced.
func listen(path string) (net.Listener, error) {
	ln, err := net.Listen("unix", path)
	if errors.Is(err, syscall.EADDRINUSE) {
		c, derr := net.DialTimeout("unix", path, time.Second)
		if derr == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another supervisor answers on it", path)
		}
		if !errors.Is(derr, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("control socket %s is in use: %w", path, derr)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
		ln, err = net.Listen("unix", path)
	}
	if err != nil {
		return nil, err
	}
	// Whoever connects controls the VM.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func writePIDFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (s *supervisor) removePIDFile() {
	if s.cfg.pidFile != "" {
		if err := os.Remove(s.cfg.pidFile); err != nil {
			s.log.Warn("removing the pid file", "err", err)
		}
	}
}
