package tlsutil

import (
	"context"
	"crypto/tls"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// Credentials are gRPC's TLS credentials for cfg, with one change: the
// records of one write leave in one system call. crypto/tls writes every
// record (16 KiB at most) with a write(2) of its own, twice as many as the
// same stream in plaintext, which made write(2) a fifth of a TLS
// migration stream's CPU. gRPC writes from one goroutine in flushes of
// its write buffer; each flush now costs one system call again.
func Credentials(cfg *tls.Config) credentials.TransportCredentials {
	return batchingCreds{credentials.NewTLS(cfg)}
}

type batchingCreds struct {
	credentials.TransportCredentials
}

func (c batchingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	b := &batcher{Conn: raw}
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, b)
	if err != nil {
		return nil, nil, err
	}
	return &batchedConn{Conn: conn, b: b}, info, nil
}

func (c batchingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	b := &batcher{Conn: raw}
	conn, info, err := c.TransportCredentials.ServerHandshake(b)
	if err != nil {
		return nil, nil, err
	}
	return &batchedConn{Conn: conn, b: b}, info, nil
}

func (c batchingCreds) Clone() credentials.TransportCredentials {
	return batchingCreds{c.TransportCredentials.Clone()}
}

// batchedConn is the TLS connection gRPC uses: a Write holds the records
// it makes in the batcher below and sends them at its end.
type batchedConn struct {
	net.Conn
	b *batcher
}

func (c *batchedConn) Write(p []byte) (int, error) {
	c.b.hold()
	n, err := c.Conn.Write(p)
	if ferr := c.b.release(); err == nil {
		err = ferr
	}
	return n, err
}

// batcher is the raw connection under TLS. Outside a held write (the
// handshake, an alert or key update that a read sends) it writes through;
// within one it collects records, in the order TLS wrote them.
type batcher struct {
	net.Conn
	mu    sync.Mutex
	holds int
	buf   []byte
	err   error
}

// maxBatch bounds the memory a write holds: past it, records go out.
const maxBatch = 256 << 10

func (b *batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.holds == 0 && len(b.buf) == 0 {
		return b.Conn.Write(p)
	}
	b.buf = append(b.buf, p...)
	if b.holds == 0 || len(b.buf) >= maxBatch {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *batcher) hold() {
	b.mu.Lock()
	b.holds++
	b.mu.Unlock()
}

func (b *batcher) release() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holds--
	if b.holds > 0 || len(b.buf) == 0 {
		return b.err
	}
	return b.flushLocked()
}

func (b *batcher) flushLocked() error {
	if _, err := b.Conn.Write(b.buf); err != nil {
		// TLS cannot resend what it handed over: the connection is
		// broken from here on, as a failed write leaves a tls.Conn.
		b.err = err
	}
	b.buf = b.buf[:0]
	return b.err
}
