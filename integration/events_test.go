package integration

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestWatchEvents: every agent streams the commands its state machine
// applied, in log order, and follows new ones: a follower shows the start
// of a group it did not decide, then the failover of its owner.
func TestWatchEvents(t *testing.T) {
	c := newCluster(t)
	leader, names, before := c.runGroups(3, "ev", 2)
	watcher := c.follower(leader)
	// Kept events, no follow: the creation and assignment of each group.
	stream, err := watcher.api().WatchEvents(ctx(t), &havenv1.WatchEventsRequest{Kinds: []string{"create-group", "assign-group"}})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	seen := map[string][]string{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading the kept events: %v", err)
		}
		e := resp.GetEvent()
		if e.GetIndex() <= last {
			t.Fatalf("event %v after index %d: not in log order", e, last)
		}
		last = e.GetIndex()
		seen[e.GetGroup()] = append(seen[e.GetGroup()], e.GetKind())
	}
	for _, name := range names {
		if k := seen[name]; len(k) != 2 || k[0] != "create-group" || k[1] != "assign-group" {
			t.Errorf("%s: events %v, want create-group then assign-group", name, k)
		}
	}

	// Follow from there: the failover of the victim's groups arrives.
	wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	follow, err := watcher.api().WatchEvents(wctx, &havenv1.WatchEventsRequest{FromIndex: last, Follow: true, Kinds: []string{"failover", "member-failed"}})
	if err != nil {
		t.Fatal(err)
	}
	var victim *node
	for _, n := range c.nodes {
		if n != watcher && n != leader {
			victim = n
		}
	}
	// The victim's groups, each to be seen failing over.
	mine := map[string]bool{}
	for _, name := range names {
		if before[name].GetOwner() == victim.name {
			mine[name] = true
		}
	}
	victim.kill()
	memberFailed := false
	for len(mine) > 0 || !memberFailed {
		resp, err := follow.Recv()
		if err != nil {
			t.Fatalf("following: %v (still to fail over %v, member failed seen %v)", err, mine, memberFailed)
		}
		switch e := resp.GetEvent(); e.GetKind() {
		case "failover":
			if mine[e.GetGroup()] && e.GetNode() != victim.name && e.GetRefused() == "" && e.GetEpoch() == before[e.GetGroup()].GetEpoch()+1 {
				delete(mine, e.GetGroup())
			}
		case "member-failed":
			memberFailed = memberFailed || e.GetNode() == victim.name
		}
	}
	cancel()
}
