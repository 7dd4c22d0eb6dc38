package consensus

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/internal/logging"
	"github.com/haven-ha/haven/internal/logging/logtest"
)

// A heartbeat reaches Raft's main goroutine (the transport's Consumer),
// never a heartbeat handler running beside it (see serialTransport).
func TestHeartbeatGoesToTheMainGoroutine(t *testing.T) {
	hl := logging.Hclog(logtest.New(t))
	recv, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, time.Second, hl)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	send, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, time.Second, hl)
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()
	var trans raft.Transport = serialTransport{recv}
	handled := make(chan struct{}, 1)
	trans.SetHeartbeatHandler(func(rpc raft.RPC) {
		handled <- struct{}{}
		rpc.Respond(&raft.AppendEntriesResponse{}, nil)
	})

	// What a leader's heartbeat carries: a term and its address, no
	// entries, no previous entry, no commit index.
	hb := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("leader"), Addr: []byte(send.LocalAddr())}, Term: 3}
	done := make(chan error, 1)
	go func() {
		var resp raft.AppendEntriesResponse
		done <- send.AppendEntries("follower", recv.LocalAddr(), hb, &resp)
	}()
	select {
	case rpc := <-trans.Consumer():
		if req, ok := rpc.Command.(*raft.AppendEntriesRequest); !ok || req.Term != 3 {
			t.Fatalf("consumer got %#v, want the heartbeat", rpc.Command)
		}
		rpc.Respond(&raft.AppendEntriesResponse{Term: 3, Success: true}, nil)
	case <-handled:
		t.Fatal("the heartbeat went to the fast-path handler, beside the main goroutine")
	case <-time.After(10 * time.Second):
		t.Fatal("the heartbeat reached neither the consumer nor the handler")
	}
	if err := <-done; err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
}
