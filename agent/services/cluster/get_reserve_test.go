package cluster

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestGetReserveBroken(t *testing.T) {
	f := newFixture()
	r := &placement.Reserve{
		K: 2, OK: false, Method: placement.MethodEnumerated, FailureSets: 10, Pruned: 3, BrokenSets: 2,
		Breach:       &placement.Breach{Failed: []string{"n1", "n2"}, Group: "db", Reason: "no memory on n3"},
		WorstFailure: []string{"n1", "n2"},
		Headroom:     placement.Headroom{CPUMillis: -500, MemoryBytes: -1 << 30},
	}
	f.leader.reserve = leader.ReserveReport{Reserve: r, Kept: 2, Configured: 3, Leader: "n2", CPUOvercommit: 1.5}
	resp, err := f.svc.GetReserve(context.Background(), &havenv1.GetReserveRequest{K: 2})
	if err != nil {
		t.Fatal(err)
	}
	if f.leader.k != 2 {
		t.Errorf("leader asked about k=%d, want 2", f.leader.k)
	}
	if resp.GetK() != 2 || resp.GetCanSustain() || resp.GetMethod() != havenv1.ReserveMethod_RESERVE_METHOD_ENUMERATED {
		t.Errorf("k %d, can sustain %v, method %v: want 2, false, enumerated", resp.GetK(), resp.GetCanSustain(), resp.GetMethod())
	}
	if !resp.GetEnforced() || resp.GetConfiguredK() != 3 || resp.GetLeader() != "n2" || resp.GetCpuOvercommit() != 1.5 {
		t.Errorf("enforced %v, configured %d, leader %q, overcommit %v: want true, 3, n2, 1.5",
			resp.GetEnforced(), resp.GetConfiguredK(), resp.GetLeader(), resp.GetCpuOvercommit())
	}
	b := resp.GetBreach()
	if !slices.Equal(b.GetFailedNodes(), []string{"n1", "n2"}) || b.GetGroup() != "db" || b.GetReason() != "no memory on n3" {
		t.Errorf("breach %v, want n1,n2 breaking db: no memory on n3", b)
	}
	if resp.GetHeadroom().GetCpuMillis() != -500 || resp.GetHeadroom().GetMemoryBytes() != -1<<30 || !slices.Equal(resp.GetWorstFailure(), []string{"n1", "n2"}) {
		t.Errorf("headroom %v, worst %v: want -500 mcpu, -1 GiB, [n1 n2]", resp.GetHeadroom(), resp.GetWorstFailure())
	}
	if resp.GetFailureSetsChecked() != 10 || resp.GetFailureSetsPruned() != 3 || resp.GetFailureSetsBroken() != 2 || resp.GetSummary() != r.Summary() {
		t.Errorf("sets %d/%d/%d, summary %q: want 10/3/2, %q",
			resp.GetFailureSetsChecked(), resp.GetFailureSetsPruned(), resp.GetFailureSetsBroken(), resp.GetSummary(), r.Summary())
	}
}

// A site's loss that breaks the reserve is reported as that site, and the
// site-loss reserve kept alone is enforced.
func TestGetReserveSiteLoss(t *testing.T) {
	f := newFixture()
	r := &placement.Reserve{
		K: 0, SiteLoss: true, Method: placement.MethodEnumerated, FailureSets: 2, BrokenSets: 1,
		Breach: &placement.Breach{Failed: []string{"b1", "b2"}, Site: "b", Group: "db", Reason: "no memory"},
	}
	f.leader.reserve = leader.ReserveReport{Reserve: r, Configured: 0, KeptSites: 1, ConfiguredSites: 1}
	resp, err := f.svc.GetReserve(context.Background(), &havenv1.GetReserveRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetEnforced() || resp.GetReserveSites() != 1 || resp.GetConfiguredReserveSites() != 1 {
		t.Errorf("enforced %v, reserve sites %d (configured %d): want true, 1 (1)", resp.GetEnforced(), resp.GetReserveSites(), resp.GetConfiguredReserveSites())
	}
	if b := resp.GetBreach(); b.GetSite() != "b" || !slices.Equal(b.GetFailedNodes(), []string{"b1", "b2"}) {
		t.Errorf("breach %v: want site b (b1,b2)", b)
	}
}

// Enforced tells the operator whether admission refuses groups that
// break this reserve: only for the K the leader keeps, and never for 0.
func TestGetReserveEnforced(t *testing.T) {
	for _, c := range []struct {
		k, kept int
		want    bool
	}{
		{2, 2, true},
		{3, 2, false}, // another K, answered but not kept
		{0, 0, false}, // no reserve kept
	} {
		f := newFixture()
		r := &placement.Reserve{K: c.k, OK: true, Method: placement.MethodBound, Breach: &placement.Breach{Group: "stale"}}
		f.leader.reserve = leader.ReserveReport{Reserve: r, Kept: c.kept}
		resp, err := f.svc.GetReserve(context.Background(), &havenv1.GetReserveRequest{K: uint32(c.k)})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetEnforced() != c.want {
			t.Errorf("k %d with %d kept: enforced %v, want %v", c.k, c.kept, resp.GetEnforced(), c.want)
		}
		if resp.GetBreach() != nil || resp.GetMethod() != havenv1.ReserveMethod_RESERVE_METHOD_BOUND {
			t.Errorf("k %d holds: breach %v, method %v: want no breach, bound", c.k, resp.GetBreach(), resp.GetMethod())
		}
	}
}

func TestGetReserveK(t *testing.T) {
	f := newFixture()
	f.leader.reserve = leader.ReserveReport{Reserve: &placement.Reserve{K: leader.MaxReserve, OK: true}}
	if _, err := f.svc.GetReserve(context.Background(), &havenv1.GetReserveRequest{K: leader.MaxReserve}); err != nil {
		t.Errorf("k = %d, the limit: %v", leader.MaxReserve, err)
	}
	f = newFixture()
	_, err := f.svc.GetReserve(context.Background(), &havenv1.GetReserveRequest{K: leader.MaxReserve + 1})
	wantStatus(t, err, codes.InvalidArgument, "k: 17 is more than 16")
	if len(f.leader.calls) != 0 {
		t.Errorf("k over the limit reached the leader")
	}
}

func TestGetReserveLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.GetReserve(context.Background(), &havenv1.GetReserveRequest{})
		return err
	})
}
