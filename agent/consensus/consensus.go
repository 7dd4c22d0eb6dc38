// Package consensus is this node's Raft: it opens the log and the
// transport, is the one way a command is committed, and turns Raft's
// errors into the domain errors the service layer maps to gRPC codes. It
// knows nothing of gossip or groups: the leader package decides what to
// commit and when.
package consensus

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/logging"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Config is what Open needs.
type Config struct {
	Name string
	// Dir holds the log (raft.db) and the snapshots.
	Dir string
	// BindAddr is the transport's listen address, AdvertiseAddr the one
	// peers dial (host:port both).
	BindAddr, AdvertiseAddr string

	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
	SnapshotThreshold                                     uint64
	SnapshotInterval                                      time.Duration

	// TLS, when set, runs the transport over mutual TLS.
	TLS *TLS

	Logger *slog.Logger
	// Metrics counts and times commits; nil counts nothing.
	Metrics *metrics.Metrics
}

// StateMachine is the FSM Raft applies the log to; Index is the last
// index it applied, for ReadMeta.
type StateMachine interface {
	raft.FSM
	Index() uint64
}

// Node is an open Raft node.
type Node struct {
	name    string
	log     *slog.Logger
	metrics *metrics.Metrics
	fsm     StateMachine
	raft    *raft.Raft
	store   *raftboltdb.BoltStore
	// logs is the log as Raft and the log streams read it: the store
	// behind a cache of the newest entries. Every commit is read once per
	// follower it is replicated to and once per stream a member serves
	// (a dozen at 100 agents), and from bbolt each read was a transaction
	// and a decode: a quarter of a member's CPU while groups were created.
	logs  raft.LogStore
	trans *raft.NetworkTransport

	leaderCh chan bool
	// readsReady is set while this node leads and its barrier is applied:
	// it may answer consistent reads.
	readsReady atomic.Bool

	// heartbeat is Raft's heartbeat timeout, which Silent measures by;
	// followed is the leader a stream from a member last named (follow.go).
	heartbeat time.Duration
	followed  atomic.Pointer[Followed]

	// bootstrapped is set once this node has Raft state; it never
	// bootstraps again.
	bootMu       sync.Mutex
	bootstrapped bool
}

// applyTimeout bounds how long a commit waits to be enqueued.
const applyTimeout = 10 * time.Second

// Open opens the log in cfg.Dir and starts Raft over f.
func Open(cfg Config, f StateMachine) (*Node, error) {
	n := &Node{name: cfg.Name, log: cfg.Logger, fsm: f, metrics: cfg.Metrics, heartbeat: cfg.HeartbeatTimeout}
	if n.log == nil {
		n.log = logging.Discard()
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	hl := logging.Hclog(n.log)
	rc.Logger = hl
	// Buffered: raft drops notifications it cannot deliver at once, and the
	// leader loop must see every transition.
	n.leaderCh = make(chan bool, 16)
	rc.NotifyCh = n.leaderCh

	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()
	if err := CheckState(cfg.Dir, n.log); err != nil {
		return nil, err
	}
	var store *raftboltdb.BoltStore
	err := guarded(func() (err error) {
		store, err = raftboltdb.New(storeOptions(cfg.Dir))
		return err
	})
	if err != nil {
		return nil, &DamageError{Path: filepath.Join(cfg.Dir, logFile), Err: err}
	}
	n.store = store
	if n.logs, err = raft.NewLogCache(logCacheSize, store); err != nil {
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("raft snapshots: %w", err)
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
	if err != nil {
		return nil, fmt.Errorf("raft advertise address: %w", err)
	}
	trans, err := newTransport(cfg, adv, hl.Named("raft-net"))
	if err != nil {
		return nil, fmt.Errorf("raft transport: %w", err)
	}
	n.trans = trans
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("raft state: %w", err)
	}
	n.bootstrapped = has
	r, err := raft.NewRaft(rc, f, n.logs, store, snaps, serialTransport{trans})
	if err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	n.raft = r
	ok = true
	return n, nil
}

// logCacheSize is how many of the newest log entries are kept in memory
// (Consul keeps 512 too): a stream a few seconds behind still reads from
// memory while groups are created dozens a second.
const logCacheSize = 512

// storeOptions opens the log durably: NoSync is false, so bbolt fsyncs
// (fdatasync) the file on every commit of a write transaction, and
// raft-boltdb's StoreLogs is one transaction. Raft counts the leader's
// own log towards a quorum only after its StoreLogs returns, and a
// follower answers AppendEntries only after its own: a command is
// acknowledged once a majority of the voters have it on disk. The term
// and vote (StableStore) are in the same file, fsync'd the same way.
// TestLogIsFsynced fails if this ever changes.
func storeOptions(dir string) raftboltdb.Options {
	return raftboltdb.Options{Path: filepath.Join(dir, logFile)}
}

// shutdownWait bounds the wait for Raft to stop. A stop must end: the
// operator or the service manager is waiting, and nothing is lost by
// exiting (the log is fsync'd on every write).
const shutdownWait = 3 * time.Second

// Close stops Raft and closes the log.
func (n *Node) Close() {
	if n.raft != nil {
		var err error
		// hashicorp/raft's shutdown waits for every replication goroutine,
		// and one whose pipeline to a vanished peer is full waits for the
		// transport's timeout or longer (seen in the randomized fault
		// test). Leave it behind rather than hang, and then do not close
		// the store under it.
		if !WaitAtMost(func() { err = n.raft.Shutdown().Error() }, shutdownWait) {
			n.log.Warn("raft did not shut down in time; exiting without waiting", "waited", shutdownWait)
			return
		}
		if err != nil {
			n.log.Warn("raft shutdown", "error", err)
		}
	}
	if n.trans != nil {
		_ = n.trans.Close()
	}
	if n.store != nil {
		_ = n.store.Close()
	}
}

// WaitAtMost runs wait and reports whether it returned within d.
func WaitAtMost(wait func(), d time.Duration) bool {
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// TransferLeadership hands leadership to another voter if this node
// leads: a planned restart should not cost an election timeout.
func (n *Node) TransferLeadership() error {
	if n.raft.State() != raft.Leader {
		return nil
	}
	return n.raft.LeadershipTransfer().Error()
}

// TransferLeadershipTo hands leadership to the voter id at addr, once it
// has caught up on the log.
func (n *Node) TransferLeadershipTo(id, addr string) error {
	return n.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr)).Error()
}

// LeaderCh delivers true when this node becomes leader and false when it
// stops being one; the same transition may come twice.
func (n *Node) LeaderCh() <-chan bool { return n.leaderCh }

// IsLeader reports whether Raft calls this node the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderID is the leader's name as far as this node knows, "" if none:
// Raft's, or while Raft is silent the one the member this node follows
// by stream named.
func (n *Node) LeaderID() string {
	if _, id := n.raft.LeaderWithID(); id != "" {
		return string(id)
	}
	if f := n.followedNow(); f != nil {
		return f.Leader
	}
	return ""
}

// LastContact is when this node last heard from a leader (zero if never;
// a leader's own is the last quorum contact).
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// Term is Raft's current term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// Commit stamps c with the time (the FSM never reads a clock), commits it
// and returns what the FSM made of it. The error is the commit's: the
// FSM's refusal is in the result.
func (n *Node) Commit(c *havenv1.Command) (*fsm.Result, error) {
	c.Time = timestamppb.Now()
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	t0 := time.Now()
	fut := n.raft.Apply(data, applyTimeout)
	if err := fut.Error(); err != nil {
		err = commitError(err, c.GetRequestId())
		n.metrics.Commit(time.Since(t0), false, err)
		return nil, err
	}
	res, ok := fut.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("unexpected apply response %T", fut.Response())
	}
	n.metrics.Commit(time.Since(t0), res.Err != nil, nil)
	return res, nil
}

// Barrier waits until every entry committed before it is applied here.
func (n *Node) Barrier(timeout time.Duration) error {
	return raftError(n.raft.Barrier(timeout).Error())
}

// VerifyLeader checks with a quorum that this node still leads.
func (n *Node) VerifyLeader() error {
	return raftError(n.raft.VerifyLeader().Error())
}

// Domain errors of a commit or a leadership check.
var (
	// ErrNotLeader: this node does not lead; nothing was committed.
	ErrNotLeader = errors.New("not the leader")
	// ErrShutdown: Raft is stopping.
	ErrShutdown = errors.New("agent is shutting down")
)

// OutcomeUnknownError is a commit whose fate is unknown: leadership was
// lost while it was in flight, and it may yet be committed by the next
// leader. The request id makes a retry safe.
type OutcomeUnknownError struct {
	RequestID string
	Err       error
}

func (e *OutcomeUnknownError) Error() string {
	return fmt.Sprintf("leadership changed while committing: outcome unknown, retry with request_id %q", e.RequestID)
}

func (e *OutcomeUnknownError) Unwrap() error { return e.Err }

// raftError translates Raft's errors at the boundary. Leadership lost
// while waiting is "not the leader": nothing of the caller's was in flight
// (commitError says otherwise for a command).
func raftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrLeadershipLost):
		return ErrNotLeader
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("raft: %w", err)
}

// commitError is raftError for a command that was proposed: lost
// leadership, a full queue or a restore may or may not have let it be
// committed, and the request id makes a retry safe.
func commitError(err error, requestID string) error {
	if errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, raft.ErrAbortedByRestore) {
		return &OutcomeUnknownError{RequestID: requestID, Err: err}
	}
	return raftError(err)
}

// Status is Raft's state as the API reports it.
type Status struct {
	State        string
	Term         uint64
	CommitIndex  uint64
	AppliedIndex uint64
	Leader       string
	// Servers is the configuration; nil when it could not be read.
	Servers []raft.Server
}

// Status reads Raft's state now.
func (n *Node) Status() Status {
	stats := n.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	s := Status{State: n.raft.State().String(), Term: u("term"), CommitIndex: u("commit_index"), AppliedIndex: n.raft.AppliedIndex(), Leader: n.LeaderID()}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		s.Servers = f.Configuration().Servers
	}
	if f := n.followedNow(); f != nil {
		// Outside the configuration: the one the followed member has.
		s.Servers = nil
		for _, m := range f.Members {
			sv := raft.Server{ID: raft.ServerID(m), Suffrage: raft.Nonvoter}
			if slices.Contains(f.Voters, m) {
				sv.Suffrage = raft.Voter
			}
			s.Servers = append(s.Servers, sv)
		}
	}
	return s
}
