package integration

import (
	"flag"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/integration/lab"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var wanSteady = flag.Duration("wan.steady", 2*time.Minute, "how long TestWANSteady watches the stretch cluster")

// stretch is the stretch cluster: sites a and b of two nodes each
// and a witness in site w, with 30 ± 10 ms and 2 % loss each way between
// every two sites and nothing added inside a site.
func stretch(t *testing.T, opts ...option) *cluster {
	t.Helper()
	c := newLabCluster(t, []string{"a", "a", "b", "b", "w"}, opts...)
	for i := 0; i < 5; i++ {
		n := c.add(5)
		if i == 4 {
			n.reconfigure(func(cfg *agent.Config) { cfg.Witness = true })
		}
	}
	wan := lab.WAN{Delay: 30 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.02}
	a, b, w := c.hosts[0].Site(), c.hosts[2].Site(), c.hosts[4].Site()
	c.lab.SetWAN(a, b, wan)
	c.lab.SetWAN(a, w, wan)
	c.lab.SetWAN(b, w, wan)
	for _, n := range c.nodes {
		n.start()
	}
	return c
}

// TestWANSteady: groups in both sites of a stretch cluster run for
// -wan.steady (2 minutes) over the WAN without a false failover, a freeze
// or a change of leader.
func TestWANSteady(t *testing.T) {
	c := stretch(t)
	var leader *node
	waitFor(t, 60*time.Second, "a data-site node leading", func() error {
		if leader = c.leader(30 * time.Second); leader.cfg.Witness {
			return errNotYet
		}
		return nil
	})
	names := groupNames("w", 8)
	c.createAndStart(leader, names)
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	sites := map[string]bool{}
	for _, g := range before {
		sites[c.node(g.GetOwner()).cfg.Site] = true
	}
	if !sites["a"] || !sites["b"] {
		t.Fatalf("groups run in sites %v, want both a and b", sites)
	}
	st0, err := leader.status()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	deadline := start.Add(*wanSteady)
	for time.Now().Before(deadline) {
		st, err := leader.status()
		if err != nil {
			t.Fatalf("after %s: %v", time.Since(start).Round(time.Second), err)
		}
		if st.GetTerm() != st0.GetTerm() || st.GetLeader() != st0.GetLeader() {
			t.Fatalf("after %s: leader %s term %d, was %s term %d", time.Since(start).Round(time.Second), st.GetLeader(), st.GetTerm(), st0.GetLeader(), st0.GetTerm())
		}
		time.Sleep(time.Second)
	}
	after := c.allOnline(leader, names, 10*time.Second, anyOwner)
	// No false failover: every group where it was, at the same epoch. No
	// freeze: every guest ticked throughout (a gap of a lease or more in
	// its execution log is a freeze).
	lease := c.nodes[0].cfg.Lease.Duration
	for _, name := range names {
		b, a := before[name], after[name]
		if a.GetOwner() != b.GetOwner() || a.GetEpoch() != b.GetEpoch() {
			t.Errorf("%s moved: %s@%d -> %s@%d", name, b.GetOwner(), b.GetEpoch(), a.GetOwner(), a.GetEpoch())
		}
		var last time.Time
		for _, r := range c.execRecords(name) {
			if r.Wall.Before(start) {
				continue
			}
			if !last.IsZero() && r.Wall.Sub(last) >= lease {
				t.Errorf("%s froze on %s: no tick from %s to %s", name, r.Node, last.Format(time.RFC3339Nano), r.Wall.Format(time.RFC3339Nano))
			}
			last = r.Wall
		}
		if last.Before(deadline.Add(-lease)) {
			t.Errorf("%s: last tick at %s, the run ended at %s", name, last.Format(time.RFC3339Nano), deadline.Format(time.RFC3339Nano))
		}
	}
	c.checkInvariants(names)
	t.Logf("steady %s over the WAN: term %d, leader %s throughout", *wanSteady, st0.GetTerm(), st0.GetLeader())
}

// TestWANSiteLoss: every node of site b is SIGKILLed at once (the leader
// among them, if it was there); b's groups run again in site a, each
// once, a's stay where they were, and the time it took is printed.
func TestWANSiteLoss(t *testing.T) {
	c := stretch(t)
	leader := c.leader(60 * time.Second)
	names := groupNames("s", 8)
	c.createAndStart(leader, names)
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	inB := 0
	for _, g := range before {
		if c.node(g.GetOwner()).cfg.Site == "b" {
			inB++
		}
	}
	if inB == 0 {
		t.Fatal("no group runs in site b")
	}
	leaderInB := leader.cfg.Site == "b"
	t0 := time.Now()
	for _, n := range c.nodes {
		if n.cfg.Site == "b" {
			n.kill()
		}
	}
	leader = c.leader(60 * time.Second)
	if leader.cfg.Site == "b" {
		t.Fatalf("%s of the dead site leads", leader.name)
	}
	after := c.allOnline(leader, names, 60*time.Second, func(g *havenv1.Group) bool {
		return c.node(g.GetOwner()).cfg.Site == "a"
	})
	t.Logf("site b lost (the leader with it: %v): its %d groups all run in site a %s after the SIGKILLs; %s leads", leaderInB, inB, time.Since(t0).Round(time.Millisecond), leader.name)
	for _, name := range names {
		b, a := before[name], after[name]
		if c.node(b.GetOwner()).cfg.Site == "a" && (a.GetOwner() != b.GetOwner() || a.GetEpoch() != b.GetEpoch()) {
			t.Errorf("%s of site a moved: %s@%d -> %s@%d", name, b.GetOwner(), b.GetEpoch(), a.GetOwner(), a.GetEpoch())
		}
	}
	c.checkInvariants(names)
}
