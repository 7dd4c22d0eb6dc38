package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testTimeout bounds every wait of the unit tests: far above what any
// step takes, so that hitting it means a bug, not a slow machine.
const testTimeout = 10 * time.Second

// fakeQMP is an in-process QMP server on a unix socket: it greets, hands
// the test every command it receives (with the descriptors that came with
// it) and writes whatever replies and events the test tells it to.
type fakeQMP struct {
	t    *testing.T
	path string
	ln   *net.UnixListener

	// greeting is the first line sent; empty sends none, as QEMU does to
	// a second client of its socket.
	greeting string
	// negotiate: answer qmp_capabilities without handing it to the test.
	negotiate bool

	reqs    chan fakeRequest
	stopped chan struct{} // closed at cleanup: blocked server goroutines return
	served  chan struct{} // closed when the server goroutine has returned

	mu   sync.Mutex // serialises writes to conn
	conn *net.UnixConn
}

// fakeRequest is one command the fake received.
type fakeRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
	// Files are the descriptors received with the command.
	Files []*os.File `json:"-"`
}

const fakeGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

func newFakeQMP(t *testing.T) *fakeQMP {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeQMP{
		t: t, path: path, ln: ln,
		greeting:  fakeGreeting,
		negotiate: true,
		reqs:      make(chan fakeRequest, 100),
		stopped:   make(chan struct{}),
		served:    make(chan struct{}),
	}
}

// start accepts one client and serves it until cleanup.
func (f *fakeQMP) start() {
	f.t.Cleanup(func() {
		close(f.stopped)
		f.ln.Close()
		f.mu.Lock()
		if f.conn != nil {
			f.conn.Close()
		}
		f.mu.Unlock()
		<-f.served
		for {
			select {
			case r := <-f.reqs:
				for _, file := range r.Files {
					file.Close()
				}
			default:
				return
			}
		}
	})
	go f.serve()
}

func (f *fakeQMP) serve() {
	defer close(f.served)
	conn, err := f.ln.AcceptUnix()
	if err != nil {
		return
	}
	f.mu.Lock()
	f.conn = conn
	f.mu.Unlock()
	if f.greeting != "" {
		f.write(f.greeting)
	}

	// Like QEMU, the fake reads a byte at a time, so that the decoder
	// never reads past a command and the descriptors received while it
	// decodes one came with that command's first byte.
	r := &fdReader{t: f.t, conn: conn}
	dec := json.NewDecoder(r)
	for {
		var req fakeRequest
		if err := dec.Decode(&req); err != nil {
			for _, file := range r.files {
				file.Close()
			}
			var syntax *json.SyntaxError
			if errors.As(err, &syntax) {
				f.t.Errorf("fake QMP: undecodable command: %v", err)
			}
			return
		}
		req.Files, r.files = r.files, nil
		switch {
		case f.negotiate && req.Execute == "qmp_capabilities":
			f.reply(req, struct{}{})
		case req.Execute == "stall-reader":
			// Stop reading, as a QEMU whose main loop hangs does.
			f.reply(req, struct{}{})
			<-f.stopped
			return
		default:
			select {
			case f.reqs <- req:
			case <-f.stopped:
				return
			}
		}
	}
}

// fdReader reads a connection a byte at a time and keeps the descriptors
// that come with the bytes.
type fdReader struct {
	t     *testing.T
	conn  *net.UnixConn
	files []*os.File
}

func (r *fdReader) Read(p []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(4*8))
	n, oobn, _, _, err := r.conn.ReadMsgUnix(p[:1], oob)
	if err != nil {
		return 0, err
	}
	r.files = append(r.files, parseRights(r.t, oob[:oobn])...)
	if n == 0 {
		return 0, io.EOF // ReadMsgUnix reports the peer's close as 0 bytes
	}
	return n, nil
}

func parseRights(t *testing.T, oob []byte) []*os.File {
	if len(oob) == 0 {
		return nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Errorf("fake QMP: control message: %v", err)
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			t.Errorf("fake QMP: rights: %v", err)
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
	}
	return files
}

// next returns the next command the fake received.
func (f *fakeQMP) next() fakeRequest {
	f.t.Helper()
	select {
	case r := <-f.reqs:
		return r
	case <-time.After(testTimeout):
		f.t.Fatal("fake QMP: no command received")
		return fakeRequest{}
	}
}

func (f *fakeQMP) write(line string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.conn.Write([]byte(line + "\r\n")); err != nil && !errors.Is(err, net.ErrClosed) {
		f.t.Errorf("fake QMP: write: %v", err)
	}
}

func (f *fakeQMP) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		f.t.Errorf("fake QMP: marshal: %v", err)
		return
	}
	f.write(string(b))
}

func (f *fakeQMP) reply(r fakeRequest, ret any) {
	f.send(map[string]any{"return": ret, "id": r.ID})
}

func (f *fakeQMP) replyError(r fakeRequest, class, desc string) {
	f.send(map[string]any{"error": Error{Class: class, Desc: desc}, "id": r.ID})
}

// event sends an event stamped with at.
func (f *fakeQMP) event(name string, data any, at time.Time) {
	m := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": at.Unix(), "microseconds": int64(at.Nanosecond() / 1000)},
	}
	if data != nil {
		m["data"] = data
	}
	f.send(m)
}

// unread is the number of bytes the client sent that the fake has not
// read.
func (f *fakeQMP) unread() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	raw, err := f.conn.SyscallConn()
	if err != nil {
		f.t.Errorf("fake QMP: %v", err)
		return 0
	}
	var n int
	raw.Control(func(fd uintptr) {
		n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	if err != nil {
		f.t.Errorf("fake QMP: SIOCINQ: %v", err)
	}
	return n
}

// hangUp closes the connection, as QEMU does when it exits.
func (f *fakeQMP) hangUp() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn.Close()
}

// dial connects a Client to f and closes it at cleanup.
func (f *fakeQMP) dial() *Client {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, f.path, testLogger(f.t))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

// testLogger logs through t, so that a failing test shows the client's
// debug log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
