package lease

import (
	"context"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/logging"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// Step 1: a reply that took long to arrive does not lengthen the lease.
// The renewer's grant ends a lease after the moment it sent the request,
// so before the leader's fence (its own grant time plus lease and margin)
// however long the reply took; measured from the reply it would end after
// the fence here, since the reply takes longer than the margin.
func TestLeaseMeasuredFromSend(t *testing.T) {
	cfg := quorum.LeaseConfig{Lease: 400 * time.Millisecond, Margin: 20 * time.Millisecond, FailoverAfter: time.Second}
	office := time.Now()
	g := quorum.NewGrants(quorum.Profiles{SameSite: cfg, CrossSite: cfg}, office, func(string) bool { return false })
	g.Ready()
	var sent, replied time.Time
	ends := make(chan time.Time, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &Renewer{
		Lease: cfg.Lease,
		Call: func(context.Context) (*havenv1.RenewLeaseResponse, error) {
			sent = time.Now()
			time.Sleep(10 * time.Millisecond)
			g.Grant("n2", time.Now())
			// The reply is slow: longer than the margin.
			time.Sleep(60 * time.Millisecond)
			replied = time.Now()
			return &havenv1.RenewLeaseResponse{LeaseMillis: uint64(cfg.Lease.Milliseconds())}, nil
		},
		Granted: func(end time.Time, _ []*havenv1.GroupEpoch) {
			select {
			case ends <- end:
			default:
			}
			cancel()
		},
		Logger: logging.Discard(),
	}
	go r.Run(ctx)
	var end time.Time
	select {
	case end = <-ends:
	case <-time.After(5 * time.Second):
		t.Fatal("no grant")
	}
	if end.After(sent.Add(cfg.Lease)) {
		t.Errorf("lease ends %s after the send, more than the lease", end.Sub(sent))
	}
	if fence := g.LeaseEnd("n2"); !end.Before(fence) {
		t.Errorf("lease ends %s after the leader's fence", end.Sub(fence))
	}
	if !end.Before(replied.Add(cfg.Lease)) {
		t.Errorf("lease measured from the reply")
	}
}
