package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/haven-ha/haven/agent/acl"
	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/events"
	"github.com/haven-ha/haven/agent/leader"
	aclsvc "github.com/haven-ha/haven/agent/services/acl"
	"github.com/haven-ha/haven/agent/services/cluster"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/rpcclient"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// logLeader is the leader as the services see it, committing to an
// fsmtest log (a one-node Raft without Raft): an allowed write changes
// the FSM, so a refused one that got through would show. Writes it does
// not model are recorded in calls.
type logLeader struct {
	log   *fsmtest.Log
	mu    sync.Mutex
	calls []string
}

func (l *logLeader) note(m string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, m)
}

func (l *logLeader) seen() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

func (l *logLeader) commit(c *havenv1.Command) (*fsm.Result, error) {
	res, err := l.log.Commit(c)
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

var errNotModelled = errors.New("not modelled by the test's leader")

func (l *logLeader) CreateGroup(spec *havenv1.GroupSpec, id string) (*havenv1.Group, error) {
	l.note("CreateGroup")
	_, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: spec}}})
	return l.log.FSM.Group(spec.GetName()), err
}

func (l *logLeader) DeleteGroup(name, id string) error {
	l.note("DeleteGroup")
	_, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: name}}})
	return err
}

func (l *logLeader) StartGroup(name, node, id string) (*havenv1.Group, error) {
	l.note("StartGroup")
	g := l.log.FSM.Group(name)
	_, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1",
		State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	return l.log.FSM.Group(name), err
}

func (l *logLeader) StopGroup(name, id string) (*havenv1.Group, error) {
	l.note("StopGroup")
	_, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: name, Reason: "stop requested"}}})
	return l.log.FSM.Group(name), err
}

func (l *logLeader) SetDrain(node string, draining bool, id string) (*havenv1.Node, error) {
	l.note("SetDrain")
	_, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: node, Draining: draining}}})
	return l.log.FSM.Node(node), err
}

func (l *logLeader) Reserve(int) (leader.ReserveReport, error) {
	l.note("Reserve")
	return leader.ReserveReport{}, errNotModelled
}
func (l *logLeader) KeptReserve() leader.ReserveReport { return leader.ReserveReport{} }
func (l *logLeader) Rank(*havenv1.GroupSpec) ([]placement.Ranked, placement.Spec, error) {
	l.note("Rank")
	return nil, placement.Spec{}, errNotModelled
}
func (l *logLeader) Balance(bool, bool) (leader.BalanceReport, error) {
	l.note("Balance")
	return leader.BalanceReport{}, errNotModelled
}
func (l *logLeader) MoveGroup(leader.MoveRequest) (*havenv1.Operation, error) {
	l.note("MoveGroup")
	return nil, errNotModelled
}
func (l *logLeader) CancelOperation(string, string) (*havenv1.Operation, error) {
	l.note("CancelOperation")
	return nil, errNotModelled
}
func (l *logLeader) AttachDisk(context.Context, string, *havenv1.Resource, string) (*havenv1.Group, *havenv1.DiskChange, error) {
	l.note("AttachDisk")
	return nil, nil, errNotModelled
}
func (l *logLeader) DetachDisk(context.Context, string, string, string) (*havenv1.Group, *havenv1.DiskChange, error) {
	l.note("DetachDisk")
	return nil, nil, errNotModelled
}

func (l *logLeader) BootstrapACL(id string) (*havenv1.AclToken, string, error) {
	l.note("BootstrapACL")
	tok, secret, err := acl.NewToken(rand.Reader, "bootstrap", acl.Admin)
	if err != nil {
		return nil, "", err
	}
	if _, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_BootstrapAcl{BootstrapAcl: &havenv1.BootstrapAclCommand{Token: tok}}}); err != nil {
		return nil, "", err
	}
	return tok, secret, nil
}

func (l *logLeader) CreateACLToken(name string, role havenv1.AclRole, id string) (*havenv1.AclToken, string, error) {
	l.note("CreateACLToken")
	tok, secret, err := acl.NewToken(rand.Reader, name, role)
	if err != nil {
		return nil, "", err
	}
	if _, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_CreateAclToken{CreateAclToken: &havenv1.CreateAclTokenCommand{Token: tok}}}); err != nil {
		return nil, "", err
	}
	return tok, secret, nil
}

func (l *logLeader) RevokeACLToken(accessor, id string) error {
	l.note("RevokeACLToken")
	_, err := l.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_RevokeAclToken{RevokeAclToken: &havenv1.RevokeAclTokenCommand{AccessorId: accessor}}})
	return err
}

type readyRaft struct{}

func (readyRaft) Status() consensus.Status { return consensus.Status{} }
func (readyRaft) ConsistentRead() error    { return nil }
func (readyRaft) ReadMeta(c bool) *havenv1.ReadMeta {
	return &havenv1.ReadMeta{Consistent: c}
}

type noMembers struct{}

func (noMembers) Members() []heartbeat.Member { return nil }

type noEvents struct{}

func (noEvents) Watch(uint64, int, func(events.Event) bool) ([]events.Event, *events.Sub, error) {
	return nil, nil, errNotModelled
}

// aclAgent is one agent's server with access control on, serving the
// real cluster and ACL services over its own FSM.
type aclAgent struct {
	leader *logLeader
	addr   string
	conn   *grpc.ClientConn
}

type aclWorld struct {
	logs      *logtest.Buffer
	auditFile string
	// isNode is what the IsNode hook says of every caller.
	isNode atomic.Bool
}

func newACLWorld(t *testing.T) *aclWorld {
	return &aclWorld{logs: &logtest.Buffer{}, auditFile: filepath.Join(t.TempDir(), "audit.jsonl")}
}

// start serves an agent named self over log; with isLeader false its
// leader-only calls are forwarded to leaderAddr.
func (w *aclWorld) start(t *testing.T, self string, log *fsmtest.Log, leaderAddr func() string) *aclAgent {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(w.logs, nil)).With("node", self)
	audit, err := NewAudit(logger.With("sub", "audit"), w.auditFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = audit.Close() })
	pool := rpcclient.NewPool()
	t.Cleanup(pool.Close)
	leaderOnly := func(m string, req any) bool { return cluster.LeaderOnly(m, req) || aclsvc.LeaderOnly(m) }
	srv, err := New(Config{
		Addr:   "127.0.0.1:0",
		Logger: logger,
		Auth:   &Auth{Tokens: log.FSM, IsNode: func(context.Context) bool { return w.isNode.Load() }, Audit: audit, Logger: logger.With("sub", "grpc")},
		Forward: &Forwarder{
			Self: self, LeaderOnly: leaderOnly, IsLeader: func() bool { return leaderAddr == nil }, Pool: pool,
			Locate: func() (string, string, error) {
				if leaderAddr == nil {
					return self, "", nil
				}
				return "leader", leaderAddr(), nil
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ll := &logLeader{log: log}
	locate := func() (string, string, error) { return "", "", errors.New("no leader in this test") }
	havenv1.RegisterClusterServiceServer(srv, cluster.New(cluster.Config{
		Name: self, State: log.FSM, Leader: ll, Raft: readyRaft{}, Members: noMembers{}, Events: noEvents{}, Locate: locate,
	}))
	havenv1.RegisterAclServiceServer(srv, aclsvc.New(aclsvc.Config{State: log.FSM, Leader: ll, Locate: locate}))
	havenv1.RegisterNodeServiceServer(srv, havenv1.UnimplementedNodeServiceServer{})
	havenv1.RegisterKeyringServiceServer(srv, havenv1.UnimplementedKeyringServiceServer{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve()
	}()
	t.Cleanup(func() {
		srv.Stop(5 * time.Second)
		<-done
	})
	conn, err := rpcclient.Dial(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &aclAgent{leader: ll, addr: srv.Addr(), conn: conn}
}

func withToken(ctx context.Context, secret string) context.Context {
	if secret == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
}

// invoke calls method with req, as a generic client would.
func (a *aclAgent) invoke(ctx context.Context, method string, req proto.Message) (proto.Message, error) {
	reply, err := newReply(method)
	if err != nil {
		return nil, err
	}
	return reply, a.conn.Invoke(ctx, method, req, reply)
}

// snapshot is the FSM's whole state as bytes: equal bytes, equal state.
func snapshot(t *testing.T, f *fsm.FSM) []byte {
	t.Helper()
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := s.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// gossipKey is the key the keyring requests carry: a secret too.
const gossipKey = "c2VjcmV0LWdvc3NpcC1rZXktZm9yLXRlc3Rz"

// mutating is a request for every method access control audits, each one
// that the handler takes (a valid request), so that a call that got past
// the interceptor would reach the leader. A method missing here fails the
// test: every mutating RPC is tried.
func mutating() map[string]proto.Message {
	return map[string]proto.Message{
		havenv1.ClusterService_CreateGroup_FullMethodName:     &havenv1.CreateGroupRequest{Spec: fsmtest.VMGroup("new")},
		havenv1.ClusterService_DeleteGroup_FullMethodName:     &havenv1.DeleteGroupRequest{Name: "off"},
		havenv1.ClusterService_StartGroup_FullMethodName:      &havenv1.StartGroupRequest{Name: "off"},
		havenv1.ClusterService_StopGroup_FullMethodName:       &havenv1.StopGroupRequest{Name: "web"},
		havenv1.ClusterService_MoveGroup_FullMethodName:       &havenv1.MoveGroupRequest{Name: "web", Target: "n2"},
		havenv1.ClusterService_CancelOperation_FullMethodName: &havenv1.CancelOperationRequest{Id: "mv-1"},
		havenv1.ClusterService_DrainNode_FullMethodName:       &havenv1.DrainNodeRequest{Node: "n1"},
		havenv1.ClusterService_ResumeNode_FullMethodName:      &havenv1.ResumeNodeRequest{Node: "n1"},
		havenv1.ClusterService_AttachDisk_FullMethodName: &havenv1.AttachDiskRequest{Group: "web", Disk: &havenv1.Resource{
			Name: "data", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: "web/data.img", SizeBytes: 1 << 30}}},
		havenv1.ClusterService_DetachDisk_FullMethodName: &havenv1.DetachDiskRequest{Group: "web", Disk: "data"},
		havenv1.ClusterService_Balance_FullMethodName:    &havenv1.BalanceRequest{},
		havenv1.AclService_CreateToken_FullMethodName:    &havenv1.CreateTokenRequest{Name: "intruder", Role: acl.Admin},
		havenv1.AclService_RevokeToken_FullMethodName:    &havenv1.RevokeTokenRequest{Token: "ops"},
		// Not a write, but admin's and audited: who read the tokens.
		havenv1.AclService_ListTokens_FullMethodName: &havenv1.ListTokensRequest{},
		// The keyring is served unimplemented here: a call that got past
		// the interceptor would answer Unimplemented, not PermissionDenied.
		havenv1.KeyringService_InstallKey_FullMethodName: &havenv1.InstallKeyRequest{Key: gossipKey},
		havenv1.KeyringService_UseKey_FullMethodName:     &havenv1.UseKeyRequest{Key: gossipKey},
		havenv1.KeyringService_RemoveKey_FullMethodName:  &havenv1.RemoveKeyRequest{Key: gossipKey},
	}
}

// auditedMethods lists every method the rules audit, from the registry.
func auditedMethods(t *testing.T) []string {
	var out []string
	for _, svc := range []string{"haven.v1.ClusterService", "haven.v1.AclService", "haven.v1.KeyringService"} {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
		if err != nil {
			t.Fatal(err)
		}
		ms := d.(protoreflect.ServiceDescriptor).Methods()
		for i := 0; i < ms.Len(); i++ {
			m := "/" + svc + "/" + string(ms.Get(i).Name())
			if r, _ := acl.Lookup(m); r.Audit && !r.Open {
				out = append(out, m)
			}
		}
	}
	return out
}

// cluster is a one-agent world with groups web (online on n1) and off
// (stopped), nodes n1 and n2, and tokens of each role.
type aclFixture struct {
	w                     *aclWorld
	log                   *fsmtest.Log
	agent                 *aclAgent
	admin, operate, read  string
	adminID, opID, readID string
	secrets               []string
}

func newACLFixture(t *testing.T) *aclFixture {
	f := &aclFixture{w: newACLWorld(t), log: fsmtest.New(t)}
	f.log.AddNode(fsmtest.Node("n1", "a", 4000, 8<<30, nil))
	f.log.AddNode(fsmtest.Node("n2", "a", 4000, 8<<30, nil))
	f.log.StartOn("web", "n1")
	f.log.Create(fsmtest.VMGroup("off"))
	f.agent = f.w.start(t, "n1", f.log, nil)
	ctx := callCtx(t)
	boot, err := havenv1.NewAclServiceClient(f.agent.conn).Bootstrap(ctx, &havenv1.BootstrapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	f.admin, f.adminID = boot.GetSecret(), boot.GetToken().GetAccessorId()
	for _, c := range []struct {
		name   string
		role   havenv1.AclRole
		secret *string
		id     *string
	}{{"ops", acl.Operate, &f.operate, &f.opID}, {"viewer", acl.Read, &f.read, &f.readID}} {
		resp, err := havenv1.NewAclServiceClient(f.agent.conn).CreateToken(withToken(ctx, f.admin), &havenv1.CreateTokenRequest{Name: c.name, Role: c.role})
		if err != nil {
			t.Fatal(err)
		}
		*c.secret, *c.id = resp.GetSecret(), resp.GetToken().GetAccessorId()
	}
	f.secrets = []string{f.admin, f.operate, f.read}
	return f
}

// noSecrets fails if any secret shows in the logs or the audit file.
func (f *aclFixture) noSecrets(t *testing.T, more ...string) {
	t.Helper()
	audit, _ := os.ReadFile(f.w.auditFile)
	for _, s := range append(f.secrets, more...) {
		if strings.Contains(f.w.logs.String(), s) || strings.Contains(string(audit), s) {
			t.Errorf("a secret (%.6s...) shows in the logs or the audit file", s)
		}
	}
}

// TestACLMutatingRefused: without a token, with an unknown one, or with
// a role too weak, every mutating RPC is refused with PermissionDenied,
// reaches no leader and changes nothing; with the role it needs it gets
// past the interceptor.
func TestACLMutatingRefused(t *testing.T) {
	f := newACLFixture(t)
	reqs := mutating()
	for _, m := range auditedMethods(t) {
		if reqs[m] == nil {
			t.Errorf("%s is audited but not tried: add a request to mutating()", m)
		}
	}
	ctx := callCtx(t)
	before, calls := snapshot(t, f.log.FSM), len(f.agent.leader.seen())
	for m, req := range reqs {
		rule, _ := acl.Lookup(m)
		weak := map[string]string{"no token": "", "unknown token": "not-a-token", "read": f.read}
		if rule.Role == acl.Admin {
			weak["operate"] = f.operate
		}
		for who, secret := range weak {
			_, err := f.agent.invoke(withToken(ctx, secret), m, req)
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s with %s: %v, want PermissionDenied", m, who, err)
			}
			for _, s := range f.secrets {
				if strings.Contains(status.Convert(err).Message(), s) {
					t.Errorf("%s with %s: the refusal carries a secret", m, who)
				}
			}
		}
	}
	if !bytes.Equal(before, snapshot(t, f.log.FSM)) {
		t.Error("refused calls changed the FSM")
	}
	if got := f.agent.leader.seen()[calls:]; len(got) != 0 {
		t.Errorf("refused calls reached the leader: %v", got)
	}

	// The role each needs gets through (whatever the leader says then);
	// the revoke of ops last, since the others use it.
	revoke := havenv1.AclService_RevokeToken_FullMethodName
	order := append(slices.DeleteFunc(slices.Collect(maps.Keys(reqs)), func(m string) bool { return m == revoke }), revoke)
	for _, m := range order {
		req := reqs[m]
		rule, _ := acl.Lookup(m)
		secret := f.operate
		if rule.Role == acl.Admin {
			secret = f.admin
		}
		if _, err := f.agent.invoke(withToken(ctx, secret), m, req); status.Code(err) == codes.PermissionDenied {
			t.Errorf("%s with role %s: %v", m, acl.RoleName(rule.Role), err)
		}
	}
	if len(f.agent.leader.seen()) == calls {
		t.Error("allowed calls reached no leader")
	}
	f.noSecrets(t, gossipKey)
}

// TestACLReads: read may read, and reads need a token too.
func TestACLReads(t *testing.T) {
	f := newACLFixture(t)
	c := havenv1.NewClusterServiceClient(f.agent.conn)
	ctx := callCtx(t)
	resp, err := c.ListGroups(withToken(ctx, f.read), &havenv1.ListGroupsRequest{})
	if err != nil || len(resp.GetGroups()) != 2 {
		t.Fatalf("list with read: %v, %v", resp, err)
	}
	if _, err := c.GetGroup(withToken(ctx, f.read), &havenv1.GetGroupRequest{Name: "web"}); err != nil {
		t.Fatalf("get with read: %v", err)
	}
	_, err = c.ListGroups(ctx, &havenv1.ListGroupsRequest{})
	wantDenied(t, err, "needs a token with role read")
	// A stream is checked too.
	st, err := c.WatchEvents(ctx, &havenv1.WatchEventsRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	wantDenied(t, err, "WatchEvents")
	st, err = c.WatchEvents(withToken(ctx, f.read), &havenv1.WatchEventsRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) == codes.PermissionDenied {
		t.Errorf("WatchEvents with read: %v", err)
	}
	// Tokens are admin's to list, and are listed without hashes.
	a := havenv1.NewAclServiceClient(f.agent.conn)
	_, err = a.ListTokens(withToken(ctx, f.operate), &havenv1.ListTokensRequest{})
	wantDenied(t, err, `token "ops" has role operate`)
	list, err := a.ListTokens(withToken(ctx, f.admin), &havenv1.ListTokensRequest{})
	if err != nil || len(list.GetTokens()) != 3 {
		t.Fatalf("list tokens: %v, %v", list, err)
	}
	for _, tok := range list.GetTokens() {
		if len(tok.GetSecretHash()) != 0 {
			t.Errorf("token %s listed with its hash", tok.GetName())
		}
	}
	f.noSecrets(t)
}

func wantDenied(t *testing.T, err error, part string) {
	t.Helper()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), part) {
		t.Errorf("got %v, want PermissionDenied with %q", err, part)
	}
}

// TestACLBootstrapOnce: a second bootstrap is refused, with or without a
// token, and makes no token.
func TestACLBootstrapOnce(t *testing.T) {
	f := newACLFixture(t)
	a := havenv1.NewAclServiceClient(f.agent.conn)
	for _, secret := range []string{"", f.admin} {
		_, err := a.Bootstrap(withToken(callCtx(t), secret), &havenv1.BootstrapRequest{})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "already bootstrapped") {
			t.Errorf("second bootstrap: %v, want FailedPrecondition", err)
		}
	}
	if n := len(f.log.FSM.ACLTokens()); n != 3 {
		t.Errorf("%d tokens, want 3", n)
	}
}

// TestACLRevoke: a revoked token is refused at once, and the leader
// checks a forwarded call again, since a follower's state may lag the
// revoke.
func TestACLRevoke(t *testing.T) {
	f := newACLFixture(t)
	ctx := callCtx(t)
	stop := func(a *aclAgent) error {
		_, err := havenv1.NewClusterServiceClient(a.conn).StopGroup(withToken(ctx, f.operate), &havenv1.StopGroupRequest{Name: "web"})
		return err
	}
	// A follower whose FSM stopped before the revoke: a copy of now.
	lag := fsmtest.New(t)
	if err := lag.FSM.Restore(nopCloser{bytes.NewReader(snapshot(t, f.log.FSM))}); err != nil {
		t.Fatal(err)
	}
	follower := f.w.start(t, "n2", lag, func() string { return f.agent.addr })

	if _, err := havenv1.NewAclServiceClient(f.agent.conn).RevokeToken(withToken(ctx, f.admin), &havenv1.RevokeTokenRequest{Token: "ops"}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, f.log.FSM)
	wantDenied(t, stop(f.agent), "unknown or revoked")
	if lag.FSM.ACLToken(f.opID) == nil {
		t.Fatal("the follower's copy saw the revoke: the test proves nothing")
	}
	wantDenied(t, stop(follower), "unknown or revoked")
	if !bytes.Equal(before, snapshot(t, f.log.FSM)) {
		t.Error("a revoked token's call changed the FSM")
	}
	// The last admin stays.
	_, err := havenv1.NewAclServiceClient(f.agent.conn).RevokeToken(withToken(ctx, f.admin), &havenv1.RevokeTokenRequest{Token: f.adminID})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("revoking the last admin: %v, want FailedPrecondition", err)
	}
	f.noSecrets(t)
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// TestACLAudit: every mutating call, allowed or not, is one JSON line
// with the token's name, the method, what it names and the code, and a
// line of the audit logger; reads are not audited.
func TestACLAudit(t *testing.T) {
	f := newACLFixture(t)
	ctx := callCtx(t)
	c := havenv1.NewClusterServiceClient(f.agent.conn)
	if _, err := c.StopGroup(withToken(ctx, f.operate), &havenv1.StopGroupRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.DeleteGroup(withToken(ctx, f.operate), &havenv1.DeleteGroupRequest{Name: "off"})
	wantDenied(t, err, "needs role admin")
	if _, err := c.ListGroups(withToken(ctx, f.read), &havenv1.ListGroupsRequest{}); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(f.w.auditFile)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	var entries []AuditEntry
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		var e AuditEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		entries = append(entries, e)
	}
	// The fixture's bootstrap and two creates, then the stop and the
	// refused delete; no list.
	if len(entries) != 5 {
		t.Fatalf("%d audit entries, want 5: %+v", len(entries), entries)
	}
	if e := entries[0]; e.Method != havenv1.AclService_Bootstrap_FullMethodName || e.Code != "OK" {
		t.Errorf("bootstrap entry %+v", e)
	}
	if e := entries[2]; e.Token != "bootstrap" || e.Subject["name"] != "viewer" {
		t.Errorf("create entry %+v: want by bootstrap, naming viewer", e)
	}
	if e := entries[3]; e.Method != havenv1.ClusterService_StopGroup_FullMethodName || e.Token != "ops" || e.Accessor != f.opID || e.Subject["name"] != "web" || e.Code != "OK" {
		t.Errorf("stop entry %+v", e)
	}
	if e := entries[4]; e.Method != havenv1.ClusterService_DeleteGroup_FullMethodName || e.Token != "ops" || e.Subject["name"] != "off" || e.Code != "PermissionDenied" {
		t.Errorf("refused delete entry %+v", e)
	}
	logs := f.w.logs.String()
	if !strings.Contains(logs, "sub=audit") || !strings.Contains(logs, "method=/haven.v1.ClusterService/StopGroup token=ops") {
		t.Errorf("no audit log line for the stop:\n%s", logs)
	}
	if !strings.Contains(logs, `level=WARN msg="call refused" node=n1 sub=grpc method=/haven.v1.ClusterService/DeleteGroup reason=`) || !strings.Contains(logs, "token=ops accessor="+f.opID) {
		t.Errorf("the refusal is not logged at warn with its token:\n%s", logs)
	}
	f.noSecrets(t)
}

// TestACLNodeMethods: agent-to-agent methods need a node, whatever token
// comes with the call; health needs nothing.
func TestACLNodeMethods(t *testing.T) {
	f := newACLFixture(t)
	_, err := havenv1.NewNodeServiceClient(f.agent.conn).RenewLease(withToken(callCtx(t), f.admin), &havenv1.RenewLeaseRequest{Node: "n1"})
	wantDenied(t, err, "only a haven node may call it")
	// A fan-out's leg too, though the method takes a token otherwise.
	_, err = havenv1.NewKeyringServiceClient(f.agent.conn).InstallKey(withToken(callCtx(t), f.admin), &havenv1.InstallKeyRequest{Key: gossipKey, LocalOnly: true})
	wantDenied(t, err, "leg of a fan-out")
	_, err = havenv1.NewKeyringServiceClient(f.agent.conn).ListKeys(withToken(callCtx(t), f.read), &havenv1.ListKeysRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("ListKeys with read: %v, want past the interceptor", err)
	}
	f.w.isNode.Store(true)
	_, err = havenv1.NewKeyringServiceClient(f.agent.conn).InstallKey(callCtx(t), &havenv1.InstallKeyRequest{Key: gossipKey, LocalOnly: true})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("a node's leg: %v, want past the interceptor", err)
	}
	if _, err := f.agent.invoke(callCtx(t), "/grpc.health.v1.Health/Check", healthRequest()); err != nil {
		t.Errorf("health: %v", err)
	}
}

func healthRequest() proto.Message {
	mt, _ := protoregistry.GlobalTypes.FindMessageByName("grpc.health.v1.HealthCheckRequest")
	return mt.New().Interface()
}

// TestACLNodeDrainsItself: a node may drain and resume without a token
// (an agent draining itself on shutdown), but a token it sends decides,
// and other operate calls still need one.
func TestACLNodeDrainsItself(t *testing.T) {
	f := newACLFixture(t)
	f.w.isNode.Store(true)
	c := havenv1.NewClusterServiceClient(f.agent.conn)
	ctx := callCtx(t)
	if _, err := c.DrainNode(ctx, &havenv1.DrainNodeRequest{Node: "n1"}); err != nil {
		t.Fatalf("a node's drain without a token: %v", err)
	}
	if !f.log.FSM.Node("n1").GetDraining() {
		t.Fatal("drain not applied")
	}
	_, err := c.ResumeNode(withToken(ctx, f.read), &havenv1.ResumeNodeRequest{Node: "n1"})
	wantDenied(t, err, "needs role operate")
	_, err = c.StopGroup(ctx, &havenv1.StopGroupRequest{Name: "web"})
	wantDenied(t, err, "none given")
}
