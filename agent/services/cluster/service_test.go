package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent/events"

	"github.com/haven-ha/haven/agent/services/servicetest"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The fakes below stand for the FSM, the leader, Raft and gossip. Each
// returns what the test put in it and records what the handler asked.

type fakeState struct {
	index  uint64
	nodes  []*havenv1.Node
	groups []*havenv1.Group
	ops    []*havenv1.Operation
}

func (s *fakeState) Operation(id string) *havenv1.Operation {
	for _, op := range s.ops {
		if op.GetId() == id {
			return op
		}
	}
	return nil
}

func (s *fakeState) Operations() []*havenv1.Operation { return s.ops }

func (s *fakeState) Index() uint64 { return s.index }

func (s *fakeState) Node(name string) *havenv1.Node {
	for _, n := range s.nodes {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

func (s *fakeState) Nodes() []*havenv1.Node { return s.nodes }

func (s *fakeState) Group(name string) *havenv1.Group {
	for _, g := range s.groups {
		if g.GetSpec().GetName() == name {
			return g
		}
	}
	return nil
}

func (s *fakeState) Groups() []*havenv1.Group { return s.groups }

// GroupsAfter is the FSM's, over groups as the test put them (in name
// order, as the FSM keeps them).
func (s *fakeState) GroupsAfter(after string, fn func(*havenv1.Group) bool) {
	for _, g := range s.groups {
		if g.GetSpec().GetName() > after && !fn(g) {
			return
		}
	}
}

type fakeLeader struct {
	// err is every method's answer when set.
	err error

	group      *havenv1.Group
	node       *havenv1.Node
	reserve    leader.ReserveReport
	kept       leader.ReserveReport
	ranked     []placement.Ranked
	rankSpec   placement.Spec
	balance    leader.BalanceReport
	op         *havenv1.Operation
	move       leader.MoveRequest
	calls      []string
	spec       *havenv1.GroupSpec
	name       string
	onNode     string
	requestID  string
	draining   bool
	k          int
	power, dry bool
	// Disk changes: what was asked, the change answered, and the
	// deadline the leader was given to wait for it.
	disk            *havenv1.Resource
	diskName        string
	change          *havenv1.DiskChange
	waitDeadline    time.Time
	waitHasDeadline bool
}

func (l *fakeLeader) CreateGroup(spec *havenv1.GroupSpec, requestID string) (*havenv1.Group, error) {
	l.calls = append(l.calls, "CreateGroup")
	l.spec, l.requestID = spec, requestID
	return l.group, l.err
}

func (l *fakeLeader) MoveGroup(req leader.MoveRequest) (*havenv1.Operation, error) {
	l.calls = append(l.calls, "MoveGroup")
	l.move, l.requestID = req, req.RequestID
	return l.op, l.err
}

func (l *fakeLeader) CancelOperation(id, requestID string) (*havenv1.Operation, error) {
	l.calls = append(l.calls, "CancelOperation")
	l.name, l.requestID = id, requestID
	return l.op, l.err
}

func (l *fakeLeader) AttachDisk(ctx context.Context, group string, disk *havenv1.Resource, requestID string) (*havenv1.Group, *havenv1.DiskChange, error) {
	l.calls = append(l.calls, "AttachDisk")
	l.name, l.disk, l.requestID = group, disk, requestID
	l.waitDeadline, l.waitHasDeadline = ctx.Deadline()
	return l.group, l.change, l.err
}

func (l *fakeLeader) DetachDisk(ctx context.Context, group, disk, requestID string) (*havenv1.Group, *havenv1.DiskChange, error) {
	l.calls = append(l.calls, "DetachDisk")
	l.name, l.diskName, l.requestID = group, disk, requestID
	l.waitDeadline, l.waitHasDeadline = ctx.Deadline()
	return l.group, l.change, l.err
}

func (l *fakeLeader) DeleteGroup(name, requestID string) error {
	l.calls = append(l.calls, "DeleteGroup")
	l.name, l.requestID = name, requestID
	return l.err
}

func (l *fakeLeader) StartGroup(name, node, requestID string) (*havenv1.Group, error) {
	l.calls = append(l.calls, "StartGroup")
	l.name, l.onNode, l.requestID = name, node, requestID
	return l.group, l.err
}

func (l *fakeLeader) StopGroup(name, requestID string) (*havenv1.Group, error) {
	l.calls = append(l.calls, "StopGroup")
	l.name, l.requestID = name, requestID
	return l.group, l.err
}

func (l *fakeLeader) SetDrain(node string, draining bool, requestID string) (*havenv1.Node, error) {
	l.calls = append(l.calls, "SetDrain")
	l.onNode, l.draining, l.requestID = node, draining, requestID
	return l.node, l.err
}

func (l *fakeLeader) Reserve(k int) (leader.ReserveReport, error) {
	l.calls = append(l.calls, "Reserve")
	l.k = k
	return l.reserve, l.err
}

func (l *fakeLeader) KeptReserve() leader.ReserveReport { return l.kept }

func (l *fakeLeader) Rank(spec *havenv1.GroupSpec) ([]placement.Ranked, placement.Spec, error) {
	l.calls = append(l.calls, "Rank")
	l.spec = spec
	return l.ranked, l.rankSpec, l.err
}

func (l *fakeLeader) Balance(power, dryRun bool) (leader.BalanceReport, error) {
	l.calls = append(l.calls, "Balance")
	l.power, l.dry = power, dryRun
	return l.balance, l.err
}

type fakeRaft struct {
	status consensus.Status
	// readErr is ConsistentRead's answer; reads counts the calls.
	readErr error
	reads   int
	// metaAsked records ReadMeta's argument, call by call.
	metaAsked []bool
}

func (r *fakeRaft) Status() consensus.Status { return r.status }

func (r *fakeRaft) ConsistentRead() error {
	r.reads++
	return r.readErr
}

func (r *fakeRaft) ReadMeta(consistent bool) *havenv1.ReadMeta {
	r.metaAsked = append(r.metaAsked, consistent)
	return &havenv1.ReadMeta{Index: 42, AnsweredBy: "n1", Consistent: consistent, KnownLeader: true, LastContactMillis: 17}
}

type fakeMembers struct{ m []heartbeat.Member }

func (f *fakeMembers) Members() []heartbeat.Member { return f.m }

// fixture is a service on node n1 whose leader is n2.
type fixture struct {
	state   *fakeState
	leader  *fakeLeader
	raft    *fakeRaft
	members *fakeMembers
	events  *events.Broker
	// located is what Locate answers; locateErr makes it fail.
	located   [2]string
	locateErr error
	svc       *Service
}

func newFixture() *fixture {
	f := &fixture{
		state: &fakeState{}, leader: &fakeLeader{}, raft: &fakeRaft{}, members: &fakeMembers{}, events: events.NewBroker(),
		located: [2]string{"n2", "10.0.0.2:7443"},
	}
	f.svc = New(Config{
		Name: "n1", State: f.state, Leader: f.leader, Raft: f.raft, Members: f.members, Events: f.events,
		Locate: func() (string, string, error) {
			if f.locateErr != nil {
				return "", "", f.locateErr
			}
			return f.located[0], f.located[1], nil
		},
	})
	return f
}

// wantStatus is servicetest.WantStatus.
var wantStatus = servicetest.WantStatus

// checkRequestID runs a write with and without a request id: a retry is
// applied once only if the id the caller gave reaches the leader
// unchanged, and a call without one must still carry one.
func checkRequestID(t *testing.T, call func(f *fixture, id string) error) {
	t.Helper()
	f := newFixture()
	if err := call(f, "retry-1"); err != nil {
		t.Fatalf("with request id: %v", err)
	}
	if f.leader.requestID != "retry-1" {
		t.Errorf("leader got request id %q, want the caller's retry-1", f.leader.requestID)
	}
	f = newFixture()
	if err := call(f, ""); err != nil {
		t.Fatalf("without request id: %v", err)
	}
	first := f.leader.requestID
	if err := call(f, ""); err != nil {
		t.Fatalf("without request id: %v", err)
	}
	if first == "" || first == f.leader.requestID {
		t.Errorf("calls without request id reached the leader with %q and %q: want a fresh id each", first, f.leader.requestID)
	}
	f = newFixture()
	err := call(f, strings.Repeat("x", 129))
	wantStatus(t, err, codes.InvalidArgument, "request_id")
	if len(f.leader.calls) != 0 {
		t.Errorf("a request id over 128 bytes reached the leader: %v", f.leader.calls)
	}
}

// checkLeaderErrors makes the leader refuse a call in each way it can and
// checks the code the caller sees.
func checkLeaderErrors(t *testing.T, call func(f *fixture) error) {
	t.Helper()
	cases := []struct {
		err       error
		locateErr error
		code      codes.Code
		msg       string
	}{
		{fmt.Errorf("group %q not found: %w", "web", leader.ErrNotFound), nil, codes.NotFound, `group "web" not found`},
		{fmt.Errorf("group %q is stopping: %w", "web", leader.ErrConflict), nil, codes.FailedPrecondition, `group "web" is stopping`},
		{&placement.NoRoomError{Unplaced: placement.Unplaced{Group: "web", Reason: "memory"}}, nil, codes.ResourceExhausted, `no node can run group "web"`},
		{leader.ErrNotLeader, nil, codes.Unavailable, "not the leader; the leader is n2 at 10.0.0.2:7443"},
		{leader.ErrNotLeader, errors.New("electing"), codes.Unavailable, "no leader"},
	}
	for _, c := range cases {
		f := newFixture()
		f.leader.err, f.locateErr = c.err, c.locateErr
		err := call(f)
		if st := status.Convert(err); st.Code() != c.code || !strings.Contains(st.Message(), c.msg) {
			t.Errorf("leader refused with %v: caller got %v %q, want %v containing %q", c.err, st.Code(), st.Message(), c.code, c.msg)
		}
	}
}

// checkReads runs a read both ways: a default read answers from this
// node's copy without asking the leader; a consistent one asks first and
// is refused when the check fails. ReadMeta says which it was.
func checkReads(t *testing.T, read func(f *fixture, consistent bool) (*havenv1.ReadMeta, error)) {
	t.Helper()
	f := newFixture()
	meta, err := read(f, false)
	if err != nil {
		t.Fatalf("default read: %v", err)
	}
	if f.raft.reads != 0 {
		t.Errorf("a default read called ConsistentRead %d times: it must not wait for the leader", f.raft.reads)
	}
	if meta.GetIndex() != 42 || meta.GetAnsweredBy() != "n1" || meta.GetConsistent() || meta.GetLastContactMillis() != 17 {
		t.Errorf("default read meta = %v, want Raft's ReadMeta(false)", meta)
	}

	f = newFixture()
	meta, err = read(f, true)
	if err != nil {
		t.Fatalf("consistent read: %v", err)
	}
	if f.raft.reads != 1 || !meta.GetConsistent() {
		t.Errorf("consistent read: %d ConsistentRead calls, meta %v: want 1 and ReadMeta(true)", f.raft.reads, meta)
	}

	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{consensus.ErrNotLeader, codes.Unavailable, "not the leader; the leader is n2 at 10.0.0.2:7443"},
		{consensus.ErrReadsNotReady, codes.Unavailable, "not yet applied"},
	} {
		f = newFixture()
		f.raft.readErr = c.err
		_, err = read(f, true)
		wantStatus(t, err, c.code, c.msg)
		if len(f.raft.metaAsked) != 0 {
			t.Errorf("a refused consistent read still read the state")
		}
	}
}

// Every write and every report of what the leader keeps must reach the
// leader; the reads must not, unless asked to be consistent.
func TestLeaderOnly(t *testing.T) {
	reads := map[string]any{
		"GetStatus":  &havenv1.GetStatusRequest{},
		"ListNodes":  &havenv1.ListNodesRequest{},
		"GetGroup":   &havenv1.GetGroupRequest{Name: "web"},
		"ListGroups": &havenv1.ListGroupsRequest{},

		"GetOperation":   &havenv1.GetOperationRequest{Id: "mv-1"},
		"ListOperations": &havenv1.ListOperationsRequest{},
	}
	for _, m := range havenv1.ClusterService_ServiceDesc.Methods {
		full := "/" + havenv1.ClusterService_ServiceDesc.ServiceName + "/" + m.MethodName
		req, read := reads[m.MethodName]
		if got := LeaderOnly(full, req); got == read {
			t.Errorf("LeaderOnly(%s) = %v, want %v", m.MethodName, got, !read)
		}
	}
	for _, req := range []any{
		&havenv1.ListNodesRequest{Consistent: true},
		&havenv1.GetGroupRequest{Name: "web", Consistent: true},
		&havenv1.ListGroupsRequest{Consistent: true},
	} {
		if !LeaderOnly("/haven.v1.ClusterService/Read", req) {
			t.Errorf("a consistent %T is answered locally: only the leader can", req)
		}
	}
}

func TestCheckGroupName(t *testing.T) {
	for name, want := range map[string]string{
		"":      "name: is empty",
		"Web":   `name: "Web" is not a valid group name`,
		"-web":  `name: "-web" is not a valid group name`,
		"web 1": `name: "web 1" is not a valid group name`,
	} {
		wantStatus(t, checkGroupName(name), codes.InvalidArgument, want)
	}
	if err := checkGroupName("web-1"); err != nil {
		t.Errorf("checkGroupName(web-1) = %v", err)
	}
}
