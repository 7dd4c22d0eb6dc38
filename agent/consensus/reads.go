package consensus

import (
	"errors"
	"time"

	"github.com/hashicorp/raft"

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

// ErrReadsNotReady: this node leads but has not applied its barrier yet.
var ErrReadsNotReady = errors.New("the leader has not yet applied its predecessors' writes: retry")

// SetReadsReady is called by the leader loop: true once its barrier is
// applied, false when its term ends.
func (n *Node) SetReadsReady(ok bool) { n.readsReady.Store(ok) }

// ConsistentRead returns nil when this node may answer a consistent read
// now.
func (n *Node) ConsistentRead() error {
	if !n.readsReady.Load() {
		if !n.IsLeader() {
			return ErrNotLeader
		}
		return ErrReadsNotReady
	}
	return n.VerifyLeader()
}

// ReadMeta describes the state a read is about to be answered from.
func (n *Node) ReadMeta(consistent bool) *havenv1.ReadMeta {
	m := &havenv1.ReadMeta{Index: n.fsm.Index(), AnsweredBy: n.name, Consistent: consistent}
	m.KnownLeader = n.LeaderID() != ""
	if n.raft.State() != raft.Leader {
		if last := n.raft.LastContact(); !last.IsZero() {
			m.LastContactMillis = uint64(time.Since(last).Milliseconds())
		}
	}
	return m
}
