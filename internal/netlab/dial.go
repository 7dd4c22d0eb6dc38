//go:build linux

package netlab

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
// never cut it (nor does a WAN delay it). Use it as a gRPC context dialer.
func (l *Lab) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNamespace(l.router, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// DialContext opens a connection from inside the host's namespace, as a
// program running on the host would, so its packets take the host's path
// through the lab (partitions and WAN links included).
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNamespace(h.ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ListenPacket opens a packet socket (e.g. "udp", "10.77.1.2:9000") inside
// the host's namespace; the caller serves it from any goroutine.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNamespace(h.ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// inNamespace runs fn on an OS thread switched into the named namespace. A
// socket belongs to the namespace of the thread that creates it and stays
// there, so fn creates sockets there that the rest of the process then uses
// from any thread.
func inNamespace(ns string, fn func() error) error {
	target, err := os.Open(filepath.Join(netnsDir, ns))
	if err != nil {
		return err
	}
	defer target.Close()
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer home.Close()
		if err := setns(target.Fd()); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("enter %s: %w", ns, err)
			return
		}
		err = fn()
		if setns(home.Fd()) == nil {
			// Otherwise the thread stays locked and dies with this
			// goroutine instead of running others in the lab's namespace.
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

func setns(fd uintptr) error { return unix.Setns(int(fd), unix.CLONE_NEWNET) }
