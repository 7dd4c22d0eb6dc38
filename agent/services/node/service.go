// Package node is haven.v1.NodeService, what agents ask each other: lease
// renewals and group reports for the leader, Raft status for the
// bootstrap, the two ends of moves, a probe of the link a move would take
// (a diagnostic), and fault injection for tests (guest crashes, holds of
// moves at a phase, a VM's memory read or filled with data). Calls that
// act for a node are refused unless the cluster knows the node
// (checkMember).
package node

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// State is what the membership check reads of the FSM.
type State interface {
	Node(name string) *havenv1.Node
}

// Raft is what GetRaftStatus reports.
type Raft interface {
	HasState() bool
	Status() consensus.Status
}

// Leases answers renewals (the leader's grant table).
type Leases interface {
	Renew(ctx context.Context, node string) (*havenv1.RenewLeaseResponse, error)
}

// Reports takes an owner's reports (the leader).
type Reports interface {
	Report(req *havenv1.ReportGroupRequest) error
	ReportDiskChange(req *havenv1.ReportDiskChangeRequest) error
	ReportChecks(req *havenv1.ReportChecksRequest) error
}

// LogServer serves FollowLog (follow.Server).
type LogServer interface {
	Serve(ctx context.Context, after uint64, send func(*havenv1.FollowLogResponse) error) error
}

// Members is gossip's view of the cluster.
type Members interface {
	Member(name string) (heartbeat.Member, bool)
}

// Config is what the service needs.
type Config struct {
	Name    string
	State   State
	Raft    Raft
	Leases  Leases
	Reports Reports
	Members Members
	// Log serves the committed log to members outside the Raft
	// configuration; nil serves none.
	Log LogServer
	// Driver is this node's hypervisor; CrashVM and InspectVM need it to
	// implement driver.FaultInjector, and FaultInjection to be set.
	Driver         driver.Hypervisor
	FaultInjection bool
	// Holds are the holds of HoldMoves, GetMoveHolds and ReleaseMoves,
	// which need FaultInjection set as well.
	Holds Holds
	// Mover is this node's part in moves; DialNode opens the streams.
	Mover    Mover
	DialNode DialNode
	Locate   services.Locate
	Logger   *slog.Logger
}

// Service implements haven.v1.NodeService.
type Service struct {
	havenv1.UnimplementedNodeServiceServer
	cfg       Config
	strangers strangers
	// probeOut and probeIn are held while a link probe runs from or into
	// this agent: one at a time each way.
	probeOut, probeIn atomic.Bool
}

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

func (s *Service) status(err error) error { return services.Status(err, s.cfg.Locate) }

// checkMember refuses agent-to-agent calls from a node the cluster does
// not know: neither gossip (in any state but gone for good) nor the FSM
// (alive) has it. A grant to a stranger would be a lease on nothing; a
// report from one, a lie or a misconfiguration. Refusals are logged at
// most once a minute per name.
func (s *Service) checkMember(node, what string) error {
	if m, ok := s.cfg.Members.Member(node); ok && m.State != heartbeat.StateLeft {
		return nil
	}
	if n := s.cfg.State.Node(node); n != nil && n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
		return nil
	}
	if s.strangers.first(node, time.Now()) {
		s.cfg.Logger.Warn("refused a call from a node that is not a member", "node", node, "call", what)
	}
	return status.Errorf(codes.PermissionDenied, "%s: node %q is not a member of this cluster", what, node)
}

// strangers rate-limits the log line of checkMember.
type strangers struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (s *strangers) first(node string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil || len(s.last) > 1024 {
		s.last = map[string]time.Time{}
	}
	if t, ok := s.last[node]; ok && now.Sub(t) < time.Minute {
		return false
	}
	s.last[node] = now
	return true
}
