package node

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// maxMessage is the agent's server's limit on one message
// (agent/server.MaxMessageBytes), which the sink's server must share for
// the probe's chunks to be checked against it.
const maxMessage = 1 << 20

// probePair is a probe's source, n1 (or whoever from names), and its
// target n2, served on loopback with the agent's message limit; n3 is in
// the source's state with no address.
type probePair struct {
	src, dst *Service
}

func newProbePair(t *testing.T, from string) probePair {
	t.Helper()
	alive := havenv1.NodeStatus_NODE_STATUS_ALIVE
	quiet := slog.New(slog.DiscardHandler)
	dst := New(Config{
		Name: "n2", State: &fakeState{}, Logger: quiet,
		Members: &fakeMembers{m: []heartbeat.Member{{Name: "n1", State: heartbeat.StateAlive}, {Name: "n2", State: heartbeat.StateAlive}}},
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessage))
	havenv1.RegisterNodeServiceServer(srv, dst)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	src := New(Config{
		Name: from, Logger: quiet, Members: &fakeMembers{},
		State: &fakeState{nodes: []*havenv1.Node{
			{Name: "n2", Status: alive, GrpcAddr: lis.Addr().String()},
			{Name: "n3", Status: alive},
		}},
		// As the agent's dialMove: a connection of its own, big windows.
		DialNode: func(addr string) (havenv1.NodeServiceClient, func(), error) {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithInitialWindowSize(16<<20), grpc.WithInitialConnWindowSize(16<<20))
			if err != nil {
				return nil, nil, err
			}
			return havenv1.NewNodeServiceClient(conn), func() { _ = conn.Close() }, nil
		},
	})
	return probePair{src: src, dst: dst}
}

// A probe delivers every byte, in whole writes and a ragged end, each
// chunk within the server's message limit, and says how long it took.
func TestProbeLink(t *testing.T) {
	p := newProbePair(t, "n1")
	for _, n := range []int64{1, probeWrite, 3*probeWrite + 12345} {
		resp, err := p.src.ProbeLink(context.Background(), &havenv1.ProbeLinkRequest{Target: "n2", Bytes: n})
		if err != nil {
			t.Fatalf("probe of %d bytes: %v", n, err)
		}
		if resp.GetBytes() != n || resp.GetDuration().AsDuration() <= 0 {
			t.Errorf("probe of %d bytes: %v", n, resp)
		}
	}
	if p.src.probeOut.Load() || p.dst.probeIn.Load() {
		t.Error("a finished probe still holds its slots")
	}
}

func TestProbeLinkRefused(t *testing.T) {
	p := newProbePair(t, "n1")
	for _, c := range []struct {
		name string
		req  *havenv1.ProbeLinkRequest
		code codes.Code
		msg  string
	}{
		{"no bytes", &havenv1.ProbeLinkRequest{Target: "n2"}, codes.InvalidArgument, "bytes: 0 is outside 1..4294967296"},
		{"too many bytes", &havenv1.ProbeLinkRequest{Target: "n2", Bytes: MaxProbeBytes + 1}, codes.InvalidArgument, "bytes: 4294967297"},
		{"itself", &havenv1.ProbeLinkRequest{Target: "n1", Bytes: 1}, codes.InvalidArgument, "target: n1 is this node"},
		{"an unknown node", &havenv1.ProbeLinkRequest{Target: "n9", Bytes: 1}, codes.NotFound, `node "n9" not found`},
		{"a node without an address", &havenv1.ProbeLinkRequest{Target: "n3", Bytes: 1}, codes.FailedPrecondition, "node n3 has no known address"},
	} {
		_, err := p.src.ProbeLink(context.Background(), c.req)
		wantStatus(t, err, c.code, c.msg)
	}

	p.src.probeOut.Store(true)
	_, err := p.src.ProbeLink(context.Background(), &havenv1.ProbeLinkRequest{Target: "n2", Bytes: 1})
	wantStatus(t, err, codes.ResourceExhausted, "a link probe from this agent is already running")
	p.src.probeOut.Store(false)

	p.dst.probeIn.Store(true)
	_, err = p.src.ProbeLink(context.Background(), &havenv1.ProbeLinkRequest{Target: "n2", Bytes: 1})
	wantStatus(t, err, codes.ResourceExhausted, "link probe to n2", "a link probe into this agent is already running")
	p.dst.probeIn.Store(false)

	none := New(Config{Name: "n1", State: &fakeState{}, Logger: slog.New(slog.DiscardHandler)})
	_, err = none.ProbeLink(context.Background(), &havenv1.ProbeLinkRequest{Target: "n2", Bytes: 1})
	wantStatus(t, err, codes.Unimplemented, "takes no part in moves")
}

// The sink takes probes from members only.
func TestProbeSinkStranger(t *testing.T) {
	p := newProbePair(t, "n9")
	_, err := p.src.ProbeLink(context.Background(), &havenv1.ProbeLinkRequest{Target: "n2", Bytes: 1})
	wantStatus(t, err, codes.PermissionDenied, `link probe: node "n9" is not a member of this cluster`)
}

// The caller's deadline ends a probe early, with what it was doing.
func TestProbeLinkDeadline(t *testing.T) {
	p := newProbePair(t, "n1")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := p.src.ProbeLink(ctx, &havenv1.ProbeLinkRequest{Target: "n2", Bytes: MaxProbeBytes})
	wantStatus(t, err, codes.DeadlineExceeded, "link probe to n2")
	waitfor.Cond(t, 10*time.Second, "the slots of a probe cut short released", func() bool {
		return !p.dst.probeIn.Load() && !p.src.probeOut.Load()
	})
}
