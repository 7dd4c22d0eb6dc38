package leader

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A move's channels and postcopy reach the operation, where a new leader
// finds them; postcopy is refused with a reason unless the move is live
// and both nodes' drivers can post-copy, and takes one channel.
func TestMoveOptionsPostcopyAndChannels(t *testing.T) {
	tl := newTestLeader(t, nil)
	tl.raft.Create(fsmtest.VMGroup("web"))
	tl.raft.Assign("web", "n2")
	tl.raft.Report("web", havenv1.GroupState_GROUP_STATE_ONLINE)
	nodes := func(live, quick bool, postcopy map[string]bool) {
		for _, n := range tl.state.Nodes() {
			n = proto.Clone(n).(*havenv1.Node)
			n.LiveMigration, n.QuickMigration, n.PostcopyMigration = live, quick, postcopy[n.GetName()]
			tl.raft.AddNode(n)
		}
	}
	// No mover: a move not refused would be driven, and panic for want of one.
	tl.term.driving = newMoves(context.Background())
	t.Cleanup(tl.term.driving.stop)
	live := havenv1.MoveKind_MOVE_KIND_LIVE
	for _, tc := range []struct {
		name     string
		live     bool
		postcopy map[string]bool
		req      MoveRequest
		kind     error
		msg      string
	}{
		{"postcopy on a sim target", true, map[string]bool{"n2": true}, MoveRequest{Kind: live, Postcopy: true}, ErrConflict, "cannot post-copy"},
		{"postcopy from a sim source", true, map[string]bool{"n3": true}, MoveRequest{Kind: live, Postcopy: true}, ErrConflict, "cannot post-copy"},
		{"postcopy of a quick move", true, map[string]bool{"n2": true, "n3": true}, MoveRequest{Kind: havenv1.MoveKind_MOVE_KIND_QUICK, Postcopy: true}, ErrInvalid, "live move"},
		{"postcopy when only quick moves are possible", false, map[string]bool{"n2": true, "n3": true}, MoveRequest{Postcopy: true}, ErrInvalid, "live move"},
		{"postcopy with channels", true, map[string]bool{"n2": true, "n3": true}, MoveRequest{Kind: live, Postcopy: true, Channels: 2}, ErrInvalid, "one channel"},
		{"too many channels", true, nil, MoveRequest{Kind: live, Channels: MaxChannels + 1}, ErrInvalid, "channels"},
	} {
		nodes(tc.live, true, tc.postcopy)
		tc.req.Group, tc.req.Target, tc.req.RequestID = "web", "n3", tc.name
		_, err := tl.MoveGroup(tc.req)
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %v saying %q", tc.name, err, tc.kind, tc.msg)
		}
		if g := tl.state.Group("web"); g.GetOperation() != "" || g.GetOwner() != "n2" {
			t.Fatalf("%s: refused, yet the group has move %q, owner %s", tc.name, g.GetOperation(), g.GetOwner())
		}
	}
	nodes(true, true, map[string]bool{"n2": true, "n3": true})
	for _, req := range []MoveRequest{{Kind: live, Postcopy: true}, {Kind: live, Channels: 4}} {
		req.Group, req.Target = "web", "n3"
		op, _, err := tl.planMove(req, "op1")
		if err != nil {
			t.Fatal(err)
		}
		if got := op.GetOptions(); got.GetPostcopy() != req.Postcopy || got.GetChannels() != req.Channels {
			t.Errorf("the operation's options %v, want those of %+v", got, req)
		}
	}
}
