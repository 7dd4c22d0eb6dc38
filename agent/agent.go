// Package agent wires one haven node together and does nothing else: it
// opens the Raft node (consensus), the gRPC server (server, services),
// gossip (heartbeat) and the driver, and runs the leader's duties
// (leader), the lease renewer (lease) and the executor (executor), which
// each know the others only through small interfaces.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/events"
	"github.com/haven-ha/haven/agent/executor"
	"github.com/haven-ha/haven/agent/follow"
	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/agent/lease"
	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/agent/server"
	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/logging"
	"github.com/haven-ha/haven/internal/rpcclient"
	"github.com/haven-ha/haven/internal/tlsutil"
)

// Version is reported in gossip metadata and the API.
var Version = "0.1.0-dev"

// Agent is one running haven node.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	fsm     *fsm.FSM
	events  *events.Broker
	metrics *metrics.Metrics
	drv     driver.Hypervisor

	raft   *consensus.Node
	grpc   *server.Server
	audit  *server.Audit
	gossip *heartbeat.Membership
	pool   *rpcclient.Pool
	// leasePool holds the renewals' connections, which a second renewal
	// in a row that times out resets (renewOnce): resetting a shared one
	// would cut the moves and log streams on it. leaseTimeouts counts the
	// renewals in a row that timed out.
	leasePool     *rpcclient.Pool
	leaseTimeouts atomic.Int32
	// tls is the node's certificates, nil with tls.plaintext.
	tls    *tlsutil.Reloader
	leases *lease.Table
	leader *leader.Leader
	exec   *executor.Executor
	// logServer serves the committed log to the agents outside the Raft
	// configuration.
	logServer *follow.Server
	// observed is the FSM as Raft applies to it, publishing every apply.
	observed *events.Observed

	gossipEvents chan heartbeat.Event
	gossipKeys   [][]byte // nil: plaintext
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	stop         sync.Once
}

// New checks the configuration, opens the data directory and the driver;
// Start brings the node up.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
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
	if log == nil {
		log = logging.Discard()
	}
	keys, err := cfg.gossipKeys(logging.Named(log, "gossip"))
	if err != nil {
		return nil, err
	}
	tlsFiles, err := newTLS(cfg, logging.Named(log, "tls"))
	if err != nil {
		return nil, err
	}
	drv, err := newDriver(cfg, logging.Named(log, "driver"))
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:          cfg,
		log:          log,
		fsm:          fsm.New(),
		events:       events.NewBroker(),
		metrics:      metrics.New(),
		drv:          drv,
		gossipEvents: make(chan heartbeat.Event, 256),
		gossipKeys:   keys,
		tls:          tlsFiles,
	}
	a.pool = rpcclient.NewPool(rpcclient.AgentOptions(cfg.Lease.Duration, a.clientTLS())...)
	a.leasePool = rpcclient.NewPool(rpcclient.AgentOptions(cfg.Lease.Duration, a.clientTLS())...)
	return a, nil
}

func (a *Agent) addr(port int) string {
	return net.JoinHostPort(a.cfg.advertise(), strconv.Itoa(port))
}

func (a *Agent) bind(port int) string {
	return net.JoinHostPort(a.cfg.BindAddr, strconv.Itoa(port))
}

// GRPCAddr is where this agent's API listens.
func (a *Agent) GRPCAddr() string { return a.grpc.Addr() }

// Start opens Raft, the gRPC listener and gossip, then runs the background
// loops until Stop.
func (a *Agent) Start(ctx context.Context) error {
	ctx, a.cancel = context.WithCancel(ctx)
	a.observed = events.Observe(a.fsm, a.events, a.metrics)
	node, err := consensus.Open(a.consensusConfig(), a.observed)
	var damage *consensus.DamageError
	if errors.As(err, &damage) {
		return fmt.Errorf("%w. %s", err, a.rebuildHint())
	}
	if err != nil {
		return err
	}
	a.raft = node
	g, err := heartbeat.New(a.gossipConfig())
	if err != nil {
		a.raft.Close()
		return fmt.Errorf("gossip: %w", err)
	}
	a.gossip = g
	a.wireDuties()
	if err := a.serve(); err != nil {
		_ = a.gossip.Shutdown()
		a.raft.Close()
		return err
	}
	if err := a.serveMetrics(ctx); err != nil {
		a.grpc.Stop(0)
		_ = a.gossip.Shutdown()
		a.raft.Close()
		return err
	}
	a.goRun(func() { a.watchTLS(ctx) })
	a.goRun(func() { a.pumpEvents(ctx) })
	a.goRun(func() { a.advertiseState(ctx) })
	a.goRun(func() { a.leader.Run(ctx) })
	a.goRun(func() { a.renewer().Run(ctx) })
	a.goRun(func() { a.exec.Run(ctx) })
	a.goRun(func() { a.follower().Run(ctx) })
	a.goRun(func() { a.endOwnDrain(ctx) })
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
		if a.raft != nil {
			// Planned restarts should not cost an election timeout.
			if err := a.raft.TransferLeadership(); err != nil {
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
			a.grpc.Stop(shutdownWait)
		}
		if a.gossip != nil {
			_ = a.gossip.Shutdown()
		}
		if a.raft != nil {
			a.raft.Close()
		}
		_ = a.drv.Close()
		_ = a.audit.Close()
		a.pool.Close()
		a.leasePool.Close()
		if !consensus.WaitAtMost(a.wg.Wait, shutdownWait) {
			a.log.Warn("background loops did not end in time; exiting without them", "waited", shutdownWait)
		}
		a.log.Info("agent stopped")
	})
}

// Halted is closed when this node's FSM stops on a log entry it cannot
// decode (fsm.HaltError): the agent must stop, and HaltError says why
// and what to do.
func (a *Agent) Halted() <-chan struct{} { return a.fsm.Halted() }

// HaltError is why the FSM halted, with the way to rebuild the node.
func (a *Agent) HaltError() error {
	return fmt.Errorf("%w. %s", a.fsm.Err(), a.rebuildHint())
}

// rebuildHint tells the operator how to rebuild a node whose Raft state
// is damaged: the one documented command, then a start.
func (a *Agent) rebuildHint() string {
	return fmt.Sprintf("This node cannot trust its copy of the cluster state; rebuild it from its peers: with the agent stopped, run `haven recover --data-dir %s` (it moves the damaged Raft state aside, deleting nothing), then start the agent again: it rejoins under its name and receives the leader's snapshot", a.cfg.DataDir)
}

// Recover sets aside the Raft state of the agent whose data directory is
// dataDir (see consensus.SetAside) and returns where it went.
func Recover(dataDir string, now time.Time) (string, error) {
	return consensus.SetAside(filepath.Join(dataDir, "raft"), now)
}

// shutdownWait bounds each wait of a clean stop. A stop must end: the
// operator or the service manager is waiting, and nothing is lost by
// exiting (the log is fsync'd, VMs die with the process).
const shutdownWait = 3 * time.Second

var errNoLeader = errors.New("no leader")

// locate returns the leader's name and gRPC address.
func (a *Agent) locate() (name, grpcAddr string, err error) {
	name = a.raft.LeaderID()
	if name == "" {
		return "", "", errNoLeader
	}
	if name == a.cfg.Name {
		return name, a.addr(a.cfg.Ports.GRPC), nil
	}
	addr, err := a.grpcAddrOf(name)
	if err != nil {
		return name, "", fmt.Errorf("leader %w", err)
	}
	return name, addr, nil
}

// grpcAddrOf is the gRPC address of the named node: gossip's, or the FSM's
// record of it. One member, not the list: every renewal finds the leader
// here, and listing (and sorting) all members for it was a twentieth of an
// idle agent's CPU at 64 agents.
func (a *Agent) grpcAddrOf(name string) (string, error) {
	if m, ok := a.gossip.Member(name); ok && m.Meta.GRPCAddr != "" {
		return m.Meta.GRPCAddr, nil
	}
	if n := a.fsm.Node(name); n != nil && n.GetGrpcAddr() != "" {
		return n.GetGrpcAddr(), nil
	}
	return "", fmt.Errorf("%s has no known gRPC address", name)
}
