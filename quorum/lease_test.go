package quorum

import (
	"strings"
	"testing"
	"time"
)

var leaseCfg = LeaseConfig{Lease: 2 * time.Second, Margin: 300 * time.Millisecond, FailoverAfter: 3 * time.Second}

// oneProfile gives every node the same lease.
var oneProfile = Profiles{SameSite: leaseCfg, CrossSite: leaseCfg}

func sameSite(string) bool { return false }

func TestLeaseConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		cfg  LeaseConfig
		want string
	}{
		{leaseCfg, ""},
		{LeaseConfig{Lease: 0, Margin: time.Second, FailoverAfter: time.Second}, "duration:"},
		// 1 % of 10 s is 100 ms, plus 50 ms scheduling: 120 ms is short.
		{LeaseConfig{Lease: 10 * time.Second, Margin: 120 * time.Millisecond, FailoverAfter: time.Minute}, "margin:"},
		{LeaseConfig{Lease: 2 * time.Second, Margin: 300 * time.Millisecond, FailoverAfter: 2 * time.Second}, "failover_after:"},
	} {
		err := tt.cfg.Validate()
		if (tt.want == "") != (err == nil) || err != nil && !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}

// Step 2: the fence is measured from the grant, plus lease and margin. A
// node's lease, measured from its send t0 <= tg, ends by tg+Lease, so the
// margin is the slack for drift between the two clocks.
func TestFencedFromGrantPlusLeaseAndMargin(t *testing.T) {
	office := time.Unix(1000, 0)
	g := NewGrants(oneProfile, office, sameSite)
	g.Ready()
	tg := office.Add(5 * time.Second)
	g.Grant("n1", tg)
	if got, want := g.FencedAt("n1"), tg.Add(2300*time.Millisecond); !got.Equal(want) {
		t.Fatalf("FencedAt = %v, want %v", got, want)
	}
	// An older grant recorded late never moves the fence earlier.
	g.Grant("n1", tg.Add(-time.Second))
	if got := g.FencedAt("n1"); !got.Equal(tg.Add(2300 * time.Millisecond)) {
		t.Fatalf("fence moved back to %v", got)
	}
	if got, want := g.FailoverAt("n1"), tg.Add(3*time.Second); !got.Equal(want) {
		t.Fatalf("FailoverAt = %v, want %v", got, want)
	}
}

// Step 3: a new leader answers nothing before its barrier, and fences no
// node, not even one it never heard from, before Lease+Margin in office:
// the previous leader may have granted that node a lease a moment before
// this one took office.
func TestNewLeaderWaitsFullLease(t *testing.T) {
	office := time.Unix(1000, 0)
	g := NewGrants(oneProfile, office, sameSite)
	if g.CanGrant() {
		t.Fatal("grants allowed before the barrier")
	}
	g.Ready()
	if !g.CanGrant() {
		t.Fatal("grants refused after the barrier")
	}
	if got, want := g.FencedAt("never-heard-of"), office.Add(2300*time.Millisecond); !got.Equal(want) {
		t.Fatalf("unknown node fenced at %v, want %v", got, want)
	}
}

// A leader that was paused could not take renewals: nobody is fenced for
// silence during the pause.
func TestStallRestartsSilence(t *testing.T) {
	office := time.Unix(1000, 0)
	g := NewGrants(oneProfile, office, sameSite)
	g.Ready()
	g.Grant("n1", office.Add(time.Second))
	resume := office.Add(10 * time.Second)
	g.Stalled(resume)
	if got := g.FailoverAt("n1"); !got.Equal(resume.Add(3 * time.Second)) {
		t.Fatalf("FailoverAt after stall = %v", got)
	}
	g.Stalled(office) // older stall: no effect
	if got := g.FailoverAt("n1"); !got.Equal(resume.Add(3 * time.Second)) {
		t.Fatalf("FailoverAt moved back to %v", got)
	}
}

// A group placed on a node that last renewed long ago (it has just
// restarted) gets a full FailoverAfter there before it is moved.
func TestGroupFailoverCountsFromAssignment(t *testing.T) {
	office := time.Unix(1000, 0)
	g := NewGrants(oneProfile, office, sameSite)
	g.Ready()
	g.Grant("n1", office.Add(time.Second))
	assigned := office.Add(20 * time.Second)
	if got, want := g.GroupFailoverAt("n1", assigned), assigned.Add(leaseCfg.FailoverAfter); !got.Equal(want) {
		t.Fatalf("GroupFailoverAt = %v, want %v (assignment plus failover_after)", got, want)
	}
	// A group assigned before the silence began moves with its node.
	if got, want := g.GroupFailoverAt("n1", office), g.FailoverAt("n1"); !got.Equal(want) {
		t.Fatalf("GroupFailoverAt = %v, want the node's %v", got, want)
	}
}

// A node in another site is granted the cross-site lease and fenced by
// it; a node in the leader's site by the same-site one.
func TestCrossSiteProfile(t *testing.T) {
	wan := LeaseConfig{Lease: 4 * time.Second, Margin: 500 * time.Millisecond, FailoverAfter: 12 * time.Second}
	office := time.Unix(1000, 0)
	g := NewGrants(Profiles{SameSite: leaseCfg, CrossSite: wan}, office, func(n string) bool { return n == "b1" })
	g.Ready()
	tg := office.Add(10 * time.Second)
	if p := g.Grant("b1", tg); p != wan {
		t.Fatalf("b1 granted under %+v, want the cross-site %+v", p, wan)
	}
	if p := g.Grant("a1", tg); p != leaseCfg {
		t.Fatalf("a1 granted under %+v, want the same-site %+v", p, leaseCfg)
	}
	for _, tc := range []struct {
		node                  string
		end, fenced, failover time.Duration
	}{
		{"a1", 2 * time.Second, 2300 * time.Millisecond, 3 * time.Second},
		{"b1", 4 * time.Second, 4500 * time.Millisecond, 12 * time.Second},
	} {
		if got, want := g.LeaseEnd(tc.node), tg.Add(tc.end); !got.Equal(want) {
			t.Errorf("%s: LeaseEnd = %v, want %v", tc.node, got, want)
		}
		if got, want := g.FencedAt(tc.node), tg.Add(tc.fenced); !got.Equal(want) {
			t.Errorf("%s: FencedAt = %v, want %v", tc.node, got, want)
		}
		if got, want := g.FailoverAt(tc.node), tg.Add(tc.failover); !got.Equal(want) {
			t.Errorf("%s: FailoverAt = %v, want %v", tc.node, got, want)
		}
	}
}

// Step 3 across profiles: the previous leader sat in another site and may
// have granted a node of this leader's site the longer cross-site lease
// just before this one took office. No node is fenced before the longest
// lease either profile gives has run out since taking office, even one
// this leader has already granted the short lease.
func TestNewLeaderWaitsLongestProfile(t *testing.T) {
	wan := LeaseConfig{Lease: 4 * time.Second, Margin: 500 * time.Millisecond, FailoverAfter: 4500 * time.Millisecond}
	office := time.Unix(1000, 0)
	g := NewGrants(Profiles{SameSite: leaseCfg, CrossSite: wan}, office, sameSite)
	g.Ready()
	g.Grant("a1", office.Add(10*time.Millisecond))
	for _, n := range []string{"a1", "never-heard-of"} {
		if got, want := g.FencedAt(n), office.Add(4500*time.Millisecond); got.Before(want) {
			t.Errorf("%s fenced at %v, before %v (office plus the cross-site lease and margin)", n, got, want)
		}
		if got, want := g.FailoverAt(n), office.Add(4500*time.Millisecond); got.Before(want) {
			t.Errorf("%s failed over at %v, before %v", n, got, want)
		}
	}
}
