package quorum

import (
	"fmt"
	"time"
)

// The lease protocol that keeps a group from running on two nodes. Every
// time below is read from a monotonic clock by the caller and passed in.
//
//  1. A node sends a renewal at its own time t0 and, once granted, holds its
//     lease until t0+Lease: measured from the send, so network delay only
//     shortens it.
//  2. The leader grants only after a VerifyLeader that started after the
//     request arrived, and records the grant at its own time tg, taken after
//     the verification. It treats the node as fenced from tg+Lease+Margin.
//  3. A new leader answers no renewal until it has committed and applied a
//     barrier of its own term (its FSM may not yet show epochs committed
//     before it), and fences nobody until Lease+Margin after taking office
//     (the longest of the two profiles, see Profiles): its predecessor may
//     have granted a lease up to the moment it lost office.
//  4. The node's hypervisor freezes every group at its lease end, and
//     refuses a resume once local time has reached it (the driver's gate).
//  5. A frozen group thaws only on a grant that confirms the same epoch;
//     the leader leaves out of every grant a group whose move it has decided
//     but not yet committed and applied.
//  6. Every owner change bumps the group's epoch; drivers and shared disks
//     refuse an older one.
//
// Timing assumption: clocks may run at rates that differ by at most
// DriftBound, and the leader's scheduling delay between verifying and
// recording a grant is covered by the margin. Margin must therefore be at
// least DriftBound*(Lease+Margin) plus that delay; Validate checks the
// first part and asks for MinScheduling on top.

// DriftBound is the clock-rate difference the margin covers: 1 %, far above
// what NTP-disciplined or even free-running quartz clocks show (~0.01 %).
const DriftBound = 0.01

// MinScheduling is the least margin left over for scheduling delay.
const MinScheduling = 50 * time.Millisecond

type LeaseConfig struct {
	Lease  time.Duration
	Margin time.Duration
	// FailoverAfter is how long a node may go without a grant before the
	// leader moves its groups. It is at least Lease+Margin (before that
	// the node may still run them); longer lets a short network blip cost
	// a pause instead of a restart.
	FailoverAfter time.Duration
}

func (c LeaseConfig) Validate() error {
	switch {
	case c.Lease <= 0:
		return fmt.Errorf("duration: %s must be positive", c.Lease)
	case float64(c.Margin) < DriftBound*float64(c.Lease+c.Margin)+float64(MinScheduling):
		return fmt.Errorf("margin: %s must cover %.0f%% clock drift over lease+margin plus %s scheduling delay", c.Margin, DriftBound*100, MinScheduling)
	case c.FailoverAfter < c.Lease+c.Margin:
		return fmt.Errorf("failover_after: %s must be at least lease+margin (%s)", c.FailoverAfter, c.Lease+c.Margin)
	}
	return nil
}

// Profiles is the lease timing of a cluster: one profile for nodes in the
// leader's own site, one for nodes whose path to the leader crosses a WAN
// (any other site), as WSFC has SameSubnet and CrossSite thresholds. A
// longer cross-site lease rides out the WAN's bursts of loss with a pause
// at most; a longer cross-site failover time lets a short WAN outage cost
// a pause rather than a restart in another site.
type Profiles struct {
	SameSite, CrossSite LeaseConfig
}

// Validate checks both profiles.
func (p Profiles) Validate() error {
	if err := p.SameSite.Validate(); err != nil {
		return err
	}
	if err := p.CrossSite.Validate(); err != nil {
		return fmt.Errorf("cross_site.%w", err)
	}
	return nil
}

// longest is the longest any grant can keep a node running, margin
// included, under either profile.
func (p Profiles) longest() time.Duration {
	return max(p.SameSite.Lease+p.SameSite.Margin, p.CrossSite.Lease+p.CrossSite.Margin)
}

// Grants is one leader's record of the leases it granted, for one term of
// office. It is not safe for concurrent use.
type Grants struct {
	prof  Profiles
	cross func(node string) bool
	ready bool
	// last is each node's latest grant; end and fenced the latest end of
	// a lease granted to it, without and with the margin. They are kept
	// apart from last because a node's profile may differ between grants
	// (its site changed in the state): a fence never moves back.
	last, end, fenced map[string]time.Time
	// floor is the earliest a node's silence can have started: taking
	// office, or the end of the leader's own last stall.
	floor time.Time
}

// NewGrants starts a term of office at the time the node learned it leads.
// cross tells whether a node's path to this leader crosses a WAN (it is in
// another site, or its site is not known).
func NewGrants(p Profiles, office time.Time, cross func(node string) bool) *Grants {
	return &Grants{prof: p, cross: cross, floor: office,
		last: map[string]time.Time{}, end: map[string]time.Time{}, fenced: map[string]time.Time{}}
}

// Ready records that the leader's barrier is applied (step 3).
func (g *Grants) Ready() { g.ready = true }

// CanGrant reports whether renewals may be answered (step 3).
func (g *Grants) CanGrant() bool { return g.ready }

// Profile is the lease timing this leader applies to node.
func (g *Grants) Profile(node string) LeaseConfig {
	if g.cross(node) {
		return g.prof.CrossSite
	}
	return g.prof.SameSite
}

// Grant records a grant at tg, read after the VerifyLeader that covered
// the request (step 2), and returns the profile it was granted under: the
// grant must carry that profile's lease.
func (g *Grants) Grant(node string, tg time.Time) LeaseConfig {
	p := g.Profile(node)
	later := func(m map[string]time.Time, t time.Time) {
		if t.After(m[node]) {
			m[node] = t
		}
	}
	later(g.last, tg)
	later(g.end, tg.Add(p.Lease))
	later(g.fenced, tg.Add(p.Lease+p.Margin))
	return p
}

// since is the start of the node's silence as far as this leader can tell.
func (g *Grants) since(node string) time.Time {
	if t := g.last[node]; t.After(g.floor) {
		return t
	}
	return g.floor
}

// SilentSince is when the node's silence started as far as this leader
// can tell: its last grant, or the leader taking office (or the end of its
// own last stall) if that was later.
func (g *Grants) SilentSince(node string) time.Time { return g.since(node) }

// LastGrant is node's latest grant this term, zero if none.
func (g *Grants) LastGrant(node string) time.Time { return g.last[node] }

// LeaseEnd is the latest a lease this leader granted to node can end:
// before it, the node may be running its groups.
func (g *Grants) LeaseEnd(node string) time.Time { return g.end[node] }

// FencedAt is when the node surely holds no lease from this leader or any
// earlier one (steps 2 and 3). An earlier leader may have granted it under
// the other profile (it sat in another site), so the floor is followed by
// the longest lease either profile gives.
func (g *Grants) FencedAt(node string) time.Time {
	f := g.floor.Add(g.prof.longest())
	if t := g.fenced[node]; t.After(f) {
		return t
	}
	return f
}

// FailoverAt is when the leader may move the node's groups: fenced, and
// silent for its profile's FailoverAfter.
func (g *Grants) FailoverAt(node string) time.Time {
	f := g.since(node).Add(g.Profile(node).FailoverAfter)
	if fe := g.FencedAt(node); fe.After(f) {
		return fe
	}
	return f
}

// Stalled tells the table the leader itself could not act until to (its
// process was paused, or starved): nodes could not renew with it meanwhile,
// so every node's silence restarts at to. This only delays fencing, which
// is always safe.
func (g *Grants) Stalled(to time.Time) {
	if to.After(g.floor) {
		g.floor = to
	}
}

// GroupFailoverAt is when the leader may move a group assigned to node at
// assigned: FailoverAt, but never before the group has had FailoverAfter on
// its node. A node's silence counts from its last grant, and a node that
// has just (re)started has not renewed yet; a group placed on it then has
// not been given the time to start that a failover assumes it had.
func (g *Grants) GroupFailoverAt(node string, assigned time.Time) time.Time {
	f := g.FailoverAt(node)
	if a := assigned.Add(g.Profile(node).FailoverAfter); a.After(f) {
		return a
	}
	return f
}
