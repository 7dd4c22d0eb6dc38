// Package rpcclient is the one place haven dials a haven agent: the CLI,
// the local dev cluster, the tests and agents calling each other all get
// their connections here, so credentials (TLS, tokens) are added once.
package rpcclient

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/haven-ha/haven/internal/tlsutil"
)

// Dial opens a client connection to an agent's gRPC address. It is
// plaintext unless opts carry Credentials (or other transport
// credentials): opts are added after haven's own, and the last transport
// credentials win.
func Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	all := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(addr, all...)
	if err != nil {
		return nil, fmt.Errorf("agent address %q: %w", addr, err)
	}
	return conn, nil
}

// Credentials dials with TLS configured by cfg (a tlsutil client
// configuration: mutual TLS, the server verified as a node), or plaintext
// when cfg is nil.
func Credentials(cfg *tls.Config) grpc.DialOption {
	if cfg == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(tlsutil.Credentials(cfg))
}

// AgentOptions are the options of an agent's connections to other agents,
// with its TLS client configuration (nil: plaintext). They reconnect
// within a fraction of a lease after a partition heals: gRPC's default
// backoff grows to two minutes, which would turn a short blip into a
// failover.
func AgentOptions(lease time.Duration, tlsCfg *tls.Config) []grpc.DialOption {
	return []grpc.DialOption{
		Credentials(tlsCfg),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: lease / 8},
			MinConnectTimeout: lease / 4,
		}),
	}
}

// Pool keeps one connection per address, for calls that go to whichever
// node leads now.
type Pool struct {
	opts  []grpc.DialOption
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// NewPool returns an empty pool whose connections are dialed with opts.
func NewPool(opts ...grpc.DialOption) *Pool {
	return &Pool{opts: opts, conns: map[string]*grpc.ClientConn{}}
}

// Conn returns the pool's connection to addr, dialing it on first use.
func (p *Pool) Conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := Dial(addr, p.opts...)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return c, nil
}

// Reset drops the connection to addr. After a partition heals, a fresh
// connection is up within one connect attempt, while the old one waits for
// TCP's retransmission backoff, which grows to seconds during an outage.
func (p *Pool) Reset(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		_ = c.Close()
		delete(p.conns, addr)
	}
}

// Close closes every connection; the pool may be used again afterwards.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
}

// WithToken sends secret with every call as "authorization: Bearer
// <secret>", the ACL token the agent checks; empty sends nothing. Over a
// connection without TLS the token travels in the clear, as everything
// else does then.
func WithToken(secret string) grpc.DialOption {
	if secret == "" {
		return grpc.EmptyDialOption{}
	}
	return grpc.WithPerRPCCredentials(bearer(secret))
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false: a cluster without TLS (haven dev,
// tls.plaintext) still takes tokens.
func (bearer) RequireTransportSecurity() bool { return false }
