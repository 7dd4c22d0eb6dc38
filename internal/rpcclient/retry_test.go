package rpcclient

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// flaky answers the first failures calls of every method with fail, then
// succeeds, and records the request id of every write it is sent.
type flaky struct {
	havenv1.UnimplementedClusterServiceServer
	failures int
	fail     codes.Code

	mu    sync.Mutex
	calls map[string]int
	ids   []string
}

func (f *flaky) answer(method, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	if method != "GetStatus" && method != "RankNodes" {
		f.ids = append(f.ids, id)
	}
	if f.calls[method] <= f.failures {
		return status.Errorf(f.fail, "no leader: the cluster is electing one; retry with request_id %q", id)
	}
	return nil
}

func (f *flaky) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *flaky) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ids...)
}

func (f *flaky) CreateGroup(_ context.Context, req *havenv1.CreateGroupRequest) (*havenv1.CreateGroupResponse, error) {
	if err := f.answer("CreateGroup", req.GetRequestId()); err != nil {
		return nil, err
	}
	return &havenv1.CreateGroupResponse{Group: &havenv1.Group{Spec: req.GetSpec()}}, nil
}

func (f *flaky) DrainNode(_ context.Context, req *havenv1.DrainNodeRequest) (*havenv1.DrainNodeResponse, error) {
	if err := f.answer("DrainNode", req.GetRequestId()); err != nil {
		return nil, err
	}
	return &havenv1.DrainNodeResponse{}, nil
}

func (f *flaky) GetStatus(context.Context, *havenv1.GetStatusRequest) (*havenv1.GetStatusResponse, error) {
	if err := f.answer("GetStatus", ""); err != nil {
		return nil, err
	}
	return &havenv1.GetStatusResponse{Leader: "n1"}, nil
}

func (f *flaky) RankNodes(context.Context, *havenv1.RankNodesRequest) (*havenv1.RankNodesResponse, error) {
	if err := f.answer("RankNodes", ""); err != nil {
		return nil, err
	}
	return &havenv1.RankNodesResponse{}, nil
}

var fast = backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 20 * time.Millisecond}

// serve starts f on a loopback port and returns a client that retries.
func serve(t *testing.T, f *flaky) havenv1.ClusterServiceClient {
	t.Helper()
	f.calls = map[string]int{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	havenv1.RegisterClusterServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return client(t, lis.Addr().String())
}

func client(t *testing.T, addr string) havenv1.ClusterServiceClient {
	t.Helper()
	conn, err := Dial(addr, grpc.WithChainUnaryInterceptor(RetryInterceptor(fast)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return havenv1.NewClusterServiceClient(conn)
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestRetryWriteKeepsOneRequestID(t *testing.T) {
	f := &flaky{failures: 3, fail: codes.Unavailable}
	c := serve(t, f)
	req := &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}}
	resp, err := c.CreateGroup(timeout(t, 5*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetGroup().GetSpec().GetName() != "web" {
		t.Errorf("reply = %v", resp)
	}
	ids := f.seen()
	if len(ids) != 4 {
		t.Fatalf("server saw %d attempts, want 4: %q", len(ids), ids)
	}
	if _, err := uuid.Parse(ids[0]); err != nil {
		t.Errorf("request id %q is not a UUID: %v", ids[0], err)
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Errorf("request ids differ between attempts: %q", ids)
			break
		}
	}
	if req.GetRequestId() != "" {
		t.Errorf("the caller's request was changed: request_id %q", req.GetRequestId())
	}

	// A second call is another write: it gets an id of its own.
	if _, err := c.CreateGroup(timeout(t, 5*time.Second), req); err != nil {
		t.Fatal(err)
	}
	if ids := f.seen(); ids[len(ids)-1] == ids[0] {
		t.Errorf("two calls shared request id %q", ids[0])
	}
}

func TestRetryKeepsGivenRequestID(t *testing.T) {
	f := &flaky{failures: 2, fail: codes.Unavailable}
	c := serve(t, f)
	if _, err := c.DrainNode(timeout(t, 5*time.Second), &havenv1.DrainNodeRequest{Node: "n1", RequestId: "op-7"}); err != nil {
		t.Fatal(err)
	}
	if ids := f.seen(); len(ids) != 3 || ids[0] != "op-7" || ids[1] != "op-7" || ids[2] != "op-7" {
		t.Errorf("server saw %q, want op-7 three times", ids)
	}
}

func TestRetryOnlyUnavailable(t *testing.T) {
	for _, code := range []codes.Code{codes.InvalidArgument, codes.FailedPrecondition, codes.ResourceExhausted, codes.Internal, codes.DeadlineExceeded} {
		f := &flaky{failures: 1, fail: code}
		c := serve(t, f)
		_, err := c.CreateGroup(timeout(t, 5*time.Second), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}})
		if status.Code(err) != code {
			t.Errorf("%s: err = %v, want the server's %s", code, err, code)
		}
		if n := f.count("CreateGroup"); n != 1 {
			t.Errorf("%s: %d attempts, want 1", code, n)
		}
	}
}

func TestRetryStopsAtDeadline(t *testing.T) {
	f := &flaky{failures: 1 << 30, fail: codes.Unavailable}
	c := serve(t, f)
	const limit = 300 * time.Millisecond
	start := time.Now()
	_, err := c.CreateGroup(timeout(t, limit), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}})
	took := time.Since(start)
	// The last answer, not DeadlineExceeded: it says why.
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "no leader") {
		t.Errorf("err = %v, want the server's Unavailable", err)
	}
	if took > limit+200*time.Millisecond {
		t.Errorf("returned after %s, the deadline was %s", took, limit)
	}
	n := f.count("CreateGroup")
	if n < 5 {
		t.Errorf("%d attempts in %s with a backoff of at most %s", n, limit, fast.MaxDelay)
	}
	time.Sleep(3 * fast.MaxDelay)
	if later := f.count("CreateGroup"); later != n {
		t.Errorf("%d attempts after the call returned", later-n)
	}
}

func TestRetryReadsNotOtherCalls(t *testing.T) {
	f := &flaky{failures: 2, fail: codes.Unavailable}
	c := serve(t, f)
	st, err := c.GetStatus(timeout(t, 5*time.Second), &havenv1.GetStatusRequest{})
	if err != nil || st.GetLeader() != "n1" {
		t.Fatalf("GetStatus = %v, %v", st, err)
	}
	if n := f.count("GetStatus"); n != 3 {
		t.Errorf("GetStatus: %d attempts, want 3", n)
	}
	// RankNodes has no request id and is not named as a read.
	if _, err := c.RankNodes(timeout(t, 5*time.Second), &havenv1.RankNodesRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("RankNodes: err = %v, want Unavailable", err)
	}
	if n := f.count("RankNodes"); n != 1 {
		t.Errorf("RankNodes: %d attempts, want 1", n)
	}
}

func TestRetryNeedsDeadline(t *testing.T) {
	f := &flaky{failures: 1, fail: codes.Unavailable}
	c := serve(t, f)
	if _, err := c.GetStatus(context.Background(), &havenv1.GetStatusRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("err = %v, want Unavailable", err)
	}
	if n := f.count("GetStatus"); n != 1 {
		t.Errorf("%d attempts without a deadline, want 1", n)
	}
}

func TestRetryCanceled(t *testing.T) {
	f := &flaky{failures: 1 << 30, fail: codes.Unavailable}
	c := serve(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.GetStatus(ctx, &havenv1.GetStatusRequest{})
	if status.Code(err) != codes.Canceled {
		t.Errorf("err = %v, want Canceled", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("returned %s after the call began, canceled after 100ms", took)
	}
}

// TestRetryNoAgent: an address where nothing listens fails at once, as
// without the interceptor, instead of retrying until the deadline.
func TestRetryNoAgent(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	c := client(t, addr)
	start := time.Now()
	_, err = c.CreateGroup(timeout(t, 5*time.Second), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "web"}})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("err = %v, want Unavailable", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %s to report a closed port", took)
	}
}

func TestDelay(t *testing.T) {
	b := backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: time.Second}
	for _, tt := range []struct {
		attempt int
		want    time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {4, time.Second}, {50, time.Second}} {
		for range 20 {
			got := delay(b, tt.attempt)
			lo, hi := time.Duration(float64(tt.want)*0.8), time.Duration(float64(tt.want)*1.2)
			if got < lo || got > hi {
				t.Errorf("delay(%d) = %s, want %s ±20%%", tt.attempt, got, tt.want)
				break
			}
		}
	}
}
