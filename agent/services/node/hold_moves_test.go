package node

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fakeHolds records the calls and answers with what the test put in it.
type fakeHolds struct {
	armed    []havenv1.MoveHoldPhase
	released []havenv1.MoveHoldPhase
	list     []*havenv1.MoveHold
}

func (h *fakeHolds) HoldMoves(p havenv1.MoveHoldPhase) []*havenv1.MoveHold {
	h.armed = append(h.armed, p)
	return h.list
}

func (h *fakeHolds) MoveHolds() []*havenv1.MoveHold { return h.list }

func (h *fakeHolds) ReleaseMoves(p havenv1.MoveHoldPhase) []*havenv1.MoveHold {
	h.released = append(h.released, p)
	return h.list
}

const (
	holdUnspecified = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_UNSPECIFIED
	holdPrecopy     = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_PRECOPY
	holdResumed     = havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_RESUMED
)

func TestHoldMoves(t *testing.T) {
	f := newFixture(t, nil, true)
	h := &fakeHolds{list: []*havenv1.MoveHold{{Phase: holdPrecopy, Operations: []string{"mv-1"}}}}
	f.svc.cfg.Holds = h
	ctx := context.Background()
	resp, err := f.svc.HoldMoves(ctx, &havenv1.HoldMovesRequest{Phase: holdPrecopy})
	if err != nil || len(resp.GetHolds()) != 1 || len(h.armed) != 1 || h.armed[0] != holdPrecopy {
		t.Fatalf("HoldMoves: %v, %v; armed %v", resp, err, h.armed)
	}
	got, err := f.svc.GetMoveHolds(ctx, &havenv1.GetMoveHoldsRequest{})
	if err != nil || len(got.GetHolds()) != 1 || got.GetHolds()[0].GetOperations()[0] != "mv-1" {
		t.Fatalf("GetMoveHolds: %v, %v", got, err)
	}
	// Unspecified releases every hold.
	for _, p := range []havenv1.MoveHoldPhase{holdResumed, holdUnspecified} {
		if _, err := f.svc.ReleaseMoves(ctx, &havenv1.ReleaseMovesRequest{Phase: p}); err != nil {
			t.Fatalf("ReleaseMoves(%s): %v", p, err)
		}
	}
	if len(h.released) != 2 || h.released[0] != holdResumed || h.released[1] != holdUnspecified {
		t.Errorf("released %v, want resumed, then every hold", h.released)
	}
}

// A hold is armed at a phase a move has; releasing takes any phase or
// none.
func TestHoldMovesInvalidPhase(t *testing.T) {
	f := newFixture(t, nil, true)
	h := &fakeHolds{}
	f.svc.cfg.Holds = h
	ctx := context.Background()
	for _, p := range []havenv1.MoveHoldPhase{holdUnspecified, 99} {
		_, err := f.svc.HoldMoves(ctx, &havenv1.HoldMovesRequest{Phase: p})
		wantStatus(t, err, codes.InvalidArgument, "is not a phase of a move to hold at")
	}
	_, err := f.svc.ReleaseMoves(ctx, &havenv1.ReleaseMovesRequest{Phase: 99})
	wantStatus(t, err, codes.InvalidArgument, "phase: 99 is not a phase")
	if len(h.armed) != 0 || len(h.released) != 0 {
		t.Errorf("invalid requests reached the holds: armed %v, released %v", h.armed, h.released)
	}
}

// Holding moves is for tests: it takes the setting.
func TestHoldMovesDenied(t *testing.T) {
	for _, c := range []struct {
		name    string
		holds   Holds
		enabled bool
	}{
		{"setting off", &fakeHolds{}, false},
		{"no holds", nil, true},
	} {
		f := newFixture(t, nil, c.enabled)
		f.svc.cfg.Holds = c.holds
		ctx := context.Background()
		_, err := f.svc.HoldMoves(ctx, &havenv1.HoldMovesRequest{Phase: holdPrecopy})
		wantStatus(t, err, codes.PermissionDenied, "fault injection is disabled")
		_, err = f.svc.GetMoveHolds(ctx, &havenv1.GetMoveHoldsRequest{})
		wantStatus(t, err, codes.PermissionDenied, "fault injection is disabled")
		_, err = f.svc.ReleaseMoves(ctx, &havenv1.ReleaseMovesRequest{})
		wantStatus(t, err, codes.PermissionDenied, "fault injection is disabled")
		if h, ok := c.holds.(*fakeHolds); ok && (len(h.armed) != 0 || len(h.released) != 0) {
			t.Errorf("%s: the holds were reached", c.name)
		}
	}
}
