package node

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/lease"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestRenewLease(t *testing.T) {
	for _, n := range members {
		f := newFixture(t, nil, false)
		resp, err := f.svc.RenewLease(context.Background(), &havenv1.RenewLeaseRequest{Node: n})
		if err != nil {
			t.Errorf("member %s refused a lease: %v", n, err)
			continue
		}
		if resp != f.leases.resp || len(f.leases.renewed) != 1 || f.leases.renewed[0] != n {
			t.Errorf("member %s: renewed %v, answered %v: want one renewal for it and the table's answer", n, f.leases.renewed, resp)
		}
	}
}

// A grant to a node the cluster does not know would be a lease on
// nothing.
func TestRenewLeaseStrangers(t *testing.T) {
	for _, n := range nonMembers {
		f := newFixture(t, nil, false)
		_, err := f.svc.RenewLease(context.Background(), &havenv1.RenewLeaseRequest{Node: n})
		wantStatus(t, err, codes.PermissionDenied, `lease renewal: node "`+n+`" is not a member`)
		if len(f.leases.renewed) != 0 {
			t.Errorf("stranger %s reached the lease table", n)
		}
	}
}

func TestRenewLeaseInvalid(t *testing.T) {
	for _, n := range []string{"", "N2", "n2.example"} {
		f := newFixture(t, nil, false)
		_, err := f.svc.RenewLease(context.Background(), &havenv1.RenewLeaseRequest{Node: n})
		wantStatus(t, err, codes.InvalidArgument, "node: ", "is not a valid node name")
		if len(f.leases.renewed) != 0 {
			t.Errorf("invalid name %q reached the lease table", n)
		}
	}
}

// The renewer retries on Unavailable and looks for the leader again: a
// node that cannot grant must say so with that code.
func TestRenewLeaseNotGranted(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{lease.ErrNotReady, codes.Unavailable, "not a leader ready to grant leases"},
		{lease.ErrUnverified, codes.Unavailable, "leadership could not be verified"},
		{consensus.ErrNotLeader, codes.Unavailable, "not the leader; the leader is n2 at 10.0.0.2:7443"},
		{context.Canceled, codes.Canceled, "context canceled"},
	} {
		f := newFixture(t, nil, false)
		f.leases.err = c.err
		_, err := f.svc.RenewLease(context.Background(), &havenv1.RenewLeaseRequest{Node: "n2"})
		wantStatus(t, err, c.code, c.msg)
	}
}
