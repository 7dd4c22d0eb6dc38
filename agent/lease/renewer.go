package lease

import (
	"context"
	"log/slog"
	"time"

	"github.com/haven-ha/haven/agent/metrics"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Renewer is the node's half: it renews every quarter lease, measured from
// the send, and hands each grant to Granted.
type Renewer struct {
	// Lease is the configured lease length; renewals go out every quarter
	// of it, or of the lease last granted when that is shorter (the
	// leader's profile for this node's path).
	Lease time.Duration
	// Call sends one renewal to the leader, bounded by ctx.
	Call func(ctx context.Context) (*havenv1.RenewLeaseResponse, error)
	// Granted receives each grant: its end and the groups it confirms.
	Granted func(end time.Time, groups []*havenv1.GroupEpoch)
	// Now asks for a renewal at once (a group was just assigned here and
	// waits for a grant that confirms its epoch).
	Now    <-chan struct{}
	Logger *slog.Logger
	// Metrics records each grant's round trip and the lease left; nil
	// records nothing.
	Metrics *metrics.Metrics
}

// minRenewGap is the least time between the starts of two renewals asked
// for at once.
const minRenewGap = 10 * time.Millisecond

// Run renews until ctx ends.
func (r *Renewer) Run(ctx context.Context) {
	interval := r.Lease / 4
	var end time.Time // of the lease in force
	for {
		t0 := time.Now()
		cctx, cancel := context.WithTimeout(ctx, interval)
		resp, err := r.Call(cctx)
		cancel()
		if err == nil {
			now := time.Now()
			r.Metrics.Renewed(now.Sub(t0), end.Sub(now), !end.IsZero())
			end = End(t0, resp)
			r.Granted(end, resp.GetGroups())
			if g := time.Duration(resp.GetLeaseMillis()) * time.Millisecond; g > 0 {
				interval = min(r.Lease, g) / 4
			}
		} else if ctx.Err() == nil {
			r.Logger.Debug("lease renewal failed", "error", err)
		}
		next := t0.Add(interval)
		if err != nil {
			// Retry sooner: every attempt that succeeds before the lease
			// ends spares the guests a pause.
			next = t0.Add(interval / 4)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		case <-r.Now:
			// At once, but at most one extra renewal per guest tick: a
			// move's target waits on this grant with its guest stopped.
			time.Sleep(min(time.Until(next), time.Until(t0.Add(minRenewGap))))
		}
	}
}

// End is when a grant ends: measured from sent, the moment before the
// request left (step 1). The leader fences the node from its own grant
// time, which is after sent, plus the lease and a margin; counting from the
// reply instead would let a slow reply stretch the lease past the fence.
func End(sent time.Time, resp *havenv1.RenewLeaseResponse) time.Time {
	return sent.Add(time.Duration(resp.GetLeaseMillis()) * time.Millisecond)
}
