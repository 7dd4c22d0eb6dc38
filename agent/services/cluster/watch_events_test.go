package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/events"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// watchStream is the server side of a WatchEvents call: it hands what the
// handler sends to the test.
type watchStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent chan *havenv1.Event
}

func (w *watchStream) Context() context.Context { return w.ctx }

func (w *watchStream) Send(r *havenv1.WatchEventsResponse) error {
	select {
	case w.sent <- r.GetEvent():
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

func newWatchStream(t *testing.T, buf int) (*watchStream, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &watchStream{ctx: ctx, sent: make(chan *havenv1.Event, buf)}, cancel
}

func publishAssigns(b *events.Broker, from, to uint64) {
	for i := from; i <= to; i++ {
		group := "web"
		if i%2 == 0 {
			group = "db"
		}
		b.Publish(events.Event{Kind: "assign-group", Index: i, Group: group, Node: "n3", Time: time.Unix(int64(i), 0)})
	}
}

// Without follow the call returns the kept events after from_index that
// the filters take, in log order.
func TestWatchEventsReplay(t *testing.T) {
	f := newFixture()
	publishAssigns(f.events, 1, 10)
	f.events.Publish(events.Event{Kind: events.MemberFailed, Node: "n2"})
	w, _ := newWatchStream(t, 100)
	if err := f.svc.WatchEvents(&havenv1.WatchEventsRequest{FromIndex: 4, Group: "web"}, w); err != nil {
		t.Fatal(err)
	}
	close(w.sent)
	var got []uint64
	for e := range w.sent {
		if e.GetGroup() != "web" || e.GetKind() != "assign-group" || e.GetNode() != "n3" || e.GetTime().AsTime().Unix() != int64(e.GetIndex()) {
			t.Errorf("event %v", e)
		}
		got = append(got, e.GetIndex())
	}
	if len(got) != 3 || got[0] != 5 || got[1] != 7 || got[2] != 9 {
		t.Fatalf("replayed %v, want web's events after 4: 5 7 9", got)
	}
}

// With follow, new events follow the replay; a watcher that falls behind
// is ended with Aborted naming the index to watch again from.
func TestWatchEventsFollowAndFallBehind(t *testing.T) {
	f := newFixture()
	publishAssigns(f.events, 1, 2)
	w, cancel := newWatchStream(t, 0)
	done := make(chan error, 1)
	go func() {
		done <- f.svc.WatchEvents(&havenv1.WatchEventsRequest{Follow: true, Kinds: []string{"assign-group", "member-failed"}}, w)
	}()
	for _, want := range []uint64{1, 2} {
		if e := <-w.sent; e.GetIndex() != want {
			t.Fatalf("replay: %v, want index %d", e, want)
		}
	}
	f.events.Publish(events.Event{Kind: "stop-group", Index: 3, Group: "web"}) // filtered out
	f.events.Publish(events.Event{Kind: events.MemberFailed, Node: "n2"})
	if e := <-w.sent; e.GetKind() != "member-failed" || e.GetNode() != "n2" {
		t.Fatalf("followed: %v", e)
	}
	// The test stops reading: the handler blocks in Send while the broker
	// fills the watcher's buffer and drops the rest.
	last := uint64(4 + watchBuffer + 10)
	publishAssigns(f.events, 4, last)
	// The index to watch again from is the last one delivered: 2 from the
	// replay if the broker dropped events before the handler sent any of
	// the new ones.
	got := uint64(2)
	for {
		select {
		case e := <-w.sent:
			got = e.GetIndex()
			continue
		case err := <-done:
			wantStatus(t, err, codes.Aborted, "fell behind", fmt.Sprintf("watch again from index %d", got))
		case <-time.After(5 * time.Second):
			cancel()
			t.Fatal("a watcher that fell behind was not ended")
		}
		break
	}
	if got >= last {
		t.Fatalf("the last event delivered was %d, the last published (%d): nothing fell behind", got, last)
	}
}

// Asking for events no longer kept is OutOfRange; bad filters are refused.
func TestWatchEventsRefusals(t *testing.T) {
	f := newFixture()
	publishAssigns(f.events, 100, 100+events.Keep+1)
	w, _ := newWatchStream(t, 1)
	wantStatus(t, f.svc.WatchEvents(&havenv1.WatchEventsRequest{FromIndex: 50}, w), codes.OutOfRange, "no longer kept")
	wantStatus(t, f.svc.WatchEvents(&havenv1.WatchEventsRequest{Kinds: []string{"Bad Kind"}}, w), codes.InvalidArgument, "kinds[0]")
	wantStatus(t, f.svc.WatchEvents(&havenv1.WatchEventsRequest{Node: "N!"}, w), codes.InvalidArgument, "node:")
	wantStatus(t, f.svc.WatchEvents(&havenv1.WatchEventsRequest{Group: "G!"}, w), codes.InvalidArgument, "group:")
}
