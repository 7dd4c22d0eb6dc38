// Package heartbeat does membership and failure detection for haven agents
// with memberlist (SWIM gossip).
//
// memberlist has one timing for a whole pool, but a cluster that spans
// sites wants two, like WSFC's SameSubnet and CrossSite delays: fast
// detection between nodes of one site, patience across a lossy WAN. So each
// agent runs two pools, the way Consul runs LAN and WAN gossip:
//
//   - the WAN pool holds every node and uses the cross-site Profile;
//   - the LAN pool holds only the nodes of this agent's site and uses the
//     same-site Profile.
//
// Operators only give WAN addresses to Join; whenever a node of this site
// shows up in the WAN pool the agent joins it in the LAN pool too, at the
// LAN address the node advertises in its Meta. Pools carry distinct
// memberlist labels ("haven-wan", "haven-site-<site>", after the cluster's
// own label if it has one) so they never merge.
//
// Both pools share one keyring (keyring.go): gossip is encrypted and
// authenticated with its primary key, and keys rotate without downtime.
//
// The state of a peer is the LAN pool's view once the peer is in the LAN
// pool, and the WAN pool's view otherwise; Members and Events follow that
// rule, so a same-site node that crashes is reported failed as soon as the
// LAN pool says so, while the WAN pool may still think it alive.
package heartbeat

import (
	"errors"
	"fmt"
	"time"

	"log/slog"
)

var (
	// ErrMetaTooLarge means the encoded Meta exceeds memberlist's 512 bytes.
	ErrMetaTooLarge = errors.New("heartbeat: node meta too large")
	// ErrShutdown is returned by calls made after Shutdown.
	ErrShutdown = errors.New("heartbeat: membership shut down")
	// ErrLeft is returned by calls made after Leave: memberlist cannot
	// rejoin a pool it has left, a new Membership is needed.
	ErrLeft = errors.New("heartbeat: membership has left")
)

// State is the state of a member as seen by this agent.
type State int

const (
	StateAlive State = iota
	// StateSuspect is never reported yet: memberlist v0.6.0 keeps
	// suspicion internal (it is neither in an event nor in Node.State).
	StateSuspect
	StateDead // failed: stopped answering probes
	StateLeft // left gracefully
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Member is a node as seen by this agent.
type Member struct {
	Name  string
	Addr  string // WAN gossip host:port; empty until the WAN pool has seen the node
	Meta  Meta
	State State
}

// EventType says what changed about a member.
type EventType int

const (
	EventJoin   EventType = iota // became alive: new, or back after failing or leaving
	EventUpdate                  // still alive, Meta changed
	EventFailed                  // stopped answering probes
	EventLeave                   // left gracefully
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventFailed:
		return "failed"
	case EventLeave:
		return "leave"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one membership change; Member is the member's state after it.
type Event struct {
	Type   EventType
	Member Member
}

// Config configures a Membership.
type Config struct {
	Name string // unique in the cluster
	Site string

	BindAddr      string // IP both pools bind
	AdvertiseAddr string // IP peers should use; defaults to BindAddr, required if BindAddr is a wildcard

	// LANPort and WANPort of 0 pick free ports (tests); the advertised ports
	// are then the real ones.
	LANPort, WANPort int

	// SameSite times the LAN pool, CrossSite the WAN pool. A zero Profile
	// means the defaults.
	SameSite, CrossSite Profile

	// Meta is advertised by this node. Site defaults to Config.Site and
	// must match it; LANAddr is filled in by the package.
	Meta Meta

	// Keys is the gossip keyring, primary first: AES keys of 16, 24 or 32
	// bytes, shared by both pools. Empty: the pools gossip in plaintext,
	// and refuse encrypted peers.
	Keys [][]byte
	// KeyringFile, if set, is where the keyring is written at start and
	// after every change, for the next start to load.
	KeyringFile string
	// Label, if set, is the cluster's gossip label: both pools prefix
	// their own label with it, and memberlist drops every packet and
	// stream whose label differs, so two clusters whose nodes can reach
	// each other never merge, even by a wrong join address. With
	// encryption the label is also authenticated data of every message.
	Label string

	// Logger is the parent logger; memberlist's own logs go through it too.
	// Nil discards logs.
	Logger *slog.Logger

	// Events, if not nil, receives every membership change, this node's own
	// included, in order. Sends never block memberlist: events wait in an
	// unbounded queue drained by one goroutine at the receiver's pace.
	// Unbounded because a dropped EventFailed is a missed failover, while
	// the queue only grows with membership changes, which are few; a
	// backlog is logged. Events still queued at Shutdown are dropped.
	Events chan<- Event

	// compress turns on memberlist's compression, off in both pools (see
	// poolConfig); only TestIdleGossipCost sets it, to weigh it.
	compress bool
}

// defaultRetryInterval is RetryJoin's pause when given none; Consul uses 30s, but
// haven agents start together and the cluster should form quickly.
const defaultRetryInterval = 5 * time.Second
