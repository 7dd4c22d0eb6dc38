package supervise

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/haven-ha/haven/driver"
)

// protocol is the version of the control protocol, in every Status. A
// restarted agent may be a newer haven than the supervisors it re-adopts;
// Dial refuses one that speaks another version rather than guess.
const protocol = 1

// Ops of the control protocol: one JSON request per line, one reply line
// each, in order. See the package documentation.
const (
	opStatus  = "status"
	opExtend  = "extend"
	opArm     = "arm"
	opSignal  = "signal"
	opWait    = "wait"
	opRelease = "release"
)

// request is one line a client sends. Until is CLOCK_MONOTONIC nanoseconds.
type request struct {
	Op        string `json:"op"`
	Epoch     uint64 `json:"epoch,omitempty"`
	Until     int64  `json:"until,omitempty"`
	Signal    string `json:"signal,omitempty"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
}

// reply is one line the supervisor answers with: the state as of the
// request (taken in the same critical section as the request's effect, so
// a refused Extend's reply shows the child frozen if it is), and an error
// with its code if the request was refused. The readiness report that
// Start reads is a reply too.
type reply struct {
	Status *wireStatus `json:"status,omitempty"`
	Code   string      `json:"code,omitempty"`
	Error  string      `json:"error,omitempty"`
}

// wireStatus is Status as it crosses the socket: times in CLOCK_MONOTONIC
// nanoseconds.
type wireStatus struct {
	Protocol      int    `json:"protocol"`
	State         State  `json:"state"`
	Epoch         uint64 `json:"epoch"`
	LeaseEnd      int64  `json:"lease_end"`
	FrozenAt      int64  `json:"frozen_at,omitempty"`
	Freezes       uint64 `json:"freezes"`
	PID           int    `json:"pid"`
	SupervisorPID int    `json:"supervisor_pid"`
	Exit          *Exit  `json:"exit,omitempty"`
}

// Error codes of a refused request.
const (
	codeLeaseExpired = "lease_expired"
	codeStaleEpoch   = "stale_epoch"
	codeExited       = "exited"
	codeAlive        = "alive"
	codeBadRequest   = "bad_request"
	codeFailed       = "failed"
)

var (
	// ErrNoSupervisor: nothing answers on the control socket. Either no
	// supervisor ever listened there, or it was killed: then its child
	// was killed with it (Pdeathsig), and the socket file it left refuses
	// connections. Start at the same path replaces such a file.
	ErrNoSupervisor = errors.New("no supervisor")
	// ErrExited: the child has exited; only Status, Wait and Release
	// still mean something. It is a driver.ErrInvalidState.
	ErrExited = fmt.Errorf("child has exited: %w", driver.ErrInvalidState)
	// ErrAlive: Release while the child lives. Kill it first. It is a
	// driver.ErrInvalidState.
	ErrAlive = fmt.Errorf("child is alive: %w", driver.ErrInvalidState)
)

// The supervisor refuses with driver.ErrLeaseExpired (the lease end given
// is not after now) and driver.ErrStaleEpoch (the epoch does not match)
// themselves: the driver passes them on as they are.

// codeError is a refusal on its way to the wire.
type codeError struct {
	code, msg string
}

func (e *codeError) Error() string { return e.msg }

func refuse(code, format string, args ...any) error {
	return &codeError{code: code, msg: fmt.Sprintf(format, args...)}
}

// errorReply is the reply to a refused request.
func errorReply(err error, st *wireStatus) reply {
	var ce *codeError
	if errors.As(err, &ce) {
		return reply{Status: st, Code: ce.code, Error: ce.msg}
	}
	return reply{Status: st, Code: codeFailed, Error: err.Error()}
}

// err is the reply's refusal as an error a caller tests with errors.Is.
func (r reply) err() error {
	var sentinel error
	switch r.Code {
	case "":
		return nil
	case codeLeaseExpired:
		sentinel = driver.ErrLeaseExpired
	case codeStaleEpoch:
		sentinel = driver.ErrStaleEpoch
	case codeExited:
		sentinel = ErrExited
	case codeAlive:
		sentinel = ErrAlive
	default:
		return fmt.Errorf("supervisor: %s", r.Error)
	}
	return fmt.Errorf("supervisor: %s: %w", r.Error, sentinel)
}

// signals are the signals a client may send the child. Not SIGCONT, which
// would open the gate behind the lease's back, nor SIGSTOP, which is the
// gate's.
var signals = map[string]syscall.Signal{"TERM": syscall.SIGTERM, "KILL": syscall.SIGKILL}

func signalName(sig syscall.Signal) (string, bool) {
	for name, s := range signals {
		if s == sig {
			return name, true
		}
	}
	return "", false
}

// State is where the child stands.
type State string

const (
	// StateUnarmed: no lease yet, so no gate. For a QEMU that must answer
	// QMP but runs no guest code until told to (a migration's target,
	// started with -incoming defer). Extend or Arm sets the first lease.
	StateUnarmed State = "unarmed"
	// StateRunning: the child runs, and is frozen at its lease end.
	StateRunning State = "running"
	// StateFrozen: the child is stopped (SIGSTOP) because its lease ended.
	// Only an Extend or Arm with a lease end after now thaws it.
	StateFrozen State = "frozen"
	// StateExited: the child is gone; Status.Exit says how.
	StateExited State = "exited"
)

// Exit is how the child ended.
type Exit struct {
	// Code is the exit status, or -1 when a signal killed the child.
	Code int `json:"code"`
	// Signal is the signal that killed it, or 0.
	Signal syscall.Signal `json:"signal,omitempty"`
	// Fenced: the supervisor killed the child itself, frozen KillAfter
	// past its lease end with no renewal.
	Fenced bool `json:"fenced,omitempty"`
}

func (e Exit) String() string {
	switch {
	case e.Fenced:
		return "killed by its supervisor, frozen past its lease with no renewal"
	case e.Signal != 0:
		return "killed by signal " + e.Signal.String()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}
