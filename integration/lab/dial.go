package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// DialContext opens a TCP connection from inside the router namespace, which
// routes to every site. The test process stays in the root namespace and
// reaches the hosts without any route or link there; the router's own
// traffic leaves through OUTPUT, not FORWARD, so partitions between hosts
// never cut it. Use it as a gRPC context dialer.
func (l *Lab) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	target, err := os.Open(filepath.Join(netnsDir, l.router))
	if err != nil {
		return nil, err
	}
	defer target.Close()
	// A socket belongs to the namespace of the thread that creates it, so
	// the dial runs on a locked thread switched into the router namespace
	// and switched back before the thread is released.
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer home.Close()
		if err := setns(target.Fd()); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter %s: %w", l.router, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if setns(home.Fd()) == nil {
			// Otherwise the thread stays locked and dies with this
			// goroutine instead of running others in the lab's namespace.
			runtime.UnlockOSThread()
		}
		ch <- result{c: c, err: err}
	}()
	r := <-ch
	return r.c, r.err
}

func setns(fd uintptr) error { return unix.Setns(int(fd), unix.CLONE_NEWNET) }
