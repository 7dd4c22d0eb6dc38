package tlsutil

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestCredentialsBatchRecords: a write of many TLS records reaches the
// socket as one write (two past maxBatch), the handshake still completes
// (its writes are not held), and the bytes arrive whole and in order.
func TestCredentialsBatchRecords(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, "cluster")
	caFile := writeCA(t, dir, ca)
	srv := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "n1", Node: true}))
	cli := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "n2", Node: true}))

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	got := make(chan []byte, 1)
	go func() {
		raw, err := lis.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer raw.Close()
		conn, _, err := Credentials(srv.ServerConfig()).ServerHandshake(raw)
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(conn)
		got <- b
	}()

	raw, err := net.DialTimeout("tcp", lis.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingConn{Conn: raw}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := Credentials(cli.ClientConfig()).ClientHandshake(ctx, "n1", counted)
	if err != nil {
		t.Fatal(err)
	}
	small, big := bytes.Repeat([]byte("a"), 64<<10), bytes.Repeat([]byte("b"), maxBatch+(64<<10))
	for _, c := range []struct {
		data   []byte
		writes int64
	}{{small, 1}, {big, 2}} {
		before := counted.writes.Load()
		if _, err := conn.Write(c.data); err != nil {
			t.Fatal(err)
		}
		if n := counted.writes.Load() - before; n != c.writes {
			t.Errorf("a write of %d KiB (%d records) took %d writes to the socket, want %d", len(c.data)>>10, len(c.data)/(16<<10), n, c.writes)
		}
	}
	conn.Close()
	if b := <-got; !bytes.Equal(b, append(small, big...)) {
		t.Errorf("the server read %d bytes, want the %d written, in order", len(b), len(small)+len(big))
	}
}
