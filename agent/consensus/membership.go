package consensus

import (
	"context"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/quorum"
)

// Configuration is the Raft configuration and the index it was read at.
func (n *Node) Configuration() ([]raft.Server, uint64, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, 0, raftError(err)
	}
	return f.Configuration().Servers, f.Index(), nil
}

// Change applies one planned voter change, checked against the
// configuration at prevIndex: a concurrent change makes it fail instead of
// applying a stale plan. It returns the index of the new configuration.
func (n *Node) Change(c quorum.Change, addr string, prevIndex uint64) (uint64, error) {
	id, a := raft.ServerID(c.ID), raft.ServerAddress(addr)
	var fut raft.IndexFuture
	switch c.Kind {
	case quorum.Add:
		fut = n.raft.AddNonvoter(id, a, prevIndex, 0)
	case quorum.Promote:
		fut = n.raft.AddVoter(id, a, prevIndex, 0)
	case quorum.Demote:
		fut = n.raft.DemoteVoter(id, prevIndex, 0)
	case quorum.Remove:
		fut = n.raft.RemoveServer(id, prevIndex, 0)
	default:
		return 0, fmt.Errorf("unknown change %v", c.Kind)
	}
	if err := fut.Error(); err != nil {
		return 0, raftError(err)
	}
	return fut.Index(), nil
}

// HasState reports whether this node belongs to a cluster: bootstrapped,
// restarted with a log, or added by a leader.
func (n *Node) HasState() bool {
	n.bootMu.Lock()
	b := n.bootstrapped
	n.bootMu.Unlock()
	if b {
		return true
	}
	f := n.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

// MaybeBootstrap forms the first cluster once expect nodes that agree on
// expect see each other and none of them has state (quorum.Bootstrap
// decides). It counts first and asks only then, so that a node waiting for
// its peers does not dial them every time it is called; and it asks (ask)
// only the peers started with expect that do not advertise state, the ones
// that may bootstrap at the same moment (see quorum.Peer). Asking every
// peer, one at a time with any failure starting over, never finished at
// 100 agents on a loaded machine.
//
// peers is read again after the asks, and the decision made again on that
// view: a view read while gossip merges a peer's state can hold the
// servers and not yet the joiner whose state forbids the bootstrap (a
// fresh server formed a second cluster so in TestFreshServerSeesAJoinerWithState).
func (n *Node) MaybeBootstrap(ctx context.Context, expect int, view func() []quorum.Peer, ask func(context.Context, quorum.Peer) (bool, error)) {
	n.bootMu.Lock()
	done := n.bootstrapped
	n.bootMu.Unlock()
	if done || expect == 0 {
		return
	}
	if n.HasState() {
		n.setBootstrapped()
		return
	}
	self := quorum.Peer{ID: n.name, Expect: expect}
	peers := view()
	if servers, why, err := quorum.Bootstrap(self, expect, peers); err != nil {
		n.log.Error("not bootstrapping", "reason", err)
		return
	} else if servers == nil {
		n.log.Debug("not bootstrapping", "reason", why)
		return
	}
	answers := map[string]bool{}
	// Only a server without advertised state may bootstrap beside this one.
	mustAsk := func(p quorum.Peer) bool { return p.ID != n.name && p.Expect != 0 && !p.HasState }
	for _, p := range peers {
		if !mustAsk(p) {
			continue
		}
		has, err := ask(ctx, p)
		if err != nil {
			n.log.Info("not bootstrapping yet: cannot ask peer", "peer", p.ID, "error", err)
			return
		}
		answers[p.ID] = has
	}
	peers = view()
	for i, p := range peers {
		if !mustAsk(p) {
			continue
		}
		has, asked := answers[p.ID]
		if !asked {
			n.log.Debug("not bootstrapping yet: a server appeared while the others were asked", "peer", p.ID)
			return
		}
		peers[i].HasState = has
	}
	servers, why, err := quorum.Bootstrap(self, expect, peers)
	if err != nil || servers == nil {
		n.log.Info("not bootstrapping", "reason", why, "error", err)
		return
	}
	var conf raft.Configuration
	for _, s := range servers {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.RaftAddr)})
	}
	n.log.Info("bootstrapping the cluster", "servers", len(conf.Servers))
	if err := n.raft.BootstrapCluster(conf).Error(); err != nil && err != raft.ErrCantBootstrap {
		n.log.Error("bootstrap failed", "error", err)
		return
	}
	n.setBootstrapped()
}

func (n *Node) setBootstrapped() {
	n.bootMu.Lock()
	n.bootstrapped = true
	n.bootMu.Unlock()
}
