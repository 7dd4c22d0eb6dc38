package leader

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

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

// reconcileMembers makes the FSM's node records and the Raft configuration match
// what gossip reports.
func (l *Leader) reconcileMembers(t *term) error {
	now := time.Now()
	members := l.cfg.Members.Members()
	seen := map[string]heartbeat.Member{}
	for _, m := range members {
		seen[m.Name] = m
		want := memberNode(m)
		if have := l.state.Node(m.Name); have == nil || !sameNode(have, want) {
			if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: want}}}); err != nil {
				return fmt.Errorf("upsert node %s: %w", m.Name, err)
			}
		}
	}
	// Nodes gossip has forgotten entirely are gone.
	for _, n := range l.state.Nodes() {
		if _, ok := seen[n.GetName()]; !ok && n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
			if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_SetNodeStatus{SetNodeStatus: &havenv1.SetNodeStatusCommand{Name: n.GetName(), Status: havenv1.NodeStatus_NODE_STATUS_FAILED}}}); err != nil {
				return err
			}
		}
	}
	return l.reconcileRaft(t, seen, now)
}

// memberNode is the node record gossip's view of a member makes.
func memberNode(m heartbeat.Member) *havenv1.Node {
	return &havenv1.Node{
		Name:              m.Name,
		Site:              m.Meta.Site,
		Witness:           m.Meta.Witness,
		GossipAddr:        m.Addr,
		RaftAddr:          m.Meta.RaftAddr,
		GrpcAddr:          m.Meta.GRPCAddr,
		Capacity:          &havenv1.Capacity{CpuMillis: m.Meta.CPUMillis, MemoryBytes: m.Meta.MemoryBytes},
		Version:           m.Meta.Version,
		Status:            nodeStatus(m.State),
		Labels:            heartbeat.ParseLabels(m.Meta.Labels),
		LiveMigration:     m.Meta.Live,
		QuickMigration:    m.Meta.Quick,
		HotPlugDisks:      m.Meta.HotPlug,
		PostcopyMigration: m.Meta.Postcopy,
	}
}

func sameNode(have, want *havenv1.Node) bool {
	h := proto.Clone(have).(*havenv1.Node)
	h.StatusTime, h.CreateIndex, h.ModifyIndex, h.Draining = nil, 0, 0, false
	h.CannotRun, h.CheckedIndex = nil, 0
	return proto.Equal(h, want)
}

func (l *Leader) reconcileRaft(t *term, members map[string]heartbeat.Member, now time.Time) error {
	conf, idx, err := l.cfg.Raft.Configuration()
	if err != nil {
		return err
	}
	inConf := map[string]raft.Server{}
	for _, s := range conf {
		inConf[string(s.ID)] = s
	}
	var servers []quorum.Server
	addrs := map[string]string{}
	for name, m := range members {
		alive := m.State == heartbeat.StateAlive || m.State == heartbeat.StateSuspect
		s, ok := inConf[name]
		servers = append(servers, quorum.Server{
			ID: name, Site: m.Meta.Site, Witness: m.Meta.Witness, NoVote: m.Meta.NoVote, Alive: alive,
			Since: t.observe(name, alive, now), Heard: l.leases.Heard(name), InConfig: ok, Voter: ok && s.Suffrage == raft.Voter,
		})
		addrs[name] = m.Meta.RaftAddr
	}
	for name, s := range inConf {
		if _, ok := members[name]; !ok {
			servers = append(servers, quorum.Server{ID: name, Alive: false, Since: t.observe(name, false, now), Heard: l.leases.Heard(name), InConfig: true, Voter: s.Suffrage == raft.Voter})
		}
	}
	plan := quorum.Plan(servers, l.cfg.Name, quorum.Options{
		MaxVoters: l.cfg.MaxVoters, MaxMembers: l.cfg.MaxMembers, Stabilization: l.cfg.Stabilization, ReapAfter: l.cfg.ReapAfter,
	}, now)
	for _, c := range plan {
		// Each change is checked against the configuration it was planned
		// on: a concurrent change makes the next one fail instead of
		// applying a stale plan.
		next, err := l.cfg.Raft.Change(c, addrs[c.ID], idx)
		if err != nil {
			return fmt.Errorf("%s %s: %w", c.Kind, c.ID, err)
		}
		idx = next
		if c.Kind == quorum.Add {
			// Stabilization counts from joining the configuration, so
			// a node catches up on the log before it votes.
			t.since[c.ID] = now
		}
		l.log.Info("raft configuration changed", "change", c.Kind.String(), "node", c.ID, "reason", c.Reason)
	}
	if len(plan) == 0 {
		l.handOff(servers, addrs)
	}
	return nil
}

// handOff hands leadership away from a witness or a node of weight 0
// (quorum.HandOff) once the configuration is settled. A transfer that
// fails is tried again at the next reconcile.
func (l *Leader) handOff(servers []quorum.Server, addrs map[string]string) {
	site := map[string]string{}
	for _, s := range servers {
		site[s.ID] = s.Site
	}
	groups := map[string]int{}
	for _, g := range l.state.Groups() {
		if o := g.GetOwner(); o != "" {
			groups[site[o]]++
		}
	}
	to, ok := quorum.HandOff(servers, l.cfg.Name, groups)
	if !ok {
		return
	}
	l.log.Info("handing leadership to a data-site voter", "to", to, "site", site[to])
	if err := l.cfg.Raft.TransferLeadershipTo(to, addrs[to]); err != nil {
		l.log.Warn("leadership transfer failed", "to", to, "err", err)
	}
}
