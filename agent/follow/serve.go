// Package follow carries the committed log to agents outside the Raft
// configuration. The leader keeps at most raft.max_members agents in it
// (quorum.Options.MaxMembers), because every member costs the leader a
// heartbeat stream and a copy of every entry; the others hear no Raft at
// all. Each of those follows the log from one member over a gRPC stream
// into the same FSM, as Raft would have fed it: a snapshot when it is far
// behind, then the commands in order. Its executor, reads and events work
// from that FSM unchanged, and nothing it does depends on being current:
// a VM runs only while the leader's lease grant names its epoch.
//
// Serve is the member's half, Follower the other's.
package follow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/consensus"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Log is the member's Raft node (consensus.Node).
type Log interface {
	// Committed returns up to max commands after index after and the
	// last index it read, or consensus.ErrCompacted (then a snapshot must
	// go first) or consensus.ErrSilent.
	Committed(after uint64, max int) ([]*raft.Log, uint64, error)
	LeaderID() string
	// Servers names the configuration's servers and its voters.
	Servers() (members, voters []string)
}

// Snapshotter writes the FSM's state and says its index (fsm.FSM).
type Snapshotter interface {
	WriteSnapshot(w io.Writer) (uint64, error)
}

// Server is a member's half: one Serve per follower's stream.
type Server struct {
	Log Log
	FSM Snapshotter
	// KeepAlive is the longest a stream stays quiet: a follower that hears
	// nothing for three of them asks another member. Zero is 2 s.
	KeepAlive time.Duration

	applied signal
}

// Batch is the most commands one message carries.
const Batch = 512

// chunk is the most snapshot bytes one message carries, well inside
// gRPC's 4 MiB message limit.
const chunk = 1 << 20

// Applied wakes the streams: the FSM applied a command. It never blocks.
func (s *Server) Applied() { s.applied.fire() }

// Serve sends the log after index after to send until ctx ends or send
// fails; it returns the Log's error when this member cannot serve.
func (s *Server) Serve(ctx context.Context, after uint64, send func(*havenv1.FollowLogResponse) error) error {
	keep := s.KeepAlive
	if keep == 0 {
		keep = 2 * time.Second
	}
	// The ticker catches a leader change, which no apply announces.
	tick := time.NewTicker(keep / 2)
	defer tick.Stop()
	var (
		leader   string
		lastSend time.Time
		first    = true
		snapped  bool
		snapAt   uint64
	)
	for {
		wake := s.applied.wait()
		entries, through, err := s.Log.Committed(after, Batch)
		if errors.Is(err, consensus.ErrCompacted) {
			if snapped && after == snapAt {
				// The log starts past the FSM's own state: no snapshot
				// and entries this member has would make a whole.
				return fmt.Errorf("follow: the log after the snapshot at %d is compacted: %w", after, err)
			}
			if after, err = s.sendSnapshot(send); err != nil {
				return err
			}
			snapped, snapAt = true, after
			lastSend, first = time.Now(), false
			continue
		}
		if err != nil {
			return err
		}
		now := time.Now()
		l := s.Log.LeaderID()
		if first || len(entries) > 0 || l != leader || now.Sub(lastSend) >= keep {
			resp := s.header(l)
			for _, e := range entries {
				resp.Entries = append(resp.Entries, &havenv1.LogEntry{Index: e.Index, Term: e.Term, Data: e.Data})
			}
			if err := send(resp); err != nil {
				return err
			}
			leader, lastSend, first = l, now, false
		}
		after = through
		if len(entries) == Batch {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-tick.C:
		}
	}
}

// sendSnapshot sends the FSM's state in chunks and returns its index.
func (s *Server) sendSnapshot(send func(*havenv1.FollowLogResponse) error) (uint64, error) {
	var buf bytes.Buffer
	index, err := s.FSM.WriteSnapshot(&buf)
	if err != nil {
		return 0, err
	}
	b := buf.Bytes()
	for {
		n := min(len(b), chunk)
		resp := s.header(s.Log.LeaderID())
		resp.Snapshot, resp.SnapshotDone = b[:n], n == len(b)
		if err := send(resp); err != nil {
			return 0, err
		}
		if b = b[n:]; len(b) == 0 {
			return index, nil
		}
	}
}

// header is a message that names the leader and the configuration.
func (s *Server) header(leader string) *havenv1.FollowLogResponse {
	members, voters := s.Log.Servers()
	return &havenv1.FollowLogResponse{Leader: leader, Members: members, Voters: voters}
}

// signal is a broadcast: wait returns a channel the next fire closes.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}
