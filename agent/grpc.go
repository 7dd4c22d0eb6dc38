package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// MaxMessageBytes bounds every request: a group spec is a few KiB, so
// anything near this is a mistake or an attack, refused with
// ResourceExhausted before it is decoded.
const MaxMessageBytes = 1 << 20

// forwardedKey marks a request a follower forwarded, so that a node that
// lost leadership meanwhile answers Unavailable instead of forwarding again.
const forwardedKey = "haven-forwarded"

func (a *Agent) setupGRPC() error {
	lis, err := net.Listen("tcp", a.bind(a.cfg.Ports.GRPC))
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	a.lis = lis
	a.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(MaxMessageBytes))
	havenv1.RegisterClusterServiceServer(a.grpc, &clusterService{a: a})
	havenv1.RegisterNodeServiceServer(a.grpc, &nodeService{a: a})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(a.grpc, hs)
	reflection.Register(a.grpc)
	return nil
}

func (a *Agent) serveGRPC() {
	if err := a.grpc.Serve(a.lis); err != nil {
		a.log.Error("grpc server stopped", "error", err)
	}
}

// GRPCAddr is where this agent's API listens.
func (a *Agent) GRPCAddr() string { return a.lis.Addr().String() }

type nodeService struct {
	havenv1.UnimplementedNodeServiceServer
	a *Agent
}

func (s *nodeService) GetRaftStatus(context.Context, *havenv1.GetRaftStatusRequest) (*havenv1.GetRaftStatusResponse, error) {
	resp := &havenv1.GetRaftStatusResponse{HasState: s.a.hasRaftState()}
	if f := s.a.raft.GetConfiguration(); f.Error() == nil {
		resp.Peers = uint32(len(f.Configuration().Servers))
	}
	_, id := s.a.raft.LeaderWithID()
	resp.Leader = string(id)
	return resp, nil
}

func (s *nodeService) RenewLease(ctx context.Context, req *havenv1.RenewLeaseRequest) (*havenv1.RenewLeaseResponse, error) {
	if !fsm.ValidName(req.GetNode()) {
		return nil, status.Errorf(codes.InvalidArgument, "node: %q is not a valid node name", req.GetNode())
	}
	if err := s.a.checkMember(req.GetNode(), "lease renewal"); err != nil {
		return nil, err
	}
	return s.a.leases.renew(ctx, req.GetNode())
}

func (s *nodeService) CrashVM(_ context.Context, req *havenv1.CrashVMRequest) (*havenv1.CrashVMResponse, error) {
	if !s.a.cfg.Sim.FaultInjection {
		return nil, status.Error(codes.PermissionDenied, "fault injection is disabled (sim.fault_injection)")
	}
	if err := s.a.drv.Crash(driver.VMID{Group: req.GetGroup(), Resource: req.GetVm()}, "injected crash"); err != nil {
		if errors.Is(err, driver.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "vm %s/%s is not on %s", req.GetGroup(), req.GetVm(), s.a.cfg.Name)
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &havenv1.CrashVMResponse{}, nil
}

func (s *nodeService) ReportGroup(ctx context.Context, req *havenv1.ReportGroupRequest) (*havenv1.ReportGroupResponse, error) {
	if !s.a.isLeader() {
		return nil, s.a.notLeader()
	}
	if err := s.a.checkMember(req.GetNode(), "group report"); err != nil {
		return nil, err
	}
	if err := s.a.handleReport(req); err != nil {
		return nil, err
	}
	return &havenv1.ReportGroupResponse{}, nil
}

type clusterService struct {
	havenv1.UnimplementedClusterServiceServer
	a *Agent
}

func (s *clusterService) GetStatus(context.Context, *havenv1.GetStatusRequest) (*havenv1.GetStatusResponse, error) {
	a := s.a
	stats := a.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	resp := &havenv1.GetStatusResponse{
		Node:         a.cfg.Name,
		RaftState:    a.raft.State().String(),
		Term:         u("term"),
		CommitIndex:  u("commit_index"),
		AppliedIndex: a.raft.AppliedIndex(),
	}
	if name, addr, err := a.leader(); err == nil {
		resp.Leader, resp.LeaderAddr = name, addr
	}
	alive := map[string]bool{}
	for _, m := range a.members.Members() {
		alive[m.Name] = m.State == heartbeat.StateAlive
	}
	if f := a.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			if srv.Suffrage == raft.Voter {
				resp.Voters++
				if alive[string(srv.ID)] {
					resp.AliveVoters++
				}
			} else {
				resp.Nonvoters++
			}
		}
	}
	resp.QuorumSize = uint32(quorum.QuorumSize(int(resp.Voters)))
	sites := map[string]bool{}
	for _, n := range a.fsm.Nodes() {
		resp.NodeCount++
		if n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
			resp.AliveNodes++
		}
		sites[n.GetSite()] = true
	}
	for site := range sites {
		resp.Sites = append(resp.Sites, site)
	}
	sort.Strings(resp.Sites)
	resp.GroupCount = uint32(len(a.fsm.Groups()))
	st := a.placementState()
	if k := reserveK(st, a.cfg.Placement.Reserve); k > 0 {
		r := a.reserveFor(st, k)
		resp.ReserveK, resp.ReserveOk, resp.ReserveSummary = uint32(k), r.OK, r.Summary()
	}
	return resp, nil
}

func (s *clusterService) ListNodes(ctx context.Context, req *havenv1.ListNodesRequest) (*havenv1.ListNodesResponse, error) {
	if req.GetConsistent() {
		if !s.a.isLeader() {
			return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.ListNodesResponse, error) {
				return c.ListNodes(ctx, req)
			})
		}
		if err := s.a.consistentRead(); err != nil {
			return nil, err
		}
	}
	meta := s.a.readMeta(req.GetConsistent())
	roles := map[string]havenv1.RaftRole{}
	if f := s.a.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			r := havenv1.RaftRole_RAFT_ROLE_NONVOTER
			if srv.Suffrage == raft.Voter {
				r = havenv1.RaftRole_RAFT_ROLE_VOTER
			}
			roles[string(srv.ID)] = r
		}
	}
	_, leader := s.a.raft.LeaderWithID()
	resp := &havenv1.ListNodesResponse{Meta: meta}
	for _, n := range s.a.fsm.Nodes() {
		role, ok := roles[n.GetName()]
		if !ok {
			role = havenv1.RaftRole_RAFT_ROLE_NONE
		}
		resp.Nodes = append(resp.Nodes, &havenv1.NodeInfo{Node: n, RaftRole: role, Leader: string(leader) == n.GetName()})
	}
	return resp, nil
}

func (s *clusterService) CreateGroup(ctx context.Context, req *havenv1.CreateGroupRequest) (*havenv1.CreateGroupResponse, error) {
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "spec: is missing")
	}
	fsm.NormalizeGroupSpec(req.Spec)
	if err := fsm.ValidateGroupSpec(req.Spec); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, err := newRequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.CreateGroupResponse, error) {
			return c.CreateGroup(ctx, req)
		})
	}
	if err := s.a.admitCreate(req.Spec); err != nil {
		return nil, err
	}
	res, err := s.a.propose(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: req.Spec}}})
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, fsmError(res.Err)
	}
	g := s.a.fsm.Group(req.Spec.GetName())
	if g == nil {
		// Only a duplicate request whose group was deleted since.
		return nil, status.Errorf(codes.NotFound, "group %q was created by request %s and deleted since", req.Spec.GetName(), id)
	}
	return &havenv1.CreateGroupResponse{Group: g}, nil
}

func (s *clusterService) GetGroup(ctx context.Context, req *havenv1.GetGroupRequest) (*havenv1.GetGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	if req.GetConsistent() {
		if !s.a.isLeader() {
			return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.GetGroupResponse, error) {
				return c.GetGroup(ctx, req)
			})
		}
		if err := s.a.consistentRead(); err != nil {
			return nil, err
		}
	}
	meta := s.a.readMeta(req.GetConsistent())
	g := s.a.fsm.Group(req.GetName())
	if g == nil {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	return &havenv1.GetGroupResponse{Group: g, Meta: meta}, nil
}

func (s *clusterService) ListGroups(ctx context.Context, req *havenv1.ListGroupsRequest) (*havenv1.ListGroupsResponse, error) {
	if req.GetConsistent() {
		if !s.a.isLeader() {
			return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.ListGroupsResponse, error) {
				return c.ListGroups(ctx, req)
			})
		}
		if err := s.a.consistentRead(); err != nil {
			return nil, err
		}
	}
	meta := s.a.readMeta(req.GetConsistent())
	return &havenv1.ListGroupsResponse{Groups: s.a.fsm.Groups(), Meta: meta}, nil
}

func (s *clusterService) DeleteGroup(ctx context.Context, req *havenv1.DeleteGroupRequest) (*havenv1.DeleteGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	id, err := newRequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.DeleteGroupResponse, error) {
			return c.DeleteGroup(ctx, req)
		})
	}
	res, err := s.a.propose(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: req.GetName()}}})
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, fsmError(res.Err)
	}
	return &havenv1.DeleteGroupResponse{}, nil
}

func checkGroupName(name string) error {
	if name == "" {
		return status.Error(codes.InvalidArgument, "name: is empty")
	}
	if !fsm.ValidName(name) {
		return status.Errorf(codes.InvalidArgument, "name: %q is not a valid group name", name)
	}
	return nil
}

func (a *Agent) isLeader() bool { return a.raft.State() == raft.Leader }

// forwarder keeps one client connection per leader address.
type forwarder struct {
	a     *Agent
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newForwarder(a *Agent) *forwarder { return &forwarder{a: a, conns: map[string]*grpc.ClientConn{}} }

func (f *forwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, f.a.dialOptions()...)
	if err != nil {
		return nil, err
	}
	f.conns[addr] = c
	return c, nil
}

// reset drops the connection to addr. After a partition heals, a fresh
// connection is up within one connect attempt, while the old one waits for
// TCP's retransmission backoff, which grows to seconds during an outage.
func (f *forwarder) reset(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		_ = c.Close()
		delete(f.conns, addr)
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.conns = map[string]*grpc.ClientConn{}
}

// forward sends a write to the leader once. A request that was already
// forwarded is not forwarded again: leadership moved while it travelled,
// and the caller retries with the same request id.
func forward[T any](ctx context.Context, a *Agent, call func(context.Context, havenv1.ClusterServiceClient) (T, error)) (T, error) {
	var zero T
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		return zero, a.notLeader()
	}
	name, addr, err := a.leader()
	if err != nil || name == a.cfg.Name {
		return zero, a.notLeader()
	}
	conn, err := a.fwd.conn(addr)
	if err != nil {
		return zero, status.Errorf(codes.Unavailable, "leader %s at %s: %v", name, addr, err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, a.cfg.Name)
	return call(ctx, havenv1.NewClusterServiceClient(conn))
}

func (s *clusterService) StartGroup(ctx context.Context, req *havenv1.StartGroupRequest) (*havenv1.StartGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	if req.GetNode() != "" && !fsm.ValidName(req.GetNode()) {
		return nil, status.Errorf(codes.InvalidArgument, "node: %q is not a valid node name", req.GetNode())
	}
	id, err := newRequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.StartGroupResponse, error) {
			return c.StartGroup(ctx, req)
		})
	}
	g := s.a.fsm.Group(req.GetName())
	if g == nil {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	if err := startable(g, req.GetNode()); err != nil {
		return nil, err
	}
	if alreadyStarted(g, req.GetNode()) {
		return &havenv1.StartGroupResponse{Group: g}, nil
	}
	if req.GetNode() != "" && s.a.fsm.Node(req.GetNode()) == nil {
		return nil, status.Errorf(codes.NotFound, "node %q not found", req.GetNode())
	}
	if possible := g.GetSpec().GetPossibleOwners(); req.GetNode() != "" && len(possible) > 0 && !slices.Contains(possible, req.GetNode()) {
		return nil, status.Errorf(codes.FailedPrecondition, "group %q may only run on %s, not on %s (possible_owners)", req.GetName(), strings.Join(possible, ","), req.GetNode())
	}
	if err := s.a.startGroup(g, req.GetNode(), id); err != nil {
		return nil, err
	}
	return &havenv1.StartGroupResponse{Group: s.a.fsm.Group(req.GetName())}, nil
}

// alreadyStarted reports whether a start of g (on node, when given) has
// nothing to do: the group is meant to run and runs, or is on its way
// (starting, or stopping for a planned move), on that node if one was
// named.
func alreadyStarted(g *havenv1.Group, node string) bool {
	if !fsm.WantsRun(g) || g.GetOwner() == "" {
		return false
	}
	return node == "" || node == g.GetOwner() && g.GetMoveTo() == ""
}

// startable refuses a start that cannot be honoured as asked.
func startable(g *havenv1.Group, node string) error {
	name := g.GetSpec().GetName()
	switch {
	case !fsm.WantsRun(g) && g.GetState() == havenv1.GroupState_GROUP_STATE_STOPPING:
		return status.Errorf(codes.FailedPrecondition, "group %q is stopping on %s: start it once it is offline", name, g.GetOwner())
	case fsm.WantsRun(g) && g.GetOwner() != "" && node != "" && (node != g.GetOwner() || g.GetMoveTo() != ""):
		return status.Errorf(codes.FailedPrecondition, "group %q already runs on %s: moving it is MoveGroup's job", name, g.GetOwner())
	}
	return nil
}

func (s *clusterService) StopGroup(ctx context.Context, req *havenv1.StopGroupRequest) (*havenv1.StopGroupResponse, error) {
	if err := checkGroupName(req.GetName()); err != nil {
		return nil, err
	}
	id, err := newRequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.StopGroupResponse, error) {
			return c.StopGroup(ctx, req)
		})
	}
	// The stop is the operator's intent, recorded whatever the group is
	// doing: the FSM turns it into stopping, offline or a cancelled move,
	// and nothing decided before it can undo it.
	if err := s.a.commit(&havenv1.Command{RequestId: id, Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{
		Name: req.GetName(), Reason: "stop requested"}}}); err != nil {
		return nil, err
	}
	g := s.a.fsm.Group(req.GetName())
	if g == nil {
		// Only a retried request whose group was deleted since.
		return nil, status.Errorf(codes.NotFound, "group %q was stopped by request %s and deleted since", req.GetName(), id)
	}
	return &havenv1.StopGroupResponse{Group: g}, nil
}
