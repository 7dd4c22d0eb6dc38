package sim

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"

	"github.com/haven-ha/haven/driver"
)

// connKinds are the links the migration tests run over: loopback TCP, as
// in production, and net.Pipe, whose every write waits for its read, so a
// protocol step that writes when it should read deadlocks there.
var connKinds = []string{"tcp", "pipe"}

// connPair returns the two ends of a connection of kind, closed when the
// test ends.
func connPair(t testing.TB, kind string) (net.Conn, net.Conn) {
	t.Helper()
	var a, b net.Conn
	switch kind {
	case "pipe":
		a, b = net.Pipe()
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := l.Accept()
			accepted <- c
		}()
		if a, err = net.Dial("tcp", l.Addr().String()); err != nil {
			t.Fatal(err)
		}
		if b = <-accepted; b == nil {
			t.Fatal("accept failed")
		}
	default:
		t.Fatalf("no conn kind %q", kind)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// migration is what both ends of a move returned.
type migration struct {
	res           driver.MigrateResult
	outErr, inErr error
	progress      []driver.Progress
}

// migrate moves target.ID from src, where it runs at srcEpoch, to dst as
// target, over the ends a (source) and b (target). Each end is closed when
// its side returns, as a gRPC stream ends with its handler. progress, if
// not nil, sees every report as it comes.
func migrate(ctx context.Context, t testing.TB, src, dst *Driver, srcEpoch uint64, target driver.VMSpec, a, b net.Conn, opts driver.MigrateOptions, progress func(driver.Progress)) migration {
	t.Helper()
	return migrateAs(ctx, t, src, dst, target.ID, srcEpoch, target, a, b, opts, progress)
}

// migrateAs is migrate of the source's VM id, which target may not match.
func migrateAs(ctx context.Context, t testing.TB, src, dst *Driver, id driver.VMID, srcEpoch uint64, target driver.VMSpec, a, b net.Conn, opts driver.MigrateOptions, progress func(driver.Progress)) migration {
	t.Helper()
	in := make(chan error, 1)
	go func() {
		err := dst.MigrateIn(ctx, target, b)
		b.Close()
		in <- err
	}()
	var mig migration
	var mu sync.Mutex
	mig.res, mig.outErr = src.MigrateOut(ctx, id, srcEpoch, a, opts, func(p driver.Progress) {
		mu.Lock()
		mig.progress = append(mig.progress, p)
		mu.Unlock()
		if progress != nil {
			progress(p)
		}
	})
	a.Close()
	mig.inErr = <-in
	return mig
}

// memoryOf copies id's memory and its checksum, under its lock.
func memoryOf(t testing.TB, d *Driver, id driver.VMID) ([]byte, uint64) {
	t.Helper()
	v := d.lookup(id)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mem == nil {
		t.Fatalf("%s holds no memory", id)
	}
	return bytes.Clone(v.mem.buf), v.mem.checksum()
}

// recordsBy returns the execution log's records written by node.
func recordsBy(recs []Record, node string) []Record {
	var out []Record
	for _, r := range recs {
		if r.Node == node {
			out = append(out, r)
		}
	}
	return out
}
