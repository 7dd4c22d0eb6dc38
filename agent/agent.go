// Package agent wires one haven node: gossip membership, the Raft state
// machine, the leader's duties and the gRPC servers.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/grpc"

	"github.com/haven-ha/haven/driver/sim"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
)

// Version is reported in gossip metadata and the API.
var Version = "0.1.0-dev"

// Agent is one running haven node.
type Agent struct {
	cfg    Config
	log    hclog.Logger
	fsm    *fsm.FSM
	raft   *raft.Raft
	store  *raftboltdb.BoltStore
	trans  *raft.NetworkTransport
	gossip *heartbeat.Membership
	// members is gossip's view of the cluster, as the leader's decisions
	// and the membership checks read it (gossip itself in an agent).
	members interface{ Members() []heartbeat.Member }
	// proposer commits commands (Raft in an agent).
	proposer proposer
	events   chan heartbeat.Event
	grpc     *grpc.Server
	lis      net.Listener
	fwd      *forwarder
	drv      *sim.Driver
	exec     *executor
	leases   *leases

	// placeMu serializes the leader's placement decisions with their
	// commits (see placement.go); reserve is the kept reserve, moves the
	// owner changes this leader made (the balancer's hold-off).
	placeMu sync.Mutex
	reserve reserveKeeper
	moves   history

	// readsReady is set while this node leads and its barrier is applied:
	// it may answer consistent reads (reads.go).
	readsReady atomic.Bool
	strangers  strangers

	leaderNotify chan bool
	// reconcileCh wakes the leader loop on membership changes.
	reconcileCh chan struct{}
	// bootstrapped is set once this node has Raft state; it never
	// bootstraps again.
	bootMu       sync.Mutex
	bootstrapped bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
	stop   sync.Once
}

// New checks the configuration and opens the data directory; Start brings
// the node up.
func New(cfg Config, log hclog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.AdvertiseAddr == "" && net.ParseIP(cfg.BindAddr).IsUnspecified() {
		ip, err := privateIP()
		if err != nil {
			return nil, fmt.Errorf("advertise_addr: not set and bind_addr %s is a wildcard: %v", cfg.BindAddr, err)
		}
		cfg.AdvertiseAddr = ip
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "raft"), 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if err := os.MkdirAll(cfg.SharedDir, 0o755); err != nil {
		return nil, fmt.Errorf("shared_dir: %w", err)
	}
	a := &Agent{
		cfg:         cfg,
		log:         log,
		fsm:         fsm.New(),
		events:      make(chan heartbeat.Event, 256),
		reconcileCh: make(chan struct{}, 1),
		// Simulated VMs live in this process: they die with it, so none
		// can outlive the lease of an agent that was killed.
		drv: sim.New(sim.Config{Node: cfg.Name, SharedDir: cfg.SharedDir}),
	}
	a.exec = newExecutor(a, a.drv)
	a.leases = newLeases(a)
	a.proposer = raftProposer{a}
	return a, nil
}

func (a *Agent) addr(port int) string {
	return net.JoinHostPort(a.cfg.advertise(), strconv.Itoa(port))
}

func (a *Agent) bind(port int) string {
	return net.JoinHostPort(a.cfg.BindAddr, strconv.Itoa(port))
}

// Start opens Raft, the gRPC listener and gossip, then runs the background
// loops until Stop.
func (a *Agent) Start(ctx context.Context) error {
	ctx, a.cancel = context.WithCancel(ctx)
	if err := a.setupRaft(); err != nil {
		return err
	}
	if err := a.setupGRPC(); err != nil {
		a.shutdownRaft()
		return err
	}
	capacity := a.cfg.capacity()
	g, err := heartbeat.New(heartbeat.Config{
		Name:          a.cfg.Name,
		Site:          a.cfg.Site,
		BindAddr:      a.cfg.BindAddr,
		AdvertiseAddr: a.cfg.advertise(),
		LANPort:       a.cfg.Ports.Gossip,
		WANPort:       a.cfg.Ports.GossipWAN,
		SameSite:      heartbeat.Profile(a.cfg.Gossip.SameSite),
		CrossSite:     heartbeat.Profile(a.cfg.Gossip.CrossSite),
		Meta: heartbeat.Meta{
			Site:        a.cfg.Site,
			Witness:     a.cfg.Witness,
			RaftAddr:    a.addr(a.cfg.Ports.Raft),
			GRPCAddr:    a.addr(a.cfg.Ports.GRPC),
			Version:     Version,
			Expect:      a.cfg.BootstrapExpect,
			CPUMillis:   capacity.CPUMillis,
			MemoryBytes: capacity.MemoryBytes,
			Labels:      formatLabels(a.cfg.Labels),
		},
		Logger: a.log.Named("gossip"),
		Events: a.events,
	})
	if err != nil {
		a.grpc.Stop()
		a.shutdownRaft()
		return fmt.Errorf("gossip: %w", err)
	}
	a.gossip, a.members = g, g
	a.fwd = newForwarder(a)

	a.goRun(func() { a.serveGRPC() })
	a.goRun(func() { a.handleEvents(ctx) })
	a.goRun(func() { a.monitorLeadership(ctx) })
	a.goRun(func() { a.leaseLoop(ctx) })
	a.goRun(func() { a.exec.run(ctx) })
	if len(a.cfg.Join) > 0 {
		a.goRun(func() { a.gossip.RetryJoin(ctx, a.cfg.Join, time.Second) })
	}
	a.log.Info("agent started", "site", a.cfg.Site, "raft", a.addr(a.cfg.Ports.Raft), "grpc", a.addr(a.cfg.Ports.GRPC),
		"gossip_wan", a.gossip.WANAddr(), "gossip_lan", a.gossip.LANAddr(), "bootstrap_expect", a.cfg.BootstrapExpect)
	return nil
}

func (a *Agent) goRun(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

// Stop leaves gossip gracefully, hands leadership over if this node leads,
// and shuts everything down. A SIGKILL instead loses nothing committed:
// the log is fsync'd on every write.
func (a *Agent) Stop() {
	a.stop.Do(func() {
		if a.raft != nil && a.raft.State() == raft.Leader {
			// Planned restarts should not cost an election timeout.
			if err := a.raft.LeadershipTransfer().Error(); err != nil {
				a.log.Warn("leadership transfer failed", "error", err)
			}
		}
		if a.gossip != nil {
			if err := a.gossip.Leave(2 * time.Second); err != nil {
				a.log.Warn("gossip leave failed", "error", err)
			}
		}
		if a.cancel != nil {
			a.cancel()
		}
		if a.grpc != nil {
			done := make(chan struct{})
			go func() { a.grpc.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(shutdownWait):
				a.grpc.Stop()
			}
		}
		if a.gossip != nil {
			_ = a.gossip.Shutdown()
		}
		a.shutdownRaft()
		_ = a.drv.Close()
		if a.fwd != nil {
			a.fwd.close()
		}
		if !waitAtMost(a.wg.Wait, shutdownWait) {
			a.log.Warn("background loops did not end in time; exiting without them", "waited", shutdownWait)
		}
		a.log.Info("agent stopped")
	})
}

// shutdownWait bounds each wait of a clean stop. A stop must end: the
// operator or the service manager is waiting, and nothing is lost by
// exiting (the log is fsync'd, VMs die with the process).
const shutdownWait = 3 * time.Second

func waitAtMost(wait func(), d time.Duration) bool {
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func (a *Agent) shutdownRaft() {
	if a.raft != nil {
		var err error
		// hashicorp/raft's shutdown waits for every replication goroutine,
		// and one whose pipeline to a vanished peer is full waits for the
		// transport's timeout or longer (seen in the randomized fault
		// test). Leave it behind rather than hang, and then do not close
		// the store under it.
		if !waitAtMost(func() { err = a.raft.Shutdown().Error() }, shutdownWait) {
			a.log.Warn("raft did not shut down in time; exiting without waiting", "waited", shutdownWait)
			return
		}
		if err != nil {
			a.log.Warn("raft shutdown", "error", err)
		}
	}
	if a.trans != nil {
		_ = a.trans.Close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
}

func (a *Agent) setupRaft() error {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(a.cfg.Name)
	rc.HeartbeatTimeout = a.cfg.Raft.HeartbeatTimeout
	rc.ElectionTimeout = a.cfg.Raft.ElectionTimeout
	rc.LeaderLeaseTimeout = a.cfg.Raft.LeaderLeaseTimeout
	rc.SnapshotThreshold = a.cfg.Raft.SnapshotThreshold
	rc.SnapshotInterval = a.cfg.Raft.SnapshotInterval
	rc.Logger = a.log.Named("raft")
	// Buffered: raft drops notifications it cannot deliver at once, and the
	// leader loop must see every transition.
	notify := make(chan bool, 16)
	rc.NotifyCh = notify
	a.leaderNotify = notify

	dir := filepath.Join(a.cfg.DataDir, "raft")
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return fmt.Errorf("raft store: %w", err)
	}
	a.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, a.log.Named("snapshot"))
	if err != nil {
		return fmt.Errorf("raft snapshots: %w", err)
	}
	adv, err := net.ResolveTCPAddr("tcp", a.addr(a.cfg.Ports.Raft))
	if err != nil {
		return fmt.Errorf("raft advertise address: %w", err)
	}
	trans, err := raft.NewTCPTransportWithLogger(a.bind(a.cfg.Ports.Raft), adv, 3, 10*time.Second, a.log.Named("raft-net"))
	if err != nil {
		return fmt.Errorf("raft transport: %w", err)
	}
	a.trans = trans
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("raft state: %w", err)
	}
	a.bootstrapped = has
	r, err := raft.NewRaft(rc, a.fsm, store, store, snaps, trans)
	if err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	a.raft = r
	return nil
}

// hasRaftState reports whether this node belongs to a cluster: bootstrapped,
// restarted with a log, or added by a leader.
func (a *Agent) hasRaftState() bool {
	a.bootMu.Lock()
	b := a.bootstrapped
	a.bootMu.Unlock()
	if b {
		return true
	}
	f := a.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

var errNoLeader = errors.New("no leader")

// leader returns the leader's name and gRPC address.
func (a *Agent) leader() (name, grpcAddr string, err error) {
	_, id := a.raft.LeaderWithID()
	if id == "" {
		return "", "", errNoLeader
	}
	name = string(id)
	if name == a.cfg.Name {
		return name, a.addr(a.cfg.Ports.GRPC), nil
	}
	for _, m := range a.members.Members() {
		if m.Name == name && m.Meta.GRPCAddr != "" {
			return name, m.Meta.GRPCAddr, nil
		}
	}
	if n := a.fsm.Node(name); n != nil && n.GetGrpcAddr() != "" {
		return name, n.GetGrpcAddr(), nil
	}
	return name, "", fmt.Errorf("leader %s has no known gRPC address", name)
}
