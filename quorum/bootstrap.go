package quorum

import (
	"fmt"
	"sort"
)

// Peer is a node a fresh agent sees by gossip while deciding whether to
// bootstrap. For a peer started with expect, HasState comes from asking
// it, not from gossip metadata, which can lag: it may bootstrap at any
// moment. A peer started without expect gains state only from its disk,
// which it advertises from its first gossip message, or from the leader of
// a cluster whose members advertise theirs, so its metadata is enough.
type Peer struct {
	ID       string
	RaftAddr string
	Expect   int
	HasState bool
}

// Bootstrap decides whether a fresh agent may bootstrap the first Raft
// configuration, in the manner of Nomad's maybeBootstrap: never when it has
// Raft state already, only once expect nodes see each other, only if every
// one of them was started with the same expect value (two nodes that
// disagree on the cluster size must not form one), and never when any peer
// already belongs to a cluster (a late joiner is added by that cluster's
// leader instead). Peers started with expect 0 only join: they neither
// count nor disagree, so the servers are always picked among the nodes
// started with expect, which every one of them sees alike once it sees
// expect of them. Counting joiners let a server that saw two of them
// before its fellow servers bootstrap with them, and a fellow server
// that saw others bootstrap a second cluster (the scale scenario at 32
// agents). peers includes self. Starting more than expect nodes with
// expect at once is a misconfiguration the choice below only narrows: a
// node that sees fewer of them than another may still pick a different
// set. It returns the servers to bootstrap with, or nil and why not; err
// is set when waiting will not help.
func Bootstrap(self Peer, expect int, peers []Peer) (servers []Peer, why string, err error) {
	switch {
	case expect <= 0:
		return nil, "bootstrap_expect is 0: joining only", nil
	case self.HasState:
		return nil, "this node already has Raft state", nil
	}
	for _, p := range peers {
		if p.Expect != 0 && p.Expect != expect {
			return nil, "", fmt.Errorf("node %s was started with bootstrap_expect %d and this node with %d: refusing to bootstrap until they agree", p.ID, p.Expect, expect)
		}
	}
	var out []Peer
	for _, p := range peers {
		if p.Expect == expect {
			out = append(out, p)
		}
	}
	if len(out) < expect {
		return nil, fmt.Sprintf("waiting for %d nodes started with bootstrap_expect %d, %d seen", expect, expect, len(out)), nil
	}
	for _, p := range peers {
		if p.HasState {
			return nil, fmt.Sprintf("node %s already belongs to a cluster: waiting to be added", p.ID), nil
		}
	}
	// More nodes than expected started at once: every node that sees them
	// all picks the same expect nodes (the lowest names), and a node not
	// among them waits to be added, so that no two nodes bootstrap with
	// different configurations while they see the same peers.
	seen := len(out)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	out = out[:expect]
	for _, p := range out {
		if p.ID == self.ID {
			return out, "", nil
		}
	}
	return nil, fmt.Sprintf("%d nodes seen with bootstrap_expect %d and this node is not among the first %d by name: waiting to be added", seen, expect, expect), nil
}
