// Package qmp is a client of QEMU's machine protocol (QMP) on a unix
// socket, written for QEMU 7.2 and the few commands the qemu driver uses.
//
// A QMP socket serves one client at a time, so one Client carries every
// command and event of a QEMU process: commands go out with an "id" and
// any number of goroutines may wait on them at once; one reader goroutine
// matches replies to callers by id and queues events to subscribers. The
// reader never waits for a caller or a subscriber, so a slow consumer
// cannot stall a reply to another.
//
// The typed wrappers (QueryStatus, Migrate, QueryMigrate, BlockdevAdd...)
// use Go structs whose json tags are QEMU 7.2's field names; the package's
// contract tests check every tag against the schema a real QEMU reports
// (query-qmp-schema), because a misspelt tag does not fail: it reads zero.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is wrapped by every error of a call that could not complete
// because the connection ended: QEMU exited or closed the socket, the
// stream broke, or Close was called. The error also wraps the cause.
var ErrClosed = errors.New("qmp: connection closed")

// errClosedByClient is the cause recorded when Close ends the connection.
var errClosedByClient = errors.New("closed by the client")

// Error is a QMP error reply: QEMU received the command and refused it.
// Class is QEMU's error class (GenericError, CommandNotFound,
// DeviceNotFound...); Desc is for people, not for parsing.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Version is QEMU's version from the greeting.
type Version struct {
	Major, Minor, Micro int
	// Package is the distribution's build string, e.g.
	// "Debian 1:7.2+dfsg-7+deb12u18".
	Package string
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// Client is one QMP connection. Its methods are safe for concurrent use.
type Client struct {
	conn    *net.UnixConn
	log     *slog.Logger
	version Version

	// sendSlot holds the right to write to the socket: a command goes out
	// in one piece, never interleaved with another. It is a channel, not
	// a mutex, so that a caller whose ctx ends while another's write is
	// stuck (QEMU not reading) can give up.
	sendSlot chan struct{}
	// fdMu serialises commands that carry a file descriptor, from sending
	// to reply: QEMU 7.2 keeps only the last batch of descriptors it
	// received and closes an unclaimed earlier one when a new one arrives
	// (chardev/char-socket.c, tcp_chr_recv), so a second getfd in flight
	// could close the first one's descriptor or take its place.
	fdMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	subs    map[*Subscription]struct{}
	// cause is why the connection ended or is being ended; err is the
	// error every call returns once done is closed.
	cause error
	err   error

	done       chan struct{}
	readerDone chan struct{}
}

// reply is what the reader hands to a waiting caller.
type reply struct {
	ret  json.RawMessage
	qerr *Error
	err  error // the connection ended
}

// message is any line QEMU sends: the greeting, a reply or an event.
type message struct {
	QMP       *greeting       `json:"QMP"`
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

// Dial connects to the QMP socket at socketPath, reads QEMU's greeting
// and leaves capabilities negotiation mode, so that the Client accepts
// commands when Dial returns. ctx bounds all of it: QEMU accepts a
// second connection to a socket that already has a client but never
// greets it, so a Dial without a deadline can wait forever. log may be
// nil.
func Dial(ctx context.Context, socketPath string, log *slog.Logger) (*Client, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", socketPath, err)
	}
	conn := nc.(*net.UnixConn)

	// The greeting is read here, before the reader starts, by a read that
	// ctx's end cuts short.
	dec := json.NewDecoder(conn)
	var g message
	err = withDeadline(ctx, conn.SetReadDeadline, func() error { return dec.Decode(&g) })
	if err == nil && g.QMP == nil {
		err = errors.New("first message is not a QMP greeting")
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("qmp: greeting from %s: %w", socketPath, err)
	}

	v := g.QMP.Version
	c := &Client{
		conn: conn,
		log:  log.With("qmp", socketPath),
		version: Version{
			Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro,
			Package: v.Package,
		},
		sendSlot:   make(chan struct{}, 1),
		pending:    make(map[uint64]chan reply),
		subs:       make(map[*Subscription]struct{}),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	go c.read(dec)

	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: negotiate with %s: %w", socketPath, err)
	}
	c.log.Debug("qmp connected", "qemu", c.version.String(), "package", c.version.Package)
	return c, nil
}

// Version is the QEMU version the greeting announced.
func (c *Client) Version() Version { return c.version }

// Done is closed when the connection has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is nil while the connection is up; once Done is closed it is the
// error every call returns, wrapping ErrClosed and the cause: io.EOF when
// QEMU closed the socket, as it does when it exits, or ECONNRESET when it
// closed it with a command still unread.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection, fails every pending call with ErrClosed and
// waits for the reader to stop. It does not stop QEMU. Closing twice is
// harmless.
func (c *Client) Close() error {
	c.abort(errClosedByClient)
	<-c.readerDone
	return nil
}

// abort closes the socket, recording cause as the reason unless the
// connection already has one. The reader then sees the socket fail and
// ends the connection with the recorded cause.
func (c *Client) abort(cause error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause = cause
	}
	c.mu.Unlock()
	c.conn.Close()
}

// Execute runs a command and waits for its reply. args, unless nil, is
// marshalled as the command's "arguments"; result, unless nil, is a
// pointer the reply's "return" is decoded into. A refusal by QEMU is
// returned as an error wrapping *Error. If ctx ends first, Execute
// returns at once with an error wrapping ctx's; the command may still
// run, and its late reply is dropped.
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	return c.execute(ctx, command, args, result, nil)
}

// ExecuteFD is Execute with f's descriptor passed to QEMU alongside the
// command (SCM_RIGHTS), for getfd and add-fd. f stays open on our side;
// QEMU holds its own duplicate. Commands with a descriptor run one at a
// time (see fdMu).
func (c *Client) ExecuteFD(ctx context.Context, command string, args, result any, f *os.File) error {
	if f == nil {
		return fmt.Errorf("qmp %s: no file to pass", command)
	}
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	return c.execute(ctx, command, args, result, f)
}

func (c *Client) execute(ctx context.Context, command string, args, result any, f *os.File) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	c.nextID++
	id := c.nextID
	ch := make(chan reply, 1) // the reader never waits on a caller
	c.pending[id] = ch
	c.mu.Unlock()

	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	b, err := json.Marshal(request{Execute: command, Arguments: args, ID: id})
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: marshal arguments: %w", command, err)
	}
	c.log.Debug("qmp command", "id", id, "command", command)
	// No newline after the command: QEMU reads its socket a byte at a
	// time and stops after a command's closing brace, so a newline would
	// stay unread, and a socket closed with unread data (QEMU quitting)
	// reaches us as a reset instead of an end of file.
	if err := c.send(ctx, b, f); err != nil {
		forget()
		return fmt.Errorf("qmp %s: %w", command, err)
	}

	var r reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
	switch {
	case r.err != nil:
		return fmt.Errorf("qmp %s: %w", command, r.err)
	case r.qerr != nil:
		return fmt.Errorf("qmp %s: %w", command, r.qerr)
	case result != nil:
		if err := json.Unmarshal(r.ret, result); err != nil {
			return fmt.Errorf("qmp %s: decode reply: %w", command, err)
		}
	}
	return nil
}

// send writes one command, with f's descriptor if f is not nil. A write
// that ctx cuts off before its first byte leaves the stream intact. Any
// other failed write ends the connection: a command cut off in the middle
// would be joined by QEMU to the next one, and a socket that fails a
// write is broken anyway. The error is then the connection's.
func (c *Client) send(ctx context.Context, b []byte, f *os.File) error {
	select {
	case c.sendSlot <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.sendSlot }()

	var n int
	err := withDeadline(ctx, c.conn.SetWriteDeadline, func() error {
		var err error
		if f == nil {
			n, err = c.conn.Write(b)
			return err
		}
		n, err = c.writeWithFD(b, f)
		return err
	})
	switch {
	case err == nil:
		return nil
	case n == 0 && ctx.Err() != nil:
		return ctx.Err()
	case ctx.Err() != nil:
		err = fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	if n > 0 {
		err = fmt.Errorf("command cut off after %d of %d bytes: %w", n, len(b), err)
	}
	c.abort(err)
	<-c.done
	return c.Err()
}

// writeWithFD sends b with f's descriptor attached to its first byte.
func (c *Client) writeWithFD(b []byte, f *os.File) (int, error) {
	// SyscallConn, not f.Fd: Fd would switch f to blocking mode, and
	// Control keeps the descriptor from being closed under us.
	raw, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("descriptor of %s: %w", f.Name(), err)
	}
	var n int
	var werr error
	err = raw.Control(func(fd uintptr) {
		n, _, werr = c.conn.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	})
	if err != nil {
		return 0, fmt.Errorf("descriptor of %s: %w", f.Name(), err)
	}
	if werr != nil || n == len(b) {
		return n, werr
	}
	// A stream socket may take part of a message; the descriptor went
	// with the part sent.
	m, err := c.conn.Write(b[n:])
	return n + m, err
}

// withDeadline runs do with the connection deadline that set controls
// moved into the past when ctx ends, so that a read or write stuck on
// QEMU returns then (and only then: ctx.Err is set when it does). The
// deadline is cleared afterwards.
func withDeadline(ctx context.Context, set func(time.Time) error, do func() error) error {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		set(time.Unix(1, 0))
		close(fired)
	})
	err := do()
	if !stop() {
		<-fired // it ran or is running: clear the deadline after it
	}
	set(time.Time{})
	return err
}

// read is the reader goroutine: it owns the decoder until the connection
// ends.
func (c *Client) read(dec *json.Decoder) {
	defer close(c.readerDone)
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			c.end(err)
			return
		}
		switch {
		case m.Event != "":
			c.dispatch(m)
		case m.ID != nil:
			c.deliver(m)
		default:
			// QEMU answers without an id only a line it could not
			// parse, which this client does not send.
			c.log.Warn("qmp message matches no command", "error", m.Error, "return", string(m.Return))
		}
	}
}

func (c *Client) deliver(m message) {
	id, err := strconv.ParseUint(string(m.ID), 10, 64)
	if err != nil {
		c.log.Warn("qmp reply with a foreign id", "id", string(m.ID))
		return
	}
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		// Its caller gave up (ctx ended) before the reply came.
		c.log.Debug("qmp late reply dropped", "id", id)
		return
	}
	if m.Error != nil {
		ch <- reply{qerr: m.Error}
		return
	}
	ch <- reply{ret: m.Return}
}

// end records why the connection ended and fails every pending call.
func (c *Client) end(readErr error) {
	c.conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	cause := c.cause
	if cause == nil {
		cause = readErr
		if errors.Is(readErr, io.ErrUnexpectedEOF) {
			cause = fmt.Errorf("QEMU closed the socket mid-message: %w", readErr)
		}
	}
	c.err = fmt.Errorf("%w: %w", ErrClosed, cause)
	for id, ch := range c.pending {
		ch <- reply{err: c.err}
		delete(c.pending, id)
	}
	for s := range c.subs {
		s.end()
	}
	close(c.done)
	c.log.Debug("qmp connection ended", "cause", cause)
}
