package consensus

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// The leader keeps at most raft.max_members agents in the Raft
// configuration (quorum.Options.MaxMembers); every other agent hears no
// AppendEntries and follows the committed log by a stream from a member
// (agent/follow) into the same FSM. These are the Raft node's halves of
// that: what a member serves, and when a node must follow.

// ErrCompacted: the entries asked for are no longer in this member's log
// (a snapshot compacted them), or not yet applied by its Raft: the
// follower needs a snapshot.
var ErrCompacted = errors.New("the entries asked for are not in this member's log")

// ErrSilent: this node hears no leader, so it has nothing current to
// serve a follower.
var ErrSilent = errors.New("this node hears no Raft leader")

// Silent reports whether Raft is quiet here: the node is not leader and
// has not heard from one for three heartbeat timeouts (never, outside the
// configuration). A silent node follows the log by stream; a member cut
// off from its leader may too, harmlessly, since only committed entries
// come that way and the FSM skips those it has.
func (n *Node) Silent() bool {
	if n.raft.State() == raft.Leader {
		return false
	}
	last := n.raft.LastContact()
	return last.IsZero() || time.Since(last) > 3*n.heartbeat
}

// Followed is what the member this node follows by stream last said of
// Raft: its leader ("" for none) and configuration.
type Followed struct {
	Leader          string
	Members, Voters []string
}

// SetFollowed records what the followed member said; the zero Followed
// when the stream ended. LeaderID and Status answer with it while Raft
// is silent.
func (n *Node) SetFollowed(f Followed) { n.followed.Store(&f) }

// followedNow is what the followed member said, nil unless Raft is
// silent and a stream said something.
func (n *Node) followedNow() *Followed {
	f := n.followed.Load()
	if f == nil || f.Leader == "" && len(f.Members) == 0 || !n.Silent() {
		return nil
	}
	return f
}

// Committed returns up to max commands after index after that this
// node's Raft has applied, oldest first, and the last index it read
// (Raft's own entries between commands, barriers and configurations, are
// read and left out: the next call starts past them). Only entries Raft
// applied from its own log are served: those are committed, where the
// log's tail past them may be an old term's entries a new leader will
// overwrite.
func (n *Node) Committed(after uint64, max int) ([]*raft.Log, uint64, error) {
	if n.Silent() {
		return nil, after, ErrSilent
	}
	last := n.raft.AppliedIndex()
	if after >= last {
		return nil, after, nil
	}
	first, err := n.logs.FirstIndex()
	if err != nil {
		return nil, after, err
	}
	if after+1 < first {
		return nil, after, ErrCompacted
	}
	var out []*raft.Log
	through := after
	for i := after + 1; i <= last && len(out) < max; i++ {
		l := new(raft.Log)
		if err := n.logs.GetLog(i, l); errors.Is(err, raft.ErrLogNotFound) {
			// Compacted while we read.
			return nil, after, ErrCompacted
		} else if err != nil {
			return nil, after, fmt.Errorf("raft log %d: %w", i, err)
		}
		if l.Type == raft.LogCommand {
			out = append(out, l)
		}
		through = i
	}
	return out, through, nil
}

// Servers names the servers of this node's Raft configuration, the
// nodes a follower may ask for the log, and the voters among them.
func (n *Node) Servers() (members, voters []string) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil, nil
	}
	for _, s := range f.Configuration().Servers {
		members = append(members, string(s.ID))
		if s.Suffrage == raft.Voter {
			voters = append(voters, string(s.ID))
		}
	}
	return members, voters
}
