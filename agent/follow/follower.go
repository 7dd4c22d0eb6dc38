package follow

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/agent/consensus"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Raft is this node's Raft as the follower sees it (consensus.Node).
type Raft interface {
	// Silent is true while no leader's AppendEntries reach this node:
	// outside the configuration, always.
	Silent() bool
	// SetFollowed records what the followed member says of Raft; the
	// zero Followed when the stream ends.
	SetFollowed(consensus.Followed)
}

// FSM is what the stream feeds: the FSM Raft would feed, with its
// observers (events.Observed over fsm.FSM).
type FSM interface {
	Apply(*raft.Log) any
	Restore(io.ReadCloser) error
	Index() uint64
}

// Stream is one FollowLog stream.
type Stream interface {
	Recv() (*havenv1.FollowLogResponse, error)
}

// Follower is the half of an agent outside the configuration.
type Follower struct {
	Self string
	Raft Raft
	FSM  FSM
	// Open opens a FollowLog stream on the named member after index
	// after; the stream ends with ctx.
	Open func(ctx context.Context, member string, after uint64) (Stream, error)
	// Peers names the nodes to try before any member named the
	// configuration's (gossip's live members).
	Peers func() []string
	// Preferred names the nodes among Peers to try first, until each has
	// failed: this node's own last Raft configuration. In a large cluster
	// most peers are outside the configuration and refuse a stream; at
	// 100 agents (nine members) on a loaded machine a restarted former
	// member that tried every peer at random got no stream, and named no
	// leader, for a minute. Nil: none.
	Preferred func() []string
	// KeepAlive is the member's (Server.KeepAlive): a stream quiet for
	// three of them is given up. Zero is 2 s.
	KeepAlive time.Duration
	// Check is how often a node whose Raft speaks looks again whether it
	// fell silent. Zero is 1 s.
	Check  time.Duration
	Logger *slog.Logger

	members []string
	leader  string // as the last member heard named it
}

// Run follows the log whenever Raft is silent, until ctx ends.
func (f *Follower) Run(ctx context.Context) {
	check := f.Check
	if check == 0 {
		check = time.Second
	}
	failed := map[string]bool{}
	for ctx.Err() == nil {
		if !f.Raft.Silent() {
			sleep(ctx, check)
			continue
		}
		member := f.pick(failed)
		if member == "" {
			clear(failed)
			sleep(ctx, check)
			continue
		}
		err := f.follow(ctx, member, failed)
		f.Raft.SetFollowed(consensus.Followed{})
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errLeads) {
			continue // to another member at once; the leader stays untried
		}
		if err != nil && !errors.Is(err, errRaftSpeaks) {
			failed[member] = true
			f.Logger.Debug("following the log stopped", "member", member, "error", err)
			sleep(ctx, check/4)
		}
	}
}

// errRaftSpeaks ends a stream: the node is in the configuration now, or
// hears its leader again.
var errRaftSpeaks = errors.New("raft reaches this node")

// errLeads ends a stream from the leader while another member is left to
// try (see pick). It is checked at the stream's first message only: an
// election does not move a member's followers, and a follower that only
// the leader serves stays with it.
var errLeads = errors.New("the member followed leads")

// follow applies one member's stream until it fails or Raft speaks.
func (f *Follower) follow(ctx context.Context, member string, failed map[string]bool) error {
	keep := f.KeepAlive
	if keep == 0 {
		keep = 2 * time.Second
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	quiet := time.AfterFunc(3*keep, func() { cancel(errors.New("the member went quiet")) })
	defer quiet.Stop()
	s, err := f.Open(ctx, member, f.FSM.Index())
	if err != nil {
		return err
	}
	var snap bytes.Buffer
	for heard := false; ; heard = true {
		resp, err := s.Recv()
		if err != nil {
			if c := context.Cause(ctx); c != nil {
				return c
			}
			return err
		}
		if !heard && resp.GetLeader() == member && slices.ContainsFunc(resp.GetMembers(), func(m string) bool {
			return m != member && m != f.Self && !failed[m]
		}) {
			f.members, f.leader = resp.GetMembers(), member
			return errLeads
		}
		if !heard {
			f.Logger.Info("following the log by stream: this node is outside the Raft configuration or hears no leader", "member", member, "index", f.FSM.Index())
		}
		quiet.Reset(3 * keep)
		if len(resp.GetMembers()) > 0 {
			f.members = resp.GetMembers()
		}
		f.leader = resp.GetLeader()
		f.Raft.SetFollowed(consensus.Followed{Leader: resp.GetLeader(), Members: resp.GetMembers(), Voters: resp.GetVoters()})
		if len(resp.GetSnapshot()) > 0 || resp.GetSnapshotDone() {
			snap.Write(resp.GetSnapshot())
			if resp.GetSnapshotDone() {
				if err := f.FSM.Restore(io.NopCloser(&snap)); err != nil {
					return err
				}
				snap = bytes.Buffer{}
			}
			continue
		}
		for _, e := range resp.GetEntries() {
			f.FSM.Apply(&raft.Log{Index: e.GetIndex(), Term: e.GetTerm(), Type: raft.LogCommand, Data: e.GetData()})
		}
		if !f.Raft.Silent() {
			return errRaftSpeaks
		}
	}
}

// pick chooses a member to follow at random, so followers spread over
// the members, the leader last: it answers every renewal and commits
// every decision, and at 100 agents the 23 streams it served (picked
// before the follower knew which member led) were what it could least
// afford when a node died. Before any member named the configuration, a peer, of the
// Preferred ones while any of them is untried.
func (f *Follower) pick(failed map[string]bool) string {
	untried := func(from []string) []string {
		return slices.DeleteFunc(slices.Clone(from), func(m string) bool { return m == f.Self || failed[m] })
	}
	from := untried(f.members)
	if others := slices.DeleteFunc(slices.Clone(from), func(m string) bool { return m == f.leader }); len(others) > 0 {
		from = others
	}
	if len(f.members) == 0 && f.Peers != nil {
		from = untried(f.Peers())
		if f.Preferred != nil {
			pref := f.Preferred()
			if known := slices.DeleteFunc(slices.Clone(from), func(m string) bool { return !slices.Contains(pref, m) }); len(known) > 0 {
				from = known
			}
		}
	}
	if len(from) == 0 {
		if len(f.members) > 0 {
			// Every member named failed: perhaps the configuration
			// changed; start again from gossip.
			f.members = nil
		}
		return ""
	}
	return from[rand.IntN(len(from))]
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
