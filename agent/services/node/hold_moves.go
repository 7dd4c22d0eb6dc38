package node

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/driver"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Holds are this node's fault-injection holds of moves (the executor's).
type Holds interface {
	HoldMoves(phase havenv1.MoveHoldPhase) []*havenv1.MoveHold
	MoveHolds() []*havenv1.MoveHold
	ReleaseMoves(phase havenv1.MoveHoldPhase) []*havenv1.MoveHold
}

// errNoFaultInjection refuses a fault-injection call on an agent that
// does not allow them.
var errNoFaultInjection = status.Error(codes.PermissionDenied, "fault injection is disabled (sim.fault_injection)")

// faultInjector is the driver's test hands, if this agent allows them.
func (s *Service) faultInjector() (driver.FaultInjector, error) {
	fi, ok := s.cfg.Driver.(driver.FaultInjector)
	if !s.cfg.FaultInjection || !ok {
		return nil, errNoFaultInjection
	}
	return fi, nil
}

// vmError is what a test hand answers when the driver refuses it: the VM
// is not on this node, or not in a state the hand works on.
func (s *Service) vmError(id driver.VMID, err error) error {
	if errors.Is(err, driver.ErrNotFound) {
		return status.Errorf(codes.NotFound, "vm %s is not on %s", id, s.cfg.Name)
	}
	return status.Error(codes.FailedPrecondition, err.Error())
}

func (s *Service) holds() (Holds, error) {
	if !s.cfg.FaultInjection || s.cfg.Holds == nil {
		return nil, errNoFaultInjection
	}
	return s.cfg.Holds, nil
}

// validHoldPhase checks a phase a request names; unspecified is valid
// only where it means "every phase".
func validHoldPhase(p havenv1.MoveHoldPhase, unspecifiedOK bool) error {
	if _, known := havenv1.MoveHoldPhase_name[int32(p)]; !known || (p == havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_UNSPECIFIED && !unspecifiedOK) {
		return services.Invalid("phase: %v is not a phase of a move to hold at (setup, precopy, frozen, committed, resumed)", p)
	}
	return nil
}

// HoldMoves arms a hold at a phase of this node's moves, for tests.
func (s *Service) HoldMoves(_ context.Context, req *havenv1.HoldMovesRequest) (*havenv1.HoldMovesResponse, error) {
	h, err := s.holds()
	if err != nil {
		return nil, err
	}
	if err := validHoldPhase(req.GetPhase(), false); err != nil {
		return nil, err
	}
	return &havenv1.HoldMovesResponse{Holds: h.HoldMoves(req.GetPhase())}, nil
}

// GetMoveHolds lists this node's armed holds, for tests.
func (s *Service) GetMoveHolds(context.Context, *havenv1.GetMoveHoldsRequest) (*havenv1.GetMoveHoldsResponse, error) {
	h, err := s.holds()
	if err != nil {
		return nil, err
	}
	return &havenv1.GetMoveHoldsResponse{Holds: h.MoveHolds()}, nil
}

// ReleaseMoves releases this node's holds at a phase, or all, for tests.
func (s *Service) ReleaseMoves(_ context.Context, req *havenv1.ReleaseMovesRequest) (*havenv1.ReleaseMovesResponse, error) {
	h, err := s.holds()
	if err != nil {
		return nil, err
	}
	if err := validHoldPhase(req.GetPhase(), true); err != nil {
		return nil, err
	}
	return &havenv1.ReleaseMovesResponse{Released: h.ReleaseMoves(req.GetPhase())}, nil
}
