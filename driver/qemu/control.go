package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/haven-ha/haven/driver"
)

// A live move's state goes from QEMU to QEMU over TCP, in QEMU's own
// stream. The two drivers only agree on it over conn, in a few JSON
// lines:
//
//	source → target  hello     {vm, channels, postcopy}: the VM as the source runs it,
//	                           at its epoch, and the capabilities both QEMUs need
//	target → source  listen    {host, port}: where the target's QEMU waits for the stream
//	                 refuse    {code, error}: MigrateIn's refusal; no QEMU was left
//	source → target  postcopy  the source is paused before its switchover to post-copy,
//	                           which goes on only once the move is committed
//	target → source  verified  the target's QEMU loaded all of the state (or, after
//	                           postcopy, holds what it got and waits) and has not run
//	either way       failed    {error}: this end gave up; the other resumes or discards
//
// Nothing else crosses conn, so it needs no more bandwidth than a gRPC
// stream of the agent's carries with ease.
const (
	msgHello    = "hello"
	msgListen   = "listen"
	msgRefuse   = "refuse"
	msgVerified = "verified"
	msgPostcopy = "postcopy"
	msgFailed   = "failed"
)

// message is one control message; Type says which fields it carries.
type message struct {
	Type string `json:"type"`
	VM   *shape `json:"vm,omitempty"`
	// Channels (multifd) and Postcopy are the move's options that the
	// target's QEMU must match before it listens.
	Channels int    `json:"channels,omitempty"`
	Postcopy bool   `json:"postcopy,omitempty"`
	Host     string `json:"host,omitempty"`
	Port     string `json:"port,omitempty"`
	Code     string `json:"code,omitempty"`
	Error    string `json:"error,omitempty"`
}

// shape is what the two ends of a move must agree on, with the source's
// epoch: QEMU loads a stream only into the machine it came from (machine
// type, RAM, CPUs, devices), and fails late and obscurely otherwise. A
// state file's header carries it too.
type shape struct {
	ID          driver.VMID `json:"id"`
	Epoch       uint64      `json:"epoch"`
	Machine     string      `json:"machine"`
	MemoryBytes int64       `json:"memory_bytes"`
	VCPUs       int         `json:"vcpus"`
	Disks       []diskShape `json:"disks,omitempty"`
}

// diskShape is a disk as the guest's devices have it: at its slot (the
// device's LUN), the file and its format.
type diskShape struct {
	Slot   int    `json:"slot"`
	Path   string `json:"path"`
	Format string `json:"format"`
}

func shapeOf(spec driver.VMSpec, machine string) shape {
	s := shape{ID: spec.ID, Epoch: spec.Epoch, Machine: machine, MemoryBytes: spec.MemoryBytes, VCPUs: max(spec.VCPUs, 1)}
	for _, d := range spec.Disks {
		s.Disks = append(s.Disks, diskShape{Slot: d.Slot, Path: filepath.Clean(d.Path), Format: diskFormat(d)})
	}
	// In the order of the bus: a VM's list is in the order its disks
	// came, a spec's in the order of its resources.
	slices.SortFunc(s.Disks, func(a, b diskShape) int { return a.Slot - b.Slot })
	return s
}

// shape is the VM's, at its epoch now.
func (v *vm) shape() shape {
	v.mu.Lock()
	s := shapeOf(v.spec, v.machine)
	s.Epoch = v.epoch
	v.mu.Unlock()
	return s
}

// accepts refuses a source whose epoch is not older than spec's, since
// Activate's claims fence only an older one, and a source that is not the
// VM spec describes on this node's machine.
func accepts(spec driver.VMSpec, machine string, src shape) error {
	want := shapeOf(spec, machine)
	switch {
	case src.ID != want.ID:
		return fmt.Errorf("%w: the source sends vm %s", driver.ErrInvalidSpec, src.ID)
	case src.Epoch >= want.Epoch:
		return fmt.Errorf("%w: the source is at epoch %d, not older than %d", driver.ErrStaleEpoch, src.Epoch, want.Epoch)
	case src.Machine != want.Machine:
		return fmt.Errorf("%w: the source runs machine %s, this node builds %s", driver.ErrInvalidSpec, src.Machine, want.Machine)
	case src.MemoryBytes != want.MemoryBytes || src.VCPUs != want.VCPUs:
		return fmt.Errorf("%w: the source has %d bytes and %d vcpus, the spec %d and %d",
			driver.ErrInvalidSpec, src.MemoryBytes, src.VCPUs, want.MemoryBytes, want.VCPUs)
	case !slices.Equal(src.Disks, want.Disks):
		return fmt.Errorf("%w: the source's disks %v, the spec's %v", driver.ErrInvalidSpec, src.Disks, want.Disks)
	}
	return nil
}

// Refusal codes on the wire, so that the source's error is the driver
// error the target refused with.
var refusals = []struct {
	code string
	err  error
}{
	{"stale_epoch", driver.ErrStaleEpoch},
	{"invalid_spec", driver.ErrInvalidSpec},
	{"invalid_state", driver.ErrInvalidState},
}

func refusalCode(err error) string {
	for _, r := range refusals {
		if errors.Is(err, r.err) {
			return r.code
		}
	}
	return ""
}

// refusedError is a refusal of the other end.
type refusedError struct {
	msg string
	err error // the driver's sentinel, or nil
}

func (e *refusedError) Error() string { return "the target refused: " + e.msg }
func (e *refusedError) Unwrap() error { return e.err }

func refused(m message) error {
	e := &refusedError{msg: m.Error}
	for _, r := range refusals {
		if r.code == m.Code {
			e.err = r.err
		}
	}
	return e
}

func unexpected(m message, want string) error {
	return fmt.Errorf("control stream: got %q, want %s", m.Type, want)
}

// control is one end's side of conn. A goroutine reads the peer's
// messages into in, so that a wait on QEMU can also watch for the peer
// giving up or going away.
type control struct {
	conn io.ReadWriter
	in   chan received
	done chan struct{}
}

type received struct {
	m   message
	err error // the stream ended or broke; nothing follows
}

func newControl(conn io.ReadWriter) *control {
	c := &control{conn: conn, in: make(chan received), done: make(chan struct{})}
	go c.read()
	return c
}

func (c *control) read() {
	dec := json.NewDecoder(c.conn)
	for {
		var r received
		if err := dec.Decode(&r.m); err != nil {
			r.err = fmt.Errorf("control stream: %w", err)
		}
		select {
		case c.in <- r:
		case <-c.done:
			return
		}
		if r.err != nil {
			return
		}
	}
}

func (c *control) send(m message) error {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // strings and numbers always marshal
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("control stream: %w", err)
	}
	return nil
}

// next waits for the peer's next message.
func (c *control) next(ctx context.Context) (message, error) {
	select {
	case r := <-c.in:
		return r.m, r.err
	case <-ctx.Done():
		return message{}, ctx.Err()
	}
}

// tell sends a last word that the peer may no longer read: a conn with
// deadlines gives it a second, so that a peer gone silent cannot hold up
// the call's return.
func (c *control) tell(m message) {
	if dl, ok := c.conn.(interface{ SetWriteDeadline(time.Time) error }); ok {
		_ = dl.SetWriteDeadline(time.Now().Add(time.Second))
	}
	_ = c.send(m)
}

// close ends the reader: at once on a conn with deadlines, otherwise when
// the caller ends conn, as it does once the call returns.
func (c *control) close() {
	close(c.done)
	if dl, ok := c.conn.(interface{ SetReadDeadline(time.Time) error }); ok {
		_ = dl.SetReadDeadline(time.Unix(1, 0))
	}
}

// unblockOnCancel makes a read or write of conn blocked when ctx ends
// return, if conn has deadlines (a net.Conn); any other conn ends with
// ctx by the contract (a gRPC stream of ctx).
func unblockOnCancel(ctx context.Context, conn any) (stop func() bool) {
	dl, ok := conn.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { _ = dl.SetDeadline(time.Unix(1, 0)) })
}

// cause puts the context's cause in front of err if the context ended:
// the I/O error of an unblocked conn says less than why it was unblocked.
func cause(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w: %v", context.Cause(ctx), err)
	}
	return err
}
