package consensus

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// raftMaxPool and raftTimeout are the transport's connection pool per peer
// and its I/O deadline, as raft.NewTCPTransport takes them.
const (
	raftMaxPool = 3
	raftTimeout = 10 * time.Second
)

// newTransport is Raft's network transport: plain TCP, or with cfg.TLS
// mutual TLS on every connection, each end verifying the other against
// the cluster's CA.
func newTransport(cfg Config, adv *net.TCPAddr, log hclog.Logger) (*raft.NetworkTransport, error) {
	if cfg.TLS == nil {
		return raft.NewTCPTransportWithLogger(cfg.BindAddr, adv, raftMaxPool, raftTimeout, log)
	}
	lis, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return nil, err
	}
	s := &tlsStream{Listener: tls.NewListener(lis, cfg.TLS.Server), adv: adv, client: cfg.TLS.Client}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: s, MaxPool: raftMaxPool, Timeout: raftTimeout, Logger: log,
	}), nil
}

// serialTransport is Raft's network transport with the heartbeat fast
// path off: a heartbeat goes to Raft's main goroutine like every other
// RPC instead of being handled on the connection's goroutine. That path
// runs appendEntries beside the main goroutine without a lock: a
// heartbeat that checks the node's state just before the main goroutine
// turns it candidate sets the old leader after the turn, and a candidate
// that believes it has a leader refuses every (pre-)vote and keeps the
// belief through each new campaign (nothing but a switch of state clears
// it). With two of the five voters stuck so, the 100-agent scale scenario
// had no leader for minutes and every guest froze at its lease end. The
// same unsynchronized path is what hashicorp/raft#695 reports losing
// committed entries through. The cost: a heartbeat waits while the main
// goroutine writes the log or restores a snapshot.
type serialTransport struct {
	*raft.NetworkTransport
}

// SetHeartbeatHandler keeps the fast path off: without a handler the
// transport hands heartbeats to Consumer.
func (serialTransport) SetHeartbeatHandler(func(raft.RPC)) {}

// TLS is the transport's mutual TLS: Server for the listener, Client for
// the dialer (see internal/tlsutil).
type TLS struct {
	Server, Client *tls.Config
}

// tlsStream is a raft.StreamLayer over TLS.
type tlsStream struct {
	net.Listener
	adv    net.Addr
	client *tls.Config
}

// Addr is the advertised address: the one the peers dial.
func (s *tlsStream) Addr() net.Addr { return s.adv }

// Dial completes the handshake before it returns, within timeout, so a
// peer that is not the cluster's fails here and not in the middle of an
// RPC.
func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: s.client}
	c, err := d.Dial("tcp", string(addr))
	if err != nil {
		return nil, fmt.Errorf("raft tls dial %s: %w", addr, err)
	}
	return c, nil
}
