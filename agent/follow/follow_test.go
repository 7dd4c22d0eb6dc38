package follow

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// member is a member's Raft log and FSM: commands at increasing indexes
// with gaps where Raft's own entries (barriers, configurations) sit.
type member struct {
	mu      sync.Mutex
	fsm     *fsm.FSM
	logs    []*raft.Log
	first   uint64 // entries below are compacted
	silent  bool
	srv     *Server
	streams atomic.Int32
}

func newMember() *member {
	m := &member{fsm: fsm.New(), first: 1}
	m.srv = &Server{Log: m, FSM: m.fsm, KeepAlive: 100 * time.Millisecond}
	return m
}

func (m *member) commit(t *testing.T, c *havenv1.Command) {
	t.Helper()
	m.mu.Lock()
	c.Time = timestamppb.Now()
	data, err := fsm.Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	index := uint64(1)
	if n := len(m.logs); n > 0 {
		index = m.logs[n-1].Index + 1 + uint64(n%3) // a gap now and then
	}
	l := &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
	if r := m.fsm.Apply(l).(*fsm.Result); r.Err != nil {
		t.Fatal(r.Err)
	}
	m.logs = append(m.logs, l)
	m.mu.Unlock()
	m.srv.Applied()
}

func (m *member) groups(t *testing.T, names ...string) {
	for _, n := range names {
		m.commit(t, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup(n)}}})
	}
}

func (m *member) Committed(after uint64, max int) ([]*raft.Log, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.silent {
		return nil, after, consensus.ErrSilent
	}
	if n := len(m.logs); n == 0 || after >= m.logs[n-1].Index {
		return nil, after, nil
	}
	if after+1 < m.first {
		return nil, after, consensus.ErrCompacted
	}
	var out []*raft.Log
	for _, l := range m.logs {
		if l.Index > after && len(out) < max {
			out = append(out, l)
		}
	}
	return out, out[len(out)-1].Index, nil
}

func (m *member) LeaderID() string                    { return "m1" }
func (m *member) Servers() (members, voters []string) { return []string{"m1", "m2"}, []string{"m1"} }

// stream runs Serve and hands its messages to Recv.
type stream struct {
	msgs chan *havenv1.FollowLogResponse
	done chan error
}

func (s *stream) Recv() (*havenv1.FollowLogResponse, error) {
	select {
	case m := <-s.msgs:
		return m, nil
	case err := <-s.done:
		return nil, err
	}
}

// silence is the follower's Raft; asked counts the follower's looks.
type silence struct {
	quiet    atomic.Bool
	asked    atomic.Int64
	followed atomic.Pointer[consensus.Followed]
}

func (s *silence) Silent() bool {
	s.asked.Add(1)
	return s.quiet.Load()
}
func (s *silence) SetFollowed(f consensus.Followed) { s.followed.Store(&f) }

// follower runs a Follower of the members into a fresh FSM until the
// test ends.
func follower(t *testing.T, members map[string]*member) (*fsm.FSM, *silence) {
	return followerPreferring(t, members, nil)
}

// followerPreferring is follower with Preferred returning preferred.
func followerPreferring(t *testing.T, members map[string]*member, preferred []string) (*fsm.FSM, *silence) {
	f := fsm.New()
	r := &silence{}
	r.quiet.Store(true)
	var peers []string
	for name := range members {
		peers = append(peers, name)
	}
	fo := &Follower{Self: "c1", Raft: r, FSM: f, KeepAlive: 100 * time.Millisecond, Check: 20 * time.Millisecond,
		Logger: logtest.New(t), Peers: func() []string { return peers }, Preferred: func() []string { return preferred },
		Open: func(ctx context.Context, name string, after uint64) (Stream, error) {
			m := members[name]
			if m == nil {
				return nil, fmt.Errorf("no member %s", name)
			}
			s := &stream{msgs: make(chan *havenv1.FollowLogResponse), done: make(chan error, 1)}
			m.streams.Add(1) // here, not in the goroutine: counted before Open returns
			go func() {
				defer m.streams.Add(-1)
				s.done <- m.srv.Serve(ctx, after, func(r *havenv1.FollowLogResponse) error {
					select {
					case s.msgs <- r:
						return nil
					case <-ctx.Done():
						return ctx.Err()
					}
				})
			}()
			return s, nil
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { fo.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f, r
}

// same waits until f holds exactly m's state.
func same(t *testing.T, m *member, f *fsm.FSM) {
	t.Helper()
	var want []byte
	waitfor.Cond(t, 5*time.Second, "the follower to hold the member's state", func() bool {
		var a, b bytes.Buffer
		if _, err := m.fsm.WriteSnapshot(&a); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteSnapshot(&b); err != nil {
			t.Fatal(err)
		}
		want = a.Bytes()
		return bytes.Equal(a.Bytes(), b.Bytes())
	})
	if len(want) < 100 {
		t.Fatalf("the member's state is %d bytes: the test compares nothing", len(want))
	}
}

// A follower from scratch gets every command from the member's log, then
// each new one as it is applied, and the leader and configuration the
// member knows.
func TestFollowerFollowsTheLog(t *testing.T) {
	m := newMember()
	m.groups(t, "a", "b", "c")
	f, r := follower(t, map[string]*member{"m1": m})
	same(t, m, f)
	m.groups(t, "d", "e")
	same(t, m, f)
	if got := r.followed.Load(); got == nil || got.Leader != "m1" || len(got.Members) != 2 || len(got.Voters) != 1 {
		t.Errorf("followed %+v, want leader m1 of members m1, m2 and voter m1", got)
	}
}

// A follower behind the member's compacted log gets a snapshot, then the
// entries after it; more commands than one message carries come in
// several.
func TestFollowerFromSnapshot(t *testing.T) {
	m := newMember()
	m.groups(t, "a", "b")
	m.mu.Lock()
	m.first = m.logs[len(m.logs)-1].Index + 1
	m.mu.Unlock()
	for i := range Batch + 10 {
		m.commit(t, &havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: fsmtest.Node(fmt.Sprintf("n%d", i), "a", 1000, 1<<30, nil)}}})
	}
	f, _ := follower(t, map[string]*member{"m1": m})
	same(t, m, f)
}

// A member that hears no leader refuses; the follower follows another.
// Once this node's Raft speaks the stream ends, and the follower applies
// nothing more of it.
func TestFollowerSkipsSilentMemberAndStopsWhenRaftSpeaks(t *testing.T) {
	m1, m2 := newMember(), newMember()
	m1.silent = true
	for _, m := range []*member{m1, m2} {
		m.groups(t, "a", "b")
	}
	f, r := follower(t, map[string]*member{"m1": m1, "m2": m2})
	same(t, m2, f)
	r.quiet.Store(false)
	m2.groups(t, "c") // the message that finds Raft speaking
	waitfor.Cond(t, 5*time.Second, "the stream to end", func() bool { return m2.streams.Load() == 0 })
	at := f.Index()
	m2.groups(t, "d")
	// Once the follower has looked at Raft twice more it has decided,
	// twice, whether to follow again; Raft speaking, it must not have.
	looks := r.asked.Load()
	waitfor.Cond(t, 5*time.Second, "the follower to look at Raft again", func() bool { return r.asked.Load() >= looks+2 })
	if n := m1.streams.Load() + m2.streams.Load(); n != 0 {
		t.Fatalf("%d streams open after Raft spoke", n)
	}
	if f.Index() != at || f.Group("d") != nil {
		t.Fatalf("the follower applied d after Raft spoke (index %d, was %d)", f.Index(), at)
	}
	if got := r.followed.Load(); got == nil || got.Leader != "" {
		t.Errorf("followed %+v after the stream ended, want the zero Followed", got)
	}
}

// Before a stream names the members, a follower tries the live peers of
// its own last configuration, then, once each has failed, the others.
func TestPickPrefersOwnConfiguration(t *testing.T) {
	f := &Follower{Self: "n1",
		Peers:     func() []string { return []string{"n1", "n2", "n3", "n4", "n5", "n6", "n7"} },
		Preferred: func() []string { return []string{"n1", "n3", "n7", "n99"} }}
	failed := map[string]bool{}
	for range 50 {
		if m := f.pick(failed); m != "n3" && m != "n7" {
			t.Fatalf("picked %q before the configured n3 and n7", m)
		}
	}
	failed["n3"], failed["n7"] = true, true
	seen := map[string]bool{}
	for range 200 {
		seen[f.pick(failed)] = true
	}
	if len(seen) != 4 || seen["n1"] || seen["n3"] || seen["n7"] {
		t.Fatalf("once n3 and n7 failed, picked %v, want n2, n4, n5 and n6", seen)
	}
	f.members = []string{"n5"}
	if m := f.pick(map[string]bool{}); m != "n5" {
		t.Fatalf("with the members named, picked %q, want n5", m)
	}
}

// A follower picks the leader only when no other member is left to try:
// the leader has the cluster's renewals and decisions to serve.
func TestPickLeavesTheLeaderLast(t *testing.T) {
	f := &Follower{Self: "n9", members: []string{"n1", "n2", "n3"}, leader: "n2"}
	failed := map[string]bool{}
	for range 100 {
		if m := f.pick(failed); m == "n2" {
			t.Fatal("picked the leader n2 while n1 and n3 were untried")
		}
	}
	failed["n1"], failed["n3"] = true, true
	if m := f.pick(failed); m != "n2" {
		t.Fatalf("with n1 and n3 failed, picked %q, want the leader n2", m)
	}
}

// A follower whose first stream comes from the leader moves to another
// member at once (both members name m1 the leader).
func TestFollowerLeavesTheLeader(t *testing.T) {
	m1, m2 := newMember(), newMember()
	for _, m := range []*member{m1, m2} {
		m.groups(t, "a", "b")
	}
	f, _ := followerPreferring(t, map[string]*member{"m1": m1, "m2": m2}, []string{"m1"})
	same(t, m2, f)
	waitfor.Cond(t, 5*time.Second, "the follower's stream from m2 only", func() bool {
		return m1.streams.Load() == 0 && m2.streams.Load() == 1
	})
}
