package supervise

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/haven-ha/haven/driver"
)

const (
	// readyTimeout bounds Start's wait for the supervisor to report ready,
	// when the caller's context allows longer.
	readyTimeout = 10 * time.Second
	// maxSocketPath is the longest path a unix socket address holds.
	maxSocketPath = 107
)

// StartConfig says how to run a supervisor and its child.
type StartConfig struct {
	// Command runs the supervisor: the haven binary and its hidden
	// subcommand, {os.Args[0], "qemu-supervise"}, which hands the rest of
	// its arguments to Main. Start appends Main's flags and the child's
	// argv.
	Command []string
	// Env is the supervisor's environment, which the child inherits; nil
	// means this process's.
	Env []string
	// Socket is the control socket's path.
	Socket string
	// LogFile, if set, receives the supervisor's log and the child's
	// stdout and stderr; otherwise they go to /dev/null.
	LogFile string
	// PIDFile, if set, is where the supervisor writes its pid, for a
	// caller that finds it not answering and must kill it (its child dies
	// with it). Check that the pid is still a supervisor before using it.
	PIDFile string
	// Epoch is the child's epoch.
	Epoch uint64
	// LeaseEnd is the child's first lease end, from time.Now(); zero
	// means no lease yet (StateUnarmed).
	LeaseEnd time.Time
	// Child is the child's argv; the supervisor looks Child[0] up in PATH.
	Child []string
	// KillAfter, if positive, is how long the child may stay frozen past
	// its lease end before the supervisor kills it: a frozen QEMU holds
	// its images' locks, which the group's restart on another node needs.
	KillAfter time.Duration
}

func (cfg StartConfig) check() error {
	switch {
	case len(cfg.Command) == 0:
		return errors.New("supervise: StartConfig.Command is empty")
	case cfg.Socket == "":
		return errors.New("supervise: StartConfig.Socket is empty")
	case len(cfg.Socket) > maxSocketPath:
		return fmt.Errorf("supervise: socket path %s is longer than the %d bytes a unix socket address holds", cfg.Socket, maxSocketPath)
	case len(cfg.Child) == 0:
		return errors.New("supervise: StartConfig.Child is empty")
	}
	return nil
}

// Start runs a supervisor, which starts the child, and returns a client
// connected to it once its control socket answers. The supervisor runs in
// a session of its own and outlives this process; the child runs only as
// long as the supervisor does. Start refuses a lease end that has passed
// (driver.ErrLeaseExpired) and a socket another supervisor answers on; a
// socket file left by a killed supervisor is replaced. If the supervisor
// does not report ready within ctx (and 10 s), it is killed, and the
// child with it.
func Start(ctx context.Context, cfg StartConfig) (*Client, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	var leaseEnd int64
	if !cfg.LeaseEnd.IsZero() {
		if left := time.Until(cfg.LeaseEnd); left <= 0 {
			return nil, fmt.Errorf("supervise: start with a lease that ended %s ago: %w", -left, driver.ErrLeaseExpired)
		}
		leaseEnd = MonoFromTime(cfg.LeaseEnd)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()

	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	args := slices.Clone(cfg.Command[1:])
	args = append(args, "-socket", cfg.Socket, "-epoch", strconv.FormatUint(cfg.Epoch, 10),
		"-lease-end", strconv.FormatInt(leaseEnd, 10), "-ready-fd", "3")
	if cfg.LogFile != "" {
		args = append(args, "-log", cfg.LogFile)
	}
	if cfg.KillAfter > 0 {
		args = append(args, "-kill-after", cfg.KillAfter.String())
	}
	if cfg.PIDFile != "" {
		args = append(args, "-pidfile", cfg.PIDFile)
	}
	args = append(append(args, "--"), cfg.Child...)
	cmd := exec.Command(cfg.Command[0], args...)
	cmd.Env = cfg.Env
	cmd.ExtraFiles = []*os.File{pw} // fd 3
	// A session of its own, so that no signal to this process's group or
	// terminal reaches it, and no Pdeathsig: it must outlive this
	// process. Its stdin, stdout and stderr are /dev/null, never a pipe
	// to this process, which may die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, fmt.Errorf("supervise: starting the supervisor: %w", err)
	}
	// Reap it when it exits, while this process lives.
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	kill := func() {
		_ = cmd.Process.Kill() // the child dies with it
		<-exited
	}

	rep, err := readReady(ctx, pr)
	pr.Close()
	if err == nil {
		err = rep.err()
	}
	if err != nil {
		kill()
		return nil, fmt.Errorf("supervise: start on %s: %w", cfg.Socket, err)
	}
	c := &Client{socket: cfg.Socket, proc: cmd.Process, exited: exited}
	if _, err := c.Status(ctx); err != nil {
		c.Close()
		kill()
		return nil, err
	}
	return c, nil
}

// readReady reads the supervisor's readiness report: a reply with its
// status once its socket listens and the child runs, or with the reason it
// could not start. The pipe closing without one means it died.
func readReady(ctx context.Context, r *os.File) (reply, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = r.SetReadDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := bufio.NewReader(r).ReadBytes('\n')
	switch {
	case errors.Is(err, io.EOF):
		return reply{}, errors.New("the supervisor exited before it was ready (its log says why)")
	case err != nil && ctx.Err() != nil:
		return reply{}, fmt.Errorf("the supervisor did not report ready: %w", ctx.Err())
	case err != nil:
		return reply{}, err
	}
	var rep reply
	if err := json.Unmarshal(line, &rep); err != nil {
		return reply{}, fmt.Errorf("the supervisor's readiness report %q: %w", line, err)
	}
	return rep, nil
}

// Client talks to one supervisor over its control socket. Its methods are
// safe for concurrent use and take turns on one connection; after an
// error of the connection the next call dials again. Closing a client, or
// this process dying, changes nothing for the supervisor.
type Client struct {
	socket string
	proc   *os.Process   // the supervisor, if Start ran it
	exited chan struct{} // closed once Start's supervisor is reaped

	mu     sync.Mutex
	conn   net.Conn // nil until dialled, and after an error
	r      *bufio.Reader
	closed bool
}

// Dial connects to the supervisor on socket, for an agent that re-adopts
// the VMs it finds after a restart, and checks that it answers. A socket
// with nothing behind it gives ErrNoSupervisor: its supervisor was killed,
// and its child with it, or it never ran. A supervisor that does not
// answer within ctx (stopped, hung) gives ctx's error.
func Dial(ctx context.Context, socket string) (*Client, error) {
	c := &Client{socket: socket}
	if _, err := c.Status(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Status is a snapshot of the supervisor and its child.
type Status struct {
	State State
	// Epoch is the child's epoch: the initial one or the last Arm's.
	Epoch uint64
	// LeaseEnd is when the child freezes; zero while unarmed. It has a
	// monotonic reading: compare it with time.Now().
	LeaseEnd time.Time
	// FrozenAt is when the last freeze was confirmed (every thread of the
	// child stopped); zero unless frozen.
	FrozenAt time.Time
	// Freezes counts the lease ends the child was frozen at.
	Freezes uint64
	// PID is the child's, SupervisorPID the supervisor's.
	PID, SupervisorPID int
	// Exit is how the child ended; nil while it lives.
	Exit *Exit
}

// status converts the wire's CLOCK_MONOTONIC times with one pair of clock
// readings, so that differences between them are exact.
func (w *wireStatus) status() Status {
	now, mono := time.Now(), MonoNow()
	at := func(m int64) time.Time {
		if m == 0 {
			return time.Time{}
		}
		return now.Add(time.Duration(m - mono))
	}
	return Status{
		State: w.State, Epoch: w.Epoch, LeaseEnd: at(w.LeaseEnd), FrozenAt: at(w.FrozenAt),
		Freezes: w.Freezes, PID: w.PID, SupervisorPID: w.SupervisorPID, Exit: w.Exit,
	}
}

// Status asks where the child stands. A child past its lease end reads
// frozen.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return c.roundTrip(ctx, request{Op: opStatus})
}

// Extend moves the lease end to until (never backwards) and thaws a frozen
// child, or arms an unarmed one. It refuses, changing nothing, with
// driver.ErrLeaseExpired when until is not after now by the supervisor's
// clock at the moment of the thaw, with driver.ErrStaleEpoch when epoch is
// not the child's, and with ErrExited. The returned Status is the state
// right after, also on a refusal.
func (c *Client) Extend(ctx context.Context, epoch uint64, until time.Time) (Status, error) {
	return c.roundTrip(ctx, request{Op: opExtend, Epoch: epoch, Until: MonoFromTime(until)})
}

// Arm sets the child's epoch and a first lease at it, ending at until, and
// thaws it if frozen: for a migration's target, unarmed until the move is
// committed at a new epoch. An unarmed child accepts its own epoch or a
// higher one, an armed child only a higher one (driver.ErrStaleEpoch
// otherwise); until must be after now (driver.ErrLeaseExpired).
func (c *Client) Arm(ctx context.Context, epoch uint64, until time.Time) (Status, error) {
	return c.roundTrip(ctx, request{Op: opArm, Epoch: epoch, Until: MonoFromTime(until)})
}

// Signal sends the child SIGTERM or SIGKILL; no other signal. A frozen
// child acts on SIGTERM only once thawed; SIGKILL ends it at once.
func (c *Client) Signal(ctx context.Context, sig syscall.Signal) (Status, error) {
	name, ok := signalName(sig)
	if !ok {
		return Status{}, fmt.Errorf("supervise: signal %s: only SIGTERM and SIGKILL", sig)
	}
	return c.roundTrip(ctx, request{Op: opSignal, Signal: name})
}

// Wait returns once the child has exited, with its Status.Exit set, or
// with ctx's error.
func (c *Client) Wait(ctx context.Context) (Status, error) {
	for {
		wait := maxWait
		if d, ok := ctx.Deadline(); ok {
			// A little less than is left, so that the answer beats the
			// deadline.
			wait = min(wait, time.Until(d)*9/10)
		}
		st, err := c.roundTrip(ctx, request{Op: opWait, TimeoutMS: max(wait.Milliseconds(), 1)})
		if err != nil || st.Exit != nil {
			return st, err
		}
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("supervise: waiting for the child of %s: %w", c.socket, err)
		}
	}
}

// Kill sends the child SIGKILL and waits until it is gone.
func (c *Client) Kill(ctx context.Context) (Status, error) {
	if _, err := c.Signal(ctx, syscall.SIGKILL); err != nil {
		return Status{}, err
	}
	return c.Wait(ctx)
}

// Release ends the supervisor of a child that has exited, and closes c. It
// returns the child's last Status once the supervisor has removed its
// socket and pid file (and, if Start ran it, exited). While the child
// lives it refuses with ErrAlive.
func (c *Client) Release(ctx context.Context) (Status, error) {
	st, err := c.roundTrip(ctx, request{Op: opRelease})
	if err != nil {
		return st, err
	}
	c.mu.Lock()
	err = c.awaitEOF(ctx)
	c.closeLocked()
	c.mu.Unlock()
	if err != nil {
		return st, err
	}
	if c.exited != nil {
		select {
		case <-c.exited:
		case <-ctx.Done():
			return st, fmt.Errorf("supervise: %s released but still running: %w", c.socket, ctx.Err())
		}
	}
	return st, nil
}

// awaitEOF reads until the supervisor closes the connection, which it does
// once its socket and pid file are gone. With mu held.
func (c *Client) awaitEOF(ctx context.Context) error {
	if c.conn == nil {
		return nil // dropped after a cancellation: nothing to wait on
	}
	d, _ := ctx.Deadline()
	_ = c.conn.SetReadDeadline(d)
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	_, err := io.Copy(io.Discard, c.r)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("supervise: waiting for %s to exit: %w", c.socket, err)
	}
	return nil
}

// Close closes the connection. The supervisor and its child go on.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeLocked()
}

func (c *Client) closeLocked() error {
	c.closed = true
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn, c.r = nil, nil
	return err
}

var errClosed = errors.New("supervise: client closed")

// roundTrip sends one request and reads its reply: the Status in it (also
// on a refusal) and the refusal as an error.
func (c *Client) roundTrip(ctx context.Context, req request) (Status, error) {
	w, err := c.call(ctx, req)
	var st Status
	if w != nil {
		st = w.status()
	}
	return st, err
}

// call is roundTrip with the status as it came, in CLOCK_MONOTONIC.
func (c *Client) call(ctx context.Context, req request) (*wireStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	if c.conn == nil {
		conn, err := dial(ctx, c.socket)
		if err != nil {
			return nil, err
		}
		c.conn, c.r = conn, bufio.NewReader(conn)
	}
	rep, keep, err := c.exchange(ctx, req)
	if !keep {
		// Out of step (a reply not read), or a deadline that a late
		// cancellation may still move: the next call dials again.
		c.conn.Close()
		c.conn, c.r = nil, nil
	}
	if err != nil {
		return nil, err
	}
	return rep.Status, rep.err()
}

// exchange is roundTrip's I/O, with mu held; keep says whether the
// connection may serve the next request.
func (c *Client) exchange(ctx context.Context, req request) (rep reply, keep bool, err error) {
	conn := c.conn
	deadline, _ := ctx.Deadline() // zero: none
	if err := conn.SetDeadline(deadline); err != nil {
		return reply{}, false, err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	b, err := json.Marshal(req)
	if err != nil {
		panic(err) // a plain struct: cannot fail
	}
	_, err = conn.Write(append(b, '\n'))
	var line []byte
	if err == nil {
		line, err = c.r.ReadBytes('\n')
	}
	keep = stop() && err == nil
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return reply{}, false, fmt.Errorf("supervise: %s: %w", c.socket, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return reply{}, false, fmt.Errorf("supervise: %s does not answer: %w", c.socket, context.DeadlineExceeded)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return reply{}, false, fmt.Errorf("%w: %s: the connection ended (%v)", ErrNoSupervisor, c.socket, err)
	default:
		return reply{}, false, fmt.Errorf("supervise: %s: %w", c.socket, err)
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		return reply{}, false, fmt.Errorf("supervise: %s: bad reply %q: %w", c.socket, line, err)
	}
	if rep.Status != nil && rep.Status.Protocol != protocol {
		return reply{}, false, fmt.Errorf("supervise: %s speaks protocol %d, not %d", c.socket, rep.Status.Protocol, protocol)
	}
	return rep, keep, nil
}

// dial connects to socket. Nothing listening there is ErrNoSupervisor.
func dial(ctx context.Context, socket string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	switch {
	case err == nil:
		return conn, nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("%w: nothing listens on %s: a killed supervisor's socket, safe to remove", ErrNoSupervisor, socket)
	case errors.Is(err, syscall.ENOENT):
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoSupervisor, socket)
	}
	return nil, fmt.Errorf("supervise: %s: %w", socket, err)
}
