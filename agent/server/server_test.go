package server

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/agent/services/cluster"
	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fakeCluster answers as the node it runs on and records, per call, who
// forwarded it ("" when nobody did).
type fakeCluster struct {
	havenv1.UnimplementedClusterServiceServer
	name string

	mu    sync.Mutex
	calls []call
	// err is every answer when set.
	err error
}

type call struct{ method, forwardedBy string }

// record notes the call and returns the error to answer with.
func (c *fakeCluster) record(ctx context.Context, method string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call{method, strings.Join(md.Get(forwardedKey), ",")})
	return c.err
}

func (c *fakeCluster) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

func (c *fakeCluster) seen() []call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]call(nil), c.calls...)
}

func (c *fakeCluster) CreateGroup(ctx context.Context, req *havenv1.CreateGroupRequest) (*havenv1.CreateGroupResponse, error) {
	if err := c.record(ctx, "CreateGroup"); err != nil {
		return nil, err
	}
	return &havenv1.CreateGroupResponse{Group: &havenv1.Group{Spec: req.GetSpec(), Owner: c.name, StateReason: req.GetRequestId()}}, nil
}

func (c *fakeCluster) GetGroup(ctx context.Context, req *havenv1.GetGroupRequest) (*havenv1.GetGroupResponse, error) {
	if err := c.record(ctx, "GetGroup"); err != nil {
		return nil, err
	}
	return &havenv1.GetGroupResponse{
		Group: &havenv1.Group{Spec: &havenv1.GroupSpec{Name: req.GetName()}},
		Meta:  &havenv1.ReadMeta{AnsweredBy: c.name, Consistent: req.GetConsistent()},
	}, nil
}

// agent is one node's server with the fake service, and a client of it.
type agent struct {
	svc    *fakeCluster
	addr   string
	client havenv1.ClusterServiceClient
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startAgent serves on a fresh loopback port until the test ends.
func startAgent(t *testing.T, fwd *Forwarder) *agent {
	t.Helper()
	name := fwd.Self
	pool := rpcclient.NewPool()
	fwd.Pool = pool
	srv, err := New(Config{Addr: "127.0.0.1:0", Forward: fwd, Logger: testLogger(t).With("node", name)})
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{svc: &fakeCluster{name: name}, addr: srv.Addr()}
	havenv1.RegisterClusterServiceServer(srv, a.svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve()
	}()
	t.Cleanup(func() {
		srv.Stop(5 * time.Second)
		<-done
	})
	t.Cleanup(pool.Close)
	conn, err := rpcclient.Dial(a.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	a.client = havenv1.NewClusterServiceClient(conn)
	return a
}

// pair starts a leader, n1, and a follower, n2, whose Locate answers
// with locate when given, else with the leader.
func pair(t *testing.T, locate func(leaderAddr string) (string, string, error)) (leader, follower *agent) {
	t.Helper()
	leader = startAgent(t, &Forwarder{
		Self: "n1", LeaderOnly: cluster.LeaderOnly, IsLeader: func() bool { return true },
		Locate: func() (string, string, error) { return "", "", errors.New("the leader does not ask") },
	})
	if locate == nil {
		locate = func(addr string) (string, string, error) { return "n1", addr, nil }
	}
	follower = startAgent(t, &Forwarder{
		Self: "n2", LeaderOnly: cluster.LeaderOnly, IsLeader: func() bool { return false },
		Locate: func() (string, string, error) { return locate(leader.addr) },
	})
	return leader, follower
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCalls(t *testing.T, who string, got []call, want ...call) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s handled %v, want %v", who, got, want)
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s handled %v, want %v", who, got, want)
			return
		}
	}
}

// A write sent to a follower is answered by the leader, which sees that
// it was forwarded and by whom, with the request as the client sent it.
func TestForwardLeaderOnly(t *testing.T) {
	leader, follower := pair(t, nil)
	resp, err := follower.client.CreateGroup(callCtx(t), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}, RequestId: "r-1"})
	if err != nil {
		t.Fatal(err)
	}
	g := resp.GetGroup()
	if g.GetOwner() != "n1" || g.GetSpec().GetName() != "web" || g.GetStateReason() != "r-1" {
		t.Errorf("answer %v: want n1's, for web with request id r-1", g)
	}
	wantCalls(t, "leader", leader.svc.seen(), call{"CreateGroup", "n2"})
	wantCalls(t, "follower", follower.svc.seen())
}

// A write forwarded without a request id gets one on the agent that first
// received it, so the leader sees an id the forwarder chose.
func TestForwardAssignsRequestID(t *testing.T) {
	_, follower := pair(t, nil)
	resp, err := follower.client.CreateGroup(callCtx(t), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if id := resp.GetGroup().GetStateReason(); len(id) != 36 {
		t.Errorf("the leader saw request id %q, want a uuid assigned by the follower", id)
	}
}

// The leader's refusal reaches the client as the leader said it: the
// code decides whether the client retries.
func TestForwardKeepsLeaderStatus(t *testing.T) {
	leader, follower := pair(t, nil)
	leader.svc.fail(status.Error(codes.ResourceExhausted, `no node can run group "web"`))
	_, err := follower.client.CreateGroup(callCtx(t), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || st.Message() != `no node can run group "web"` {
		t.Errorf("forwarded refusal = %v %q, want the leader's ResourceExhausted", st.Code(), st.Message())
	}
}

func TestForwardReads(t *testing.T) {
	leader, follower := pair(t, nil)
	resp, err := follower.client.GetGroup(callCtx(t), &havenv1.GetGroupRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMeta().GetAnsweredBy() != "n2" {
		t.Errorf("default read answered by %q, want the follower asked", resp.GetMeta().GetAnsweredBy())
	}
	wantCalls(t, "leader", leader.svc.seen())

	resp, err = follower.client.GetGroup(callCtx(t), &havenv1.GetGroupRequest{Name: "web", Consistent: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMeta().GetAnsweredBy() != "n1" || !resp.GetMeta().GetConsistent() {
		t.Errorf("consistent read answered by %q (consistent %v), want the leader", resp.GetMeta().GetAnsweredBy(), resp.GetMeta().GetConsistent())
	}
	wantCalls(t, "leader", leader.svc.seen(), call{"GetGroup", "n2"})
	wantCalls(t, "follower", follower.svc.seen(), call{"GetGroup", ""})
}

// A call another node forwarded here, while this node lost leadership,
// is answered here (with "not the leader" from a real handler): sending
// it on could bounce it between two nodes that each think the other
// leads.
func TestForwardOnce(t *testing.T) {
	leader, follower := pair(t, nil)
	ctx := metadata.AppendToOutgoingContext(callCtx(t), forwardedKey, "n3")
	resp, err := follower.client.CreateGroup(ctx, &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetGroup().GetOwner() != "n2" {
		t.Errorf("answered by %q, want the follower it was forwarded to", resp.GetGroup().GetOwner())
	}
	wantCalls(t, "leader", leader.svc.seen())
	wantCalls(t, "follower", follower.svc.seen(), call{"CreateGroup", "n3"})
}

// The leader answers leader-only calls itself, and a follower that knows
// no leader (or believes it is the leader) lets its handler say so.
func TestForwardNowhere(t *testing.T) {
	leader, _ := pair(t, nil)
	if _, err := leader.client.CreateGroup(callCtx(t), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "leader", leader.svc.seen(), call{"CreateGroup", ""})

	for name, locate := range map[string]func(string) (string, string, error){
		"no leader": func(string) (string, string, error) { return "", "", errors.New("electing") },
		"itself":    func(string) (string, string, error) { return "n2", "127.0.0.1:1", nil },
		"no known addr": func(string) (string, string, error) {
			return "n1", "", errors.New("leader n1 has no known gRPC address")
		},
	} {
		leader, follower := pair(t, locate)
		resp, err := follower.client.CreateGroup(callCtx(t), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if resp.GetGroup().GetOwner() != "n2" {
			t.Errorf("%s: answered by %q, want the follower's handler", name, resp.GetGroup().GetOwner())
		}
		wantCalls(t, name+": leader", leader.svc.seen())
	}
}

// A forwarded answer is decoded into the type newReply makes: a wrong one
// fails every forwarded call of that method, or garbles it.
func TestNewReply(t *testing.T) {
	want := map[string]proto.Message{
		"GetStatus":   &havenv1.GetStatusResponse{},
		"ListNodes":   &havenv1.ListNodesResponse{},
		"CreateGroup": &havenv1.CreateGroupResponse{},
		"GetGroup":    &havenv1.GetGroupResponse{},
		"ListGroups":  &havenv1.ListGroupsResponse{},
		"DeleteGroup": &havenv1.DeleteGroupResponse{},
		"StartGroup":  &havenv1.StartGroupResponse{},
		"StopGroup":   &havenv1.StopGroupResponse{},
		"GetReserve":  &havenv1.GetReserveResponse{},
		"RankNodes":   &havenv1.RankNodesResponse{},
		"Balance":     &havenv1.BalanceResponse{},
		"DrainNode":   &havenv1.DrainNodeResponse{},
		"ResumeNode":  &havenv1.ResumeNodeResponse{},

		"MoveGroup":       &havenv1.MoveGroupResponse{},
		"GetOperation":    &havenv1.GetOperationResponse{},
		"ListOperations":  &havenv1.ListOperationsResponse{},
		"CancelOperation": &havenv1.CancelOperationResponse{},

		"AttachDisk": &havenv1.AttachDiskResponse{},
		"DetachDisk": &havenv1.DetachDiskResponse{},
	}
	desc := havenv1.ClusterService_ServiceDesc
	if len(desc.Methods) != len(want) {
		t.Errorf("ClusterService has %d methods, this test knows %d: add the new ones", len(desc.Methods), len(want))
	}
	for _, m := range desc.Methods {
		full := "/" + desc.ServiceName + "/" + m.MethodName
		got, err := newReply(full)
		if err != nil {
			t.Errorf("newReply(%s): %v", full, err)
			continue
		}
		if w, ok := want[m.MethodName]; !ok || reflect.TypeOf(got) != reflect.TypeOf(w) {
			t.Errorf("newReply(%s) = %T, want %T", full, got, w)
		}
	}
	for _, bad := range []string{"", "/haven.v1.ClusterService", "/haven.v1.NoService/GetStatus", "/haven.v1.GetStatusRequest/GetStatus", "/haven.v1.ClusterService/TeleportGroup"} {
		if got, err := newReply(bad); err == nil {
			t.Errorf("newReply(%q) = %T, want an error", bad, got)
		}
	}
}
