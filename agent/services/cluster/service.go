// Package cluster is haven.v1.ClusterService, the operator's API: one file
// and one test per RPC. A handler checks its request, asks the state (a
// read) or the leader (a write) and maps the domain error to a status with
// services.Status. Forwarding writes to the leader is not a handler's job:
// the server's interceptor forwards every method LeaderOnly names.
package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/events"
	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// State is what reads see of the FSM.
type State interface {
	Index() uint64
	Node(name string) *havenv1.Node
	Nodes() []*havenv1.Node
	Group(name string) *havenv1.Group
	Groups() []*havenv1.Group
	// GroupsAfter hands out the groups named after after, in name order,
	// until fn returns false; fn must not call the State.
	GroupsAfter(after string, fn func(*havenv1.Group) bool)
	Operation(id string) *havenv1.Operation
	Operations() []*havenv1.Operation
}

// Leader is what writes and the leader's reports ask of the leader.
type Leader interface {
	CreateGroup(spec *havenv1.GroupSpec, requestID string) (*havenv1.Group, error)
	DeleteGroup(name, requestID string) error
	StartGroup(name, node, requestID string) (*havenv1.Group, error)
	StopGroup(name, requestID string) (*havenv1.Group, error)
	SetDrain(node string, draining bool, requestID string) (*havenv1.Node, error)
	Reserve(k int) (leader.ReserveReport, error)
	KeptReserve() leader.ReserveReport
	Rank(spec *havenv1.GroupSpec) ([]placement.Ranked, placement.Spec, error)
	Balance(power, dryRun bool) (leader.BalanceReport, error)
	MoveGroup(req leader.MoveRequest) (*havenv1.Operation, error)
	CancelOperation(id, requestID string) (*havenv1.Operation, error)
	AttachDisk(ctx context.Context, group string, disk *havenv1.Resource, requestID string) (*havenv1.Group, *havenv1.DiskChange, error)
	DetachDisk(ctx context.Context, group, disk, requestID string) (*havenv1.Group, *havenv1.DiskChange, error)
}

// Raft is what the status and the reads need of this node's Raft.
type Raft interface {
	Status() consensus.Status
	// ConsistentRead returns nil when this node may answer a
	// linearizable read now.
	ConsistentRead() error
	ReadMeta(consistent bool) *havenv1.ReadMeta
}

// Events is this agent's event broker.
type Events interface {
	Watch(from uint64, buf int, filter func(events.Event) bool) ([]events.Event, *events.Sub, error)
}

// Members is gossip's view of the cluster.
type Members interface {
	Members() []heartbeat.Member
}

// Config is what the service needs.
type Config struct {
	// Name is this node's name.
	Name    string
	State   State
	Leader  Leader
	Raft    Raft
	Members Members
	Events  Events
	Locate  services.Locate
}

// Service implements haven.v1.ClusterService.
type Service struct {
	havenv1.UnimplementedClusterServiceServer
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

func (s *Service) status(err error) error { return services.Status(err, s.cfg.Locate) }

// leaderOnly are the methods only the leader answers: every write, and the
// reports of what the leader keeps.
var leaderOnly = map[string]bool{
	havenv1.ClusterService_CreateGroup_FullMethodName:     true,
	havenv1.ClusterService_DeleteGroup_FullMethodName:     true,
	havenv1.ClusterService_StartGroup_FullMethodName:      true,
	havenv1.ClusterService_StopGroup_FullMethodName:       true,
	havenv1.ClusterService_DrainNode_FullMethodName:       true,
	havenv1.ClusterService_ResumeNode_FullMethodName:      true,
	havenv1.ClusterService_GetReserve_FullMethodName:      true,
	havenv1.ClusterService_RankNodes_FullMethodName:       true,
	havenv1.ClusterService_Balance_FullMethodName:         true,
	havenv1.ClusterService_MoveGroup_FullMethodName:       true,
	havenv1.ClusterService_CancelOperation_FullMethodName: true,
	havenv1.ClusterService_AttachDisk_FullMethodName:      true,
	havenv1.ClusterService_DetachDisk_FullMethodName:      true,
}

// LeaderOnly reports whether a call must be answered by the leader: a
// leader-only method, or a read that asks to be consistent.
func LeaderOnly(method string, req any) bool {
	if leaderOnly[method] {
		return true
	}
	c, ok := req.(interface{ GetConsistent() bool })
	return ok && c.GetConsistent()
}

// checkGroupName refuses a missing or malformed group name.
func checkGroupName(name string) error {
	if name == "" {
		return services.Invalid("name: is empty")
	}
	if !fsm.ValidName(name) {
		return services.Invalid("name: %q is not a valid group name", name)
	}
	return nil
}

// consistent answers nil when a read may go on: always for a default
// read, after the leader's check for a consistent one.
func (s *Service) consistent(want bool) (*havenv1.ReadMeta, error) {
	if want {
		if err := s.cfg.Raft.ConsistentRead(); err != nil {
			return nil, s.status(err)
		}
	}
	return s.cfg.Raft.ReadMeta(want), nil
}
