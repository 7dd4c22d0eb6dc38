package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/services/cluster"
	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

type readsRaft struct{}

func (readsRaft) Status() consensus.Status { return consensus.Status{} }
func (readsRaft) ConsistentRead() error    { return nil }
func (readsRaft) ReadMeta(consistent bool) *havenv1.ReadMeta {
	return &havenv1.ReadMeta{Consistent: consistent}
}

// serveState serves the real ClusterService over the FSM of l on
// loopback and records every list request it is sent.
func serveState(t *testing.T, l *fsmtest.Log) (string, func() []proto.Message) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reqs []proto.Message
	s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		mu.Lock()
		reqs = append(reqs, proto.Clone(req.(proto.Message)))
		mu.Unlock()
		return h(ctx, req)
	}))
	havenv1.RegisterClusterServiceServer(s, cluster.New(cluster.Config{Name: "n1", State: l.FSM, Raft: readsRaft{}}))
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String(), func() []proto.Message {
		mu.Lock()
		defer mu.Unlock()
		out := reqs
		reqs = nil
		return out
	}
}

func tableNames(out string) []string {
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		names = append(names, strings.Fields(line)[0])
	}
	return names
}

func TestGroupListFollowsPages(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 64000, 256<<30, nil))
	l.AddNode(fsmtest.Node("n2", "b", 64000, 256<<30, nil))
	for i := range 7 {
		spec := fsmtest.VMGroup(fmt.Sprintf("g%d", i))
		spec.Labels = map[string]string{"app": []string{"db", "web"}[i%2]}
		l.Create(spec)
		if i < 5 {
			l.Assign(spec.GetName(), []string{"n1", "n2"}[i%2])
			l.Report(spec.GetName(), havenv1.GroupState_GROUP_STATE_ONLINE)
		}
	}
	addr, sent := serveState(t, l)

	out, err := runHaven(t, "--addr", addr, "group", "list", "--page-size", "2")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := strings.Join(tableNames(out), " "); got != "g0 g1 g2 g3 g4 g5 g6" {
		t.Errorf("listed %q, want g0 to g6:\n%s", got, out)
	}
	if reqs := sent(); len(reqs) != 4 {
		t.Errorf("%d calls, want 4 pages of 2: %v", len(reqs), reqs)
	}

	// Online on n1 with app=db: g0, g2 and g4; --site a is n1's site.
	out, err = runHaven(t, "--addr", addr, "group", "list", "--page-size", "1", "--state", "online", "--node", "n1", "--site", "a", "--label", "app=db")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := strings.Join(tableNames(out), " "); got != "g0 g2 g4" {
		t.Errorf("listed %q, want g0 g2 g4:\n%s", got, out)
	}
	reqs := sent()
	want := &havenv1.ListGroupsRequest{PageSize: 1, State: havenv1.GroupState_GROUP_STATE_ONLINE, Node: "n1", Site: "a", Labels: map[string]string{"app": "db"}}
	if len(reqs) != 3 {
		t.Fatalf("%d calls, want 3 pages of 1", len(reqs))
	}
	for i, r := range reqs {
		r.(*havenv1.ListGroupsRequest).PageToken = ""
		if !proto.Equal(r, want) {
			t.Errorf("call %d: %v, want the filters %v on every page", i, r, want)
		}
	}

	for _, args := range [][]string{{"--state", "running"}, {"--label", "app"}, {"--page-size", "-1"}} {
		if _, err := runHaven(t, append([]string{"--addr", addr, "group", "list"}, args...)...); err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: err = %v, want a usage error about %s", args, err, args[0])
		}
	}
}

func TestMembersFollowsPages(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 64000, 256<<30, map[string]string{"rack": "r1"}))
	l.AddNode(fsmtest.Node("n2", "b", 64000, 256<<30, map[string]string{"rack": "r1"}))
	l.AddNode(fsmtest.Node("n3", "a", 64000, 256<<30, map[string]string{"rack": "r2"}))
	l.AddNode(fsmtest.Node("n4", "a", 64000, 256<<30, map[string]string{"rack": "r1"}))
	addr, sent := serveState(t, l)
	out, err := runHaven(t, "--addr", addr, "members", "--page-size", "1")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The table shows nodes by site.
	if got := strings.Join(tableNames(out), " "); got != "n1 n3 n4 n2" {
		t.Errorf("listed %q:\n%s", got, out)
	}
	if reqs := sent(); len(reqs) != 4 {
		t.Errorf("%d calls, want 4 pages of 1", len(reqs))
	}
	out, err = runHaven(t, "--addr", addr, "members", "--page-size", "1", "--state", "alive", "--site", "a", "--label", "rack=r1")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := strings.Join(tableNames(out), " "); got != "n1 n4" {
		t.Errorf("listed %q, want n1 n4:\n%s", got, out)
	}
}
