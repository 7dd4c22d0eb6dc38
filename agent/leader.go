package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// monitorLeadership starts the leader loop when this node wins an election
// and stops it when it loses leadership, in the shape of Nomad's. Raft may
// report the same transition twice; a second "true" while leading is ignored.
func (a *Agent) monitorLeadership(ctx context.Context) {
	var (
		stop chan struct{}
		wg   sync.WaitGroup
	)
	revoke := func() {
		if stop != nil {
			a.readsReady.Store(false)
			close(stop)
			wg.Wait()
			// Again: the loop may have set it while it was stopping.
			a.readsReady.Store(false)
			stop = nil
			a.leases.end()
			a.log.Info("leadership revoked")
		}
	}
	defer revoke()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-a.leaderNotify:
			switch {
			case isLeader && stop == nil:
				// Office starts when this node learns it leads: later
				// than the election, which only delays fencing.
				a.leases.begin(time.Now(), a.raft.CurrentTerm())
				stop = make(chan struct{})
				wg.Add(1)
				go func(stop chan struct{}) {
					defer wg.Done()
					a.leaderLoop(ctx, stop)
				}(stop)
				a.log.Info("leadership acquired")
			case !isLeader:
				revoke()
			}
		}
	}
}

// leaderLoop: a barrier so the FSM holds every entry committed by earlier
// terms, then establish leadership once, then reconcile on every membership
// event and on a timer until leadership ends.
func (a *Agent) leaderLoop(ctx context.Context, stop chan struct{}) {
	l := &leaderState{since: map[string]time.Time{}, start: time.Now()}
	tick := time.NewTicker(a.cfg.Raft.ReconcileInterval)
	defer tick.Stop()
	established := false
	var duties sync.WaitGroup
	defer duties.Wait()
	for {
		if err := a.raft.Barrier(a.cfg.Raft.ElectionTimeout * 4).Error(); err != nil {
			a.log.Warn("barrier failed", "error", err)
		} else {
			if !established {
				established = true
				// The FSM now holds every epoch committed before this
				// term: renewals may be answered (step 3).
				a.leases.ready()
				a.readsReady.Store(true)
				duties.Add(3)
				go func() { defer duties.Done(); a.leases.serve(stop) }()
				go func() { defer duties.Done(); a.groupsLoop(ctx, stop) }()
				go func() { defer duties.Done(); a.balanceLoop(ctx, stop) }()
				a.log.Info("leadership established", "index", a.fsm.Index())
			}
			if err := a.reconcile(l); err != nil {
				a.log.Warn("reconcile", "error", err)
			}
			// Membership may have changed: have the restart plans of
			// the new state ready before a failover asks for them.
			a.refreshReserve()
		}
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-a.reconcileCh:
		case <-tick.C:
		}
	}
}

// leaderState lives as long as one term of leadership.
type leaderState struct {
	start time.Time
	// since is when this leader first saw a node in its current liveness
	// (alive or not). A new leader gives every node a fresh start, like
	// Nomad's failover grace: it never reaps or demotes on evidence it did
	// not see itself.
	since map[string]time.Time
	alive map[string]bool
}

func (l *leaderState) observe(name string, alive bool, now time.Time) time.Time {
	if l.alive == nil {
		l.alive = map[string]bool{}
	}
	prev, seen := l.alive[name]
	if !seen || prev != alive {
		l.alive[name] = alive
		l.since[name] = now
	}
	return l.since[name]
}

func nodeStatus(s heartbeat.State) havenv1.NodeStatus {
	switch s {
	case heartbeat.StateAlive, heartbeat.StateSuspect:
		return havenv1.NodeStatus_NODE_STATUS_ALIVE
	case heartbeat.StateLeft:
		return havenv1.NodeStatus_NODE_STATUS_LEFT
	default:
		return havenv1.NodeStatus_NODE_STATUS_FAILED
	}
}

// reconcile makes the FSM's node records and the Raft configuration match
// what gossip reports.
func (a *Agent) reconcile(l *leaderState) error {
	now := time.Now()
	members := a.members.Members()
	seen := map[string]heartbeat.Member{}
	for _, m := range members {
		seen[m.Name] = m
		want := memberNode(m)
		if have := a.fsm.Node(m.Name); have == nil || !sameNode(have, want) {
			if err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: want}}}); err != nil {
				return fmt.Errorf("upsert node %s: %w", m.Name, err)
			}
		}
	}
	// Nodes gossip has forgotten entirely are gone.
	for _, n := range a.fsm.Nodes() {
		if _, ok := seen[n.GetName()]; !ok && n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
			if err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_SetNodeStatus{SetNodeStatus: &havenv1.SetNodeStatusCommand{Name: n.GetName(), Status: havenv1.NodeStatus_NODE_STATUS_FAILED}}}); err != nil {
				return err
			}
		}
	}
	return a.reconcileRaft(l, seen, now)
}

// memberNode is the node record gossip's view of a member makes.
func memberNode(m heartbeat.Member) *havenv1.Node {
	return &havenv1.Node{
		Name:       m.Name,
		Site:       m.Meta.Site,
		Witness:    m.Meta.Witness,
		GossipAddr: m.Addr,
		RaftAddr:   m.Meta.RaftAddr,
		GrpcAddr:   m.Meta.GRPCAddr,
		Capacity:   &havenv1.Capacity{CpuMillis: m.Meta.CPUMillis, MemoryBytes: m.Meta.MemoryBytes},
		Version:    m.Meta.Version,
		Status:     nodeStatus(m.State),
		Labels:     parseLabels(m.Meta.Labels),
	}
}

func sameNode(have, want *havenv1.Node) bool {
	h := proto.Clone(have).(*havenv1.Node)
	h.StatusTime, h.CreateIndex, h.ModifyIndex, h.Draining = nil, 0, 0, false
	return proto.Equal(h, want)
}

func (a *Agent) reconcileRaft(l *leaderState, members map[string]heartbeat.Member, now time.Time) error {
	f := a.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	inConf := map[string]raft.Server{}
	for _, s := range f.Configuration().Servers {
		inConf[string(s.ID)] = s
	}
	var servers []quorum.Server
	addrs := map[string]string{}
	for name, m := range members {
		alive := m.State == heartbeat.StateAlive || m.State == heartbeat.StateSuspect
		s, ok := inConf[name]
		servers = append(servers, quorum.Server{
			ID: name, Site: m.Meta.Site, Witness: m.Meta.Witness, Alive: alive,
			Since: l.observe(name, alive, now), InConfig: ok, Voter: ok && s.Suffrage == raft.Voter,
		})
		addrs[name] = m.Meta.RaftAddr
	}
	for name, s := range inConf {
		if _, ok := members[name]; !ok {
			servers = append(servers, quorum.Server{ID: name, Alive: false, Since: l.observe(name, false, now), InConfig: true, Voter: s.Suffrage == raft.Voter})
		}
	}
	plan := quorum.Plan(servers, a.cfg.Name, quorum.Options{
		MaxVoters: a.cfg.Raft.MaxVoters, Stabilization: a.cfg.Raft.Stabilization, ReapAfter: a.cfg.Raft.ReapAfter,
	}, now)
	idx := f.Index()
	for _, c := range plan {
		id, addr := raft.ServerID(c.ID), raft.ServerAddress(addrs[c.ID])
		var fut raft.IndexFuture
		switch c.Kind {
		case quorum.Add:
			fut = a.raft.AddNonvoter(id, addr, idx, 0)
		case quorum.Promote:
			fut = a.raft.AddVoter(id, addr, idx, 0)
		case quorum.Demote:
			fut = a.raft.DemoteVoter(id, idx, 0)
		case quorum.Remove:
			fut = a.raft.RemoveServer(id, idx, 0)
		}
		if err := fut.Error(); err != nil {
			return fmt.Errorf("%s %s: %w", c.Kind, c.ID, err)
		}
		// Each change is checked against the configuration it was planned
		// on: a concurrent change makes the next one fail instead of
		// applying a stale plan.
		idx = fut.Index()
		if c.Kind == quorum.Add {
			// Stabilization counts from joining the configuration, so
			// a node catches up on the log before it votes.
			l.since[c.ID] = now
		}
		a.log.Info("raft configuration changed", "change", c.Kind.String(), "node", c.ID, "reason", c.Reason)
	}
	return nil
}
