package agent

import (
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Reads come in two kinds, as Consul's do. By default the agent asked
// answers from its own copy of the state: fast, available without a
// quorum, and up to the replication lag behind the leader (milliseconds;
// longer while a leader is elected). ReadMeta tells the caller how stale
// it may be. A consistent read is answered by the leader after it has
// verified, with a quorum, that it still leads: its copy then holds every
// write acknowledged before the read began (writes it acknowledged were
// applied before their answer; writes of earlier terms were applied by
// its barrier), so the read is linearizable.

// consistentRead returns nil when this agent may answer a consistent
// read now.
func (a *Agent) consistentRead() error {
	if !a.readsReady.Load() {
		return status.Error(codes.Unavailable, "the leader has not yet applied its predecessors' writes: retry")
	}
	if err := a.raft.VerifyLeader().Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return a.notLeader()
		}
		return status.Errorf(codes.Unavailable, "leadership could not be verified: %v", err)
	}
	return nil
}

// readMeta describes the state a read is about to be answered from.
func (a *Agent) readMeta(consistent bool) *havenv1.ReadMeta {
	m := &havenv1.ReadMeta{Index: a.fsm.Index(), AnsweredBy: a.cfg.Name, Consistent: consistent}
	_, id := a.raft.LeaderWithID()
	m.KnownLeader = id != ""
	if a.raft.State() != raft.Leader {
		if last := a.raft.LastContact(); !last.IsZero() {
			m.LastContactMillis = uint64(time.Since(last).Milliseconds())
		}
	}
	return m
}

// checkMember refuses agent-to-agent calls from a node the cluster does
// not know: neither gossip (in any state but gone for good) nor the FSM
// (alive) has it. A grant to a stranger would be a lease on nothing; a
// report from one, a lie or a misconfiguration. Refusals are logged at
// most once a minute per name.
func (a *Agent) checkMember(node, what string) error {
	for _, m := range a.members.Members() {
		if m.Name == node && m.State != heartbeat.StateLeft {
			return nil
		}
	}
	if n := a.fsm.Node(node); n != nil && n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
		return nil
	}
	if a.strangers.first(node, time.Now()) {
		a.log.Warn("refused a call from a node that is not a member", "node", node, "call", what)
	}
	return status.Errorf(codes.PermissionDenied, "%s: node %q is not a member of this cluster", what, node)
}

// strangers rate-limits the log line of checkMember.
type strangers struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (s *strangers) first(node string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil || len(s.last) > 1024 {
		s.last = map[string]time.Time{}
	}
	if t, ok := s.last[node]; ok && now.Sub(t) < time.Minute {
		return false
	}
	s.last[node] = now
	return true
}
