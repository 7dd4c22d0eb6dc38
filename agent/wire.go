package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/events"
	"github.com/haven-ha/haven/agent/executor"
	"github.com/haven-ha/haven/agent/follow"
	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/agent/lease"
	"github.com/haven-ha/haven/agent/server"
	aclsvc "github.com/haven-ha/haven/agent/services/acl"
	"github.com/haven-ha/haven/agent/services/cluster"
	"github.com/haven-ha/haven/agent/services/keyring"
	"github.com/haven-ha/haven/agent/services/node"
	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/logging"
	"github.com/haven-ha/haven/internal/tlsutil"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

func (a *Agent) consensusConfig() consensus.Config {
	r := a.cfg.Raft
	return consensus.Config{
		Name: a.cfg.Name, Dir: filepath.Join(a.cfg.DataDir, "raft"),
		BindAddr: a.bind(a.cfg.Ports.Raft), AdvertiseAddr: a.addr(a.cfg.Ports.Raft),
		HeartbeatTimeout: r.HeartbeatTimeout, ElectionTimeout: r.ElectionTimeout, LeaderLeaseTimeout: r.LeaderLeaseTimeout,
		SnapshotThreshold: r.SnapshotThreshold, SnapshotInterval: r.SnapshotInterval,
		Logger: logging.Named(a.log, "raft"), Metrics: a.metrics, TLS: a.raftTLS(),
	}
}

func (a *Agent) gossipConfig() heartbeat.Config {
	capacity := a.cfg.capacity()
	c := heartbeat.Config{
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
			NoVote:      a.cfg.NodeWeight == 0,
			RaftAddr:    a.addr(a.cfg.Ports.Raft),
			GRPCAddr:    a.addr(a.cfg.Ports.GRPC),
			Version:     Version,
			Expect:      a.cfg.BootstrapExpect,
			RaftState:   a.raft.HasState(),
			CPUMillis:   capacity.CPUMillis,
			MemoryBytes: capacity.MemoryBytes,
			Labels:      heartbeat.FormatLabels(a.cfg.Labels),
			Live:        a.drv.Capabilities().LiveMigration,
			Quick:       a.drv.Capabilities().QuickMigration,
			HotPlug:     a.drv.Capabilities().HotPlugDisks,
			Postcopy:    a.drv.Capabilities().Postcopy,
		},
		Keys:   a.gossipKeys,
		Label:  a.cfg.Gossip.Label,
		Logger: logging.Named(a.log, "gossip"),
		Events: a.gossipEvents,
	}
	if len(a.gossipKeys) > 0 {
		c.KeyringFile = a.cfg.keyringFile()
	}
	return c
}

// wireDuties builds the leader, its lease table and the executor.
func (a *Agent) wireDuties() {
	a.leases = lease.NewTable(a.cfg.Lease.profiles(), a.cfg.Site, a.fsm, a.raft.VerifyLeader)
	a.leases.Metrics = a.metrics
	// Raft heartbeats every member each tenth of its heartbeat timeout.
	a.leases.VerifyEvery = a.cfg.Raft.HeartbeatTimeout / 10
	p, r := a.cfg.Placement, a.cfg.Raft
	a.leader = leader.New(leader.Config{
		Name: a.cfg.Name, State: a.fsm, Raft: a.raft, Members: a.gossip, Leases: a.leases, Movers: movers{a},
		Logger: logging.Named(a.log, "leader"), Metrics: a.metrics, ACLBootstrapReset: a.aclBootstrapReset, Refused: a.admissionRefused,
		Reserve: p.Reserve, ReserveSites: p.ReserveSites, CPUOvercommit: p.CPUOvercommit, Balancer: balancerMode(p.Balancer), FailbackAfter: p.FailbackAfter,
		BalanceInterval: p.BalancerInterval, BalanceHoldOff: p.BalancerHoldOff, MaxParallelMoves: p.MaxParallelMoves,
		DirtyRate: dirtyRate(a.drv),
		MaxVoters: r.MaxVoters, MaxMembers: r.MaxMembers, Stabilization: r.Stabilization, ReapAfter: r.ReapAfter,
		ElectionTimeout: r.ElectionTimeout, ReconcileInterval: r.ReconcileInterval,
	})
	a.exec = executor.New(executor.Config{
		Node: a.cfg.Name, State: a.fsm, Driver: a.drv, Report: a.sendReport, ReportDisk: a.sendDiskReport, SharedDir: a.cfg.SharedDir,
		ReportChecks: a.sendChecks, Freezes: a.vmFreeze,
		Logger: logging.Named(a.log, "executor"),
	})
	a.logServer = &follow.Server{Log: a.raft, FSM: a.fsm}
	a.observed.OnApply(func() {
		a.exec.Wake()
		a.logServer.Applied()
	})
}

// follower follows the committed log by stream while this node's Raft is
// silent: outside the configuration (raft.max_members), or cut off from
// its leader.
func (a *Agent) follower() *follow.Follower {
	return &follow.Follower{
		Self: a.cfg.Name, Raft: a.raft, FSM: a.observed, Logger: logging.Named(a.log, "follow"),
		Open: a.openLog,
		Peers: func() []string {
			var out []string
			for _, m := range a.gossip.Members() {
				if m.State == heartbeat.StateAlive && !m.Meta.Witness {
					out = append(out, m.Name)
				}
			}
			return out
		},
		Preferred: func() []string {
			members, _ := a.raft.Servers()
			return members
		},
	}
}

// openLog opens a FollowLog stream on the member named.
func (a *Agent) openLog(ctx context.Context, member string, after uint64) (follow.Stream, error) {
	addr, err := a.grpcAddrOf(member)
	if err != nil {
		return nil, err
	}
	conn, err := a.pool.Conn(addr)
	if err != nil {
		return nil, err
	}
	return havenv1.NewNodeServiceClient(conn).FollowLog(ctx, &havenv1.FollowLogRequest{AfterIndex: after, Node: a.cfg.Name})
}

// serve builds the gRPC server and its services, and starts serving.
func (a *Agent) serve() error {
	auth, err := a.auth()
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		Addr:   a.bind(a.cfg.Ports.GRPC),
		Logger: logging.Named(a.log, "grpc"), Metrics: a.metrics, TLS: a.serverTLS(), Auth: auth,
		Forward: &server.Forwarder{
			Self: a.cfg.Name, LeaderOnly: leaderOnly, IsLeader: a.raft.IsLeader, Locate: a.locate, Pool: a.pool,
		},
	})
	if err != nil {
		_ = a.audit.Close()
		return err
	}
	a.grpc = srv
	havenv1.RegisterClusterServiceServer(srv, cluster.New(cluster.Config{
		Name: a.cfg.Name, State: a.fsm, Leader: a.leader, Raft: a.raft, Members: a.gossip, Events: a.events, Locate: a.locate,
	}))
	havenv1.RegisterAclServiceServer(srv, aclsvc.New(aclsvc.Config{State: a.fsm, Leader: a.leader, Locate: a.locate}))
	havenv1.RegisterNodeServiceServer(srv, node.New(node.Config{
		Name: a.cfg.Name, State: a.fsm, Raft: a.raft, Leases: a.leases, Reports: a.leader, Members: a.gossip, Log: a.logServer,
		Driver: a.drv, FaultInjection: a.cfg.Sim.FaultInjection, Holds: a.exec, Mover: a.exec, DialNode: a.dialMove,
		Locate: a.locate, Logger: logging.Named(a.log, "grpc"),
	}))
	havenv1.RegisterKeyringServiceServer(srv, keyring.New(keyring.Config{
		Name: a.cfg.Name, Keyring: a.gossip, Members: a.gossip, Logger: logging.Named(a.log, "grpc"),
		Peer: func(addr string) (havenv1.KeyringServiceClient, error) {
			conn, err := a.pool.Conn(addr)
			if err != nil {
				return nil, err
			}
			return havenv1.NewKeyringServiceClient(conn), nil
		},
	}))
	a.goRun(srv.Serve)
	return nil
}

// leaderOnly names the calls the leader must answer, of every service.
func leaderOnly(method string, req any) bool {
	return cluster.LeaderOnly(method, req) || aclsvc.LeaderOnly(method)
}

// auth is the access-control interceptor, nil with acl.enabled false.
func (a *Agent) auth() (*server.Auth, error) {
	if !a.cfg.ACL.Enabled {
		a.log.Warn("access control is off (acl.enabled: false): anyone who reaches the gRPC port may do anything")
		return nil, nil
	}
	audit, err := server.NewAudit(logging.Named(a.log, "audit"), a.cfg.ACL.AuditFile)
	if err != nil {
		return nil, err
	}
	a.audit = audit
	return &server.Auth{
		Tokens: a.fsm, Audit: audit, Logger: logging.Named(a.log, "grpc"),
		IsNode: a.isNode,
	}, nil
}

// isNode reports whether a call's caller is a node: its verified
// certificate names node.haven. With tls.plaintext no caller can be told
// from a node, so every caller counts as one (the insecure mode, which the
// agent warns about when it starts).
func (a *Agent) isNode(ctx context.Context) bool {
	return a.tls == nil || tlsutil.PeerIsNode(ctx)
}

// aclBootstrapReset reads the index an operator wrote into
// data_dir/acl-bootstrap-reset to bootstrap the ACL again; 0 when there is
// none or it is not a number (said in the log).
func (a *Agent) aclBootstrapReset() uint64 {
	path := filepath.Join(a.cfg.DataDir, fsm.ACLBootstrapResetFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		a.log.Warn("ACL bootstrap reset file ignored: not an index", "path", path, "error", err)
		return 0
	}
	return n
}

// pumpEvents consumes gossip events: it publishes them, wakes the
// leader's reconcile, and tries to bootstrap until this node has Raft
// state.
func (a *Agent) pumpEvents(ctx context.Context) {
	// Retry the bootstrap check on a timer too, while it may still be
	// needed: a peer that was asked during its own start-up may have had
	// no gRPC server yet. Only then: a timer for nothing is one more
	// wakeup a second of every agent.
	booting := a.cfg.BootstrapExpect > 0 && !a.raft.HasState()
	var retry <-chan time.Time
	if booting {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		retry = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-a.gossipEvents:
			a.log.Debug("membership", "event", e.Type, "node", e.Member.Name, "state", e.Member.State)
			a.events.Publish(events.FromMembership(e))
			a.leader.MembershipChanged()
		case <-retry:
		}
		if booting {
			a.maybeBootstrap(ctx)
			if a.raft.HasState() {
				booting, retry = false, nil
			}
		}
	}
}

func (a *Agent) maybeBootstrap(ctx context.Context) {
	if a.cfg.BootstrapExpect == 0 {
		return
	}
	view := func() []quorum.Peer {
		var peers []quorum.Peer
		for _, m := range a.gossip.Members() {
			if m.State == heartbeat.StateAlive {
				peers = append(peers, quorum.Peer{ID: m.Name, RaftAddr: m.Meta.RaftAddr, Expect: m.Meta.Expect, HasState: m.Meta.RaftState})
			}
		}
		return peers
	}
	a.raft.MaybeBootstrap(ctx, a.cfg.BootstrapExpect, view, a.askHasState)
}

// advertiseState re-advertises this node's gossip metadata once it holds
// Raft state (bootstrapped or added by a leader): fresh nodes that would
// bootstrap read it there rather than ask every node (quorum.Peer). It
// looks every second at first, then less often up to every 30 s: an agent
// outside the configuration may never hold state, and while the members
// that added a node are alive their own metadata says the same.
func (a *Agent) advertiseState(ctx context.Context) {
	if a.raft.HasState() {
		return // advertised from the first message
	}
	wait := time.Second
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, 30*time.Second)
		if !a.raft.HasState() {
			continue
		}
		meta := a.gossip.LocalMember().Meta
		meta.RaftState = true
		if err := a.gossip.UpdateMeta(meta); err != nil && !errors.Is(err, heartbeat.ErrLeft) && !errors.Is(err, heartbeat.ErrShutdown) {
			a.log.Warn("cannot advertise this node's Raft state in gossip", "error", err)
		}
		return
	}
}

// askHasState asks a peer whether it already belongs to a cluster.
func (a *Agent) askHasState(ctx context.Context, p quorum.Peer) (bool, error) {
	addr, err := a.grpcAddrOf(p.ID)
	if err != nil {
		return false, err
	}
	conn, err := a.pool.Conn(addr)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := havenv1.NewNodeServiceClient(conn).GetRaftStatus(ctx, &havenv1.GetRaftStatusRequest{})
	if err != nil {
		return false, err
	}
	return resp.GetHasState(), nil
}

// renewer is the node's half of the lease protocol, feeding the executor.
func (a *Agent) renewer() *lease.Renewer {
	return &lease.Renewer{
		Lease: a.cfg.Lease.Duration, Call: a.renewOnce, Granted: a.exec.Granted, Now: a.exec.RenewNow(),
		Logger: logging.Named(a.log, "lease"), Metrics: a.metrics,
	}
}

func (a *Agent) renewOnce(ctx context.Context) (*havenv1.RenewLeaseResponse, error) {
	_, addr, err := a.locate()
	if err != nil {
		return nil, err
	}
	conn, err := a.leasePool.Conn(addr)
	if err != nil {
		return nil, err
	}
	resp, err := havenv1.NewNodeServiceClient(conn).RenewLease(ctx, &havenv1.RenewLeaseRequest{Node: a.cfg.Name})
	// A fresh connection is up within one connect attempt after a
	// partition heals, where the old one waits out TCP's retransmission
	// backoff. But a leader that is only slow (starved) also times
	// renewals out, and at 100 agents every node dropping its connection
	// at the first timeout had the starved leader accept some fifty new
	// ones at once: so the second timeout in a row resets, which a
	// partition reaches within a quarter lease or so.
	if status.Code(err) != codes.DeadlineExceeded {
		a.leaseTimeouts.Store(0)
	} else if a.leaseTimeouts.Add(1) >= 2 {
		a.leaseTimeouts.Store(0)
		a.leasePool.Reset(addr)
	}
	return resp, err
}

// toLeader calls the leader's node service with call, bounded to 2 s: a
// report that cannot go now goes with the executor's next pass.
func (a *Agent) toLeader(ctx context.Context, call func(context.Context, havenv1.NodeServiceClient) error) error {
	_, addr, err := a.locate()
	if err != nil {
		return err
	}
	conn, err := a.pool.Conn(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return call(ctx, havenv1.NewNodeServiceClient(conn))
}

// sendReport sends an executor's report to the leader.
func (a *Agent) sendReport(ctx context.Context, req *havenv1.ReportGroupRequest) error {
	return a.toLeader(ctx, func(ctx context.Context, c havenv1.NodeServiceClient) error {
		_, err := c.ReportGroup(ctx, req)
		return err
	})
}

// sendDiskReport sends an executor's report on a disk change to the
// leader.
func (a *Agent) sendDiskReport(ctx context.Context, req *havenv1.ReportDiskChangeRequest) error {
	return a.toLeader(ctx, func(ctx context.Context, c havenv1.NodeServiceClient) error {
		_, err := c.ReportDiskChange(ctx, req)
		return err
	})
}

// sendChecks sends the executor's checks to the leader.
func (a *Agent) sendChecks(ctx context.Context, req *havenv1.ReportChecksRequest) error {
	return a.toLeader(ctx, func(ctx context.Context, c havenv1.NodeServiceClient) error {
		_, err := c.ReportChecks(ctx, req)
		return err
	})
}

// dirtyRate asks the driver what a guest dirties per second, for the
// balancer's cost of a move; a driver that cannot say prices moves by
// memory alone.
func dirtyRate(d driver.Hypervisor) leader.DirtyRate {
	if e, ok := d.(driver.DirtyRateEstimator); ok {
		return e.EstimatedDirtyRate
	}
	return func(int64) int64 { return 0 }
}
