package integration

import (
	"context"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/integration/lab"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var wanSteady = flag.Duration("wan.steady", time.Minute, "how long TestWANSteady watches the stretch cluster")

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

var wanTiming = flag.String("wan.timing", "tightened", "the timings TestWANSteady runs with: tightened (the tests') or default (an operator's)")

// TestWANSteady: groups in both sites of a stretch cluster run for
// -wan.steady (a minute in the suite) over the WAN without a false
// failover, a freeze or a change of leader. It prints the leases' figures
// by path and what the WAN's delay programs cost (make wan-steady: 10
// minutes with the default timings).
func TestWANSteady(t *testing.T) {
	var opts []option
	switch *wanTiming {
	case "tightened":
	case "default":
		opts = append(opts, withDefaultTimings())
	default:
		t.Fatalf("-wan.timing %q: want tightened or default", *wanTiming)
	}
	c := stretch(t, opts...)
	leader := c.dataLeader(120 * time.Second)
	names := groupNames("w", 8)
	c.createAndStart(leader, names)
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	c.runInBoth(before, "a", "b")
	witness := c.inSite("w")[0]
	cpu0, _ := metric(t, witness, "process_cpu_seconds_total")
	cost0 := c.readDelayCost(t)
	w := c.watchSteady(leader, names, before, *wanSteady)
	cost1 := c.readDelayCost(t)
	cpu1, _ := metric(t, witness, "process_cpu_seconds_total")
	rss, _ := metric(t, witness, "process_resident_memory_bytes")
	t.Logf("scenario WAN witness: %.1f%% of one core, %.0f MiB resident", 100*(cpu1-cpu0)/w.ran.Seconds(), rss/(1<<20))
	// With an operator's timings not a lease runs out, anywhere. The
	// tests' 1.5 s lease is too short for this WAN (a renewal across it
	// can leave under 500 ms, and CI once saw one run out): a node may
	// freeze for a moment, which the tick check above bounds below a
	// lease; the expiries are reported, not failed.
	for _, n := range c.nodes {
		v, ok := metric(t, n, "haven_lease_expiries_total")
		switch {
		case !ok:
			t.Errorf("%s: no haven_lease_expiries_total", n.name)
		case v != 0 && *wanTiming == "default":
			t.Errorf("%s: haven_lease_expiries_total = %v", n.name, v)
		case v != 0:
			t.Logf("%s: %v lease expiries with the tests' timings", n.name, v)
		}
	}
	c.leaseFigures(t, leader)
	delayFigures(t, cost0, cost1, w.ran)
	c.checkInvariants(names)
	t.Logf("scenario WAN steady (%s timings) %s: %d groups, false failovers %d, freezes %d, false deaths in gossip %d, leader changes 0 (%s, term %d, throughout)",
		*wanTiming, w.ran.Round(time.Second), len(names), w.moved, w.froze, w.deaths, w.leader, w.term)
}

// dataLeader waits until all running nodes agree on a leader that is not
// the witness (which hands leadership off once a data-site voter exists).
func (c *cluster) dataLeader(timeout time.Duration) *node {
	c.t.Helper()
	var leader *node
	waitFor(c.t, timeout, "a data-site node leading", func() error {
		if leader = c.leader(timeout); leader.cfg.Witness {
			return fmt.Errorf("the witness %s leads", leader.name)
		}
		return nil
	})
	return leader
}

// inSite returns the nodes of a site, in order.
func (c *cluster) inSite(site string) []*node {
	var out []*node
	for _, n := range c.nodes {
		if n.cfg.Site == site {
			out = append(out, n)
		}
	}
	return out
}

func hostsOf(nodes []*node) []*lab.Host {
	out := make([]*lab.Host, len(nodes))
	for i, n := range nodes {
		out[i] = n.host
	}
	return out
}

// ownersIn counts the groups that run in a site.
func (c *cluster) ownersIn(groups map[string]*havenv1.Group, site string) int {
	k := 0
	for _, g := range groups {
		if c.node(g.GetOwner()).cfg.Site == site {
			k++
		}
	}
	return k
}

// runInBoth fails the test unless groups run in both sites: each WAN
// scenario needs something to lose, and something to keep, on either side.
func (c *cluster) runInBoth(groups map[string]*havenv1.Group, a, b string) {
	c.t.Helper()
	if c.ownersIn(groups, a) == 0 || c.ownersIn(groups, b) == 0 {
		c.t.Fatalf("groups run in site %s: %d, site %s: %d; want both", a, c.ownersIn(groups, a), b, c.ownersIn(groups, b))
	}
}

// TestWANSiteLoss: every node of one data site is SIGKILLed at once; its
// groups run again in the other data site, each once, the other site's
// stay where they were, and the time it took is printed. In "leader's
// site" the leader dies with it: a new leader is elected (the witness may
// win the election) and settles in the surviving data site.
func TestWANSiteLoss(t *testing.T) {
	for _, tc := range []struct {
		name       string
		withLeader bool
	}{{"leader's site", true}, {"other site", false}} {
		t.Run(tc.name, func(t *testing.T) {
			c := stretch(t)
			leader := c.dataLeader(60 * time.Second)
			names := groupNames("s", 8)
			c.createAndStart(leader, names)
			before := c.allOnline(leader, names, 60*time.Second, anyOwner)
			dead, live := leader.cfg.Site, "a"
			if dead == "a" {
				live = "b"
			}
			if !tc.withLeader {
				dead, live = live, dead
			}
			c.runInBoth(before, dead, live)
			t0 := time.Now()
			for _, n := range c.inSite(dead) {
				n.kill()
			}
			leader = c.leader(60 * time.Second)
			elected := time.Since(t0)
			if leader.cfg.Site == dead {
				t.Fatalf("%s of the dead site leads", leader.name)
			}
			after := c.allOnline(leader, names, 60*time.Second, func(g *havenv1.Group) bool {
				return c.node(g.GetOwner()).cfg.Site == live
			})
			running := time.Since(t0)
			settled := c.dataLeader(60 * time.Second)
			if settled.cfg.Site != live {
				t.Fatalf("%s of site %s leads, want a node of site %s", settled.name, settled.cfg.Site, live)
			}
			t.Logf("site %s lost (the leader with it: %v): %s leads %s after the SIGKILLs, and %s once settled; its %d groups all run in site %s %s after the SIGKILLs",
				dead, tc.withLeader, leader.name, elected.Round(time.Millisecond), settled.name, c.ownersIn(before, dead), live, running.Round(time.Millisecond))
			for _, name := range names {
				b, a := before[name], after[name]
				if c.node(b.GetOwner()).cfg.Site == live && (a.GetOwner() != b.GetOwner() || a.GetEpoch() != b.GetEpoch()) {
					t.Errorf("%s of site %s moved: %s@%d -> %s@%d", name, live, b.GetOwner(), b.GetEpoch(), a.GetOwner(), a.GetEpoch())
				}
			}
			c.checkInvariants(names)
		})
	}
}

// TestWANPartitionWithWitness: sites a and b lose each other while both
// still reach the witness. Exactly one side keeps quorum (the one the
// witness follows) and runs every group; the other side cannot commit,
// and freezes its groups at its lease end, before they restart on the
// first side. When the partition heals, the frozen side's stale guests
// are killed, not thawed.
func TestWANPartitionWithWitness(t *testing.T) {
	c := stretch(t)
	leader := c.dataLeader(60 * time.Second)
	names := groupNames("p", 8)
	c.createAndStart(leader, names)
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	c.runInBoth(before, "a", "b")
	witness := c.inSite("w")[0]
	c.lab.Partition(hostsOf(c.inSite("a")), hostsOf(c.inSite("b")))
	cut := time.Now()

	var winner *node
	waitFor(t, 60*time.Second, "the witness following a data-site leader", func() error {
		st, err := witness.status()
		if err != nil {
			return err
		}
		if st.GetLeader() == "" || st.GetLeader() == witness.name {
			return errNotYet
		}
		winner = c.node(st.GetLeader())
		return nil
	})
	win, lose := winner.cfg.Site, "a"
	if win == "a" {
		lose = "b"
	}
	after := c.allOnline(winner, names, 60*time.Second, func(g *havenv1.Group) bool {
		return c.node(g.GetOwner()).cfg.Site == win
	})
	t.Logf("partition a|b: site %s keeps quorum (%s leads); all %d groups run there %s after the cut", win, winner.name, len(names), time.Since(cut).Round(time.Millisecond))
	// The other side has no quorum: a write through it is not acknowledged.
	loser := c.inSite(lose)[0]
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := loser.api().CreateGroup(wctx, &havenv1.CreateGroupRequest{Spec: vmGroup("p-lost")})
	cancel()
	if err == nil {
		t.Errorf("site %s, cut off from the leader, acknowledged a write", lose)
	}
	// Every group of the losing side stopped executing once its lease
	// surely ended (one renewal interval and a lease after the cut, and a
	// guest tick for a write in flight), and now runs at a new epoch.
	cfg := loser.cfg
	frozenFrom := cut.Add(cfg.Lease.Duration + cfg.Lease.Duration/4 + cfg.Sim.Tick)
	stale := map[string]bool{}
	for _, name := range names {
		b := before[name]
		if c.node(b.GetOwner()).cfg.Site != lose {
			continue
		}
		stale[b.GetOwner()] = true
		if after[name].GetEpoch() <= b.GetEpoch() {
			t.Errorf("%s: epoch %d -> %d", name, b.GetEpoch(), after[name].GetEpoch())
		}
		c.noTicksAfter(name, b.GetOwner(), b.GetEpoch(), frozenFrom)
	}

	c.lab.HealAll()
	healed := time.Now()
	for _, n := range c.inSite(lose) {
		waitFor(t, 60*time.Second, n.name+" following the leader again", func() error {
			st, err := n.status()
			if err != nil {
				return err
			}
			if st.GetLeader() == "" {
				return errNotYet
			}
			return nil
		})
		if stale[n.name] {
			waitFor(t, 30*time.Second, n.name+" killing its stale guests", func() error {
				if !logContains(n, "killing vm the node no longer owns") {
					return errNotYet
				}
				return nil
			})
		}
	}
	t.Logf("healed; the stale guests of site %s were killed %s later", lose, time.Since(healed).Round(time.Millisecond))
	for _, name := range names {
		if b := before[name]; c.node(b.GetOwner()).cfg.Site == lose {
			c.noTicksAfter(name, b.GetOwner(), b.GetEpoch(), frozenFrom)
		}
	}
	c.checkInvariants(names)
}

// noTicksAfter fails the test if node ran group at epoch after from.
func (c *cluster) noTicksAfter(group, node string, epoch uint64, from time.Time) {
	c.t.Helper()
	for _, r := range c.execRecords(group) {
		if r.Node == node && r.Epoch == epoch && r.Wall.After(from) {
			c.t.Errorf("%s ran on %s at epoch %d at %s, after its lease ended (%s)", group, node, epoch, r.Wall.Format(time.StampMilli), from.Format(time.StampMilli))
			return
		}
	}
}

// TestWANLoseWitnessThenNode: the witness dies, then, once gossip has
// said so, a node of site a (the leader, if it is there): the cluster
// keeps quorum throughout, acknowledges writes, and restarts the dead
// node's groups in site a, on the node left there.
func TestWANLoseWitnessThenNode(t *testing.T) {
	c := stretch(t)
	leader := c.dataLeader(60 * time.Second)
	names := groupNames("q", 8)
	c.createAndStart(leader, names)
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	c.inSite("w")[0].kill()
	waitFor(t, 60*time.Second, "the witness seen as failed", func() error {
		st, err := leader.status()
		if err != nil {
			return err
		}
		if st.GetAliveNodes() != 4 {
			return fmt.Errorf("%d nodes alive", st.GetAliveNodes())
		}
		return nil
	})
	victim, partner := c.inSite("a")[0], c.inSite("a")[1]
	if partner == leader {
		victim, partner = partner, victim
	}
	wasLeader := victim == leader
	t0 := time.Now()
	victim.kill()
	leader = c.leader(60 * time.Second)
	after := c.allOnline(leader, names, 60*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	t.Logf("witness lost, then %s of site a (the leader: %v): %s leads; all groups run %s after the second SIGKILL", victim.name, wasLeader, leader.name, time.Since(t0).Round(time.Millisecond))
	for _, name := range names {
		if before[name].GetOwner() == victim.name && after[name].GetOwner() != partner.name {
			t.Errorf("%s restarted on %s, want %s, the other node of site a", name, after[name].GetOwner(), partner.name)
		}
	}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup("q-after")}); err != nil {
		t.Errorf("a write after losing the witness and a node: %v", err)
	}
	c.checkInvariants(names)
}

// TestWANCrossSiteLease: with a longer failover time for nodes across the
// WAN (lease.cross_site), a node of the other site than the leader's, cut
// off for longer than the same-site failover time but shorter than the
// cross-site one, only pauses: its guests freeze at the lease end and thaw
// at the same epoch when it returns; nothing restarts.
func TestWANCrossSiteLease(t *testing.T) {
	const crossFailover = 12 * time.Second
	c := stretch(t, func(cfg *agent.Config) { cfg.Lease.CrossSite.FailoverAfter = crossFailover })
	leader := c.dataLeader(60 * time.Second)
	names := groupNames("x", 8)
	c.createAndStart(leader, names)
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	var victim *node
	for _, g := range before {
		if n := c.node(g.GetOwner()); n.cfg.Site != leader.cfg.Site {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("no group runs in the site other than the leader's (%s)", leader.cfg.Site)
	}
	same := victim.cfg.Lease.FailoverAfter
	// Past the same-site failover time by two leases, well short of the
	// cross-site one.
	outage := same + victim.cfg.Lease.Duration*2
	c.lab.Isolate(victim.host)
	cut := time.Now()
	time.Sleep(outage)
	c.lab.HealAll()
	healed := time.Now()
	after := c.allOnline(leader, names, 30*time.Second, anyOwner)
	for _, name := range names {
		if after[name].GetEpoch() != before[name].GetEpoch() {
			t.Errorf("%s restarted after a %s outage of %s (same-site failover after %s, cross-site %s): %s@%d -> %s@%d",
				name, outage, victim.name, same, crossFailover, before[name].GetOwner(), before[name].GetEpoch(), after[name].GetOwner(), after[name].GetEpoch())
		}
	}
	c.checkFrozeAndThawed(victim, before, cut, healed)
	c.checkInvariants(names)
}

// steady is what watchSteady saw.
type steady struct {
	ran          time.Duration
	moved, froze int
	// deaths counts gossip declaring a live node failed, as each agent
	// saw it (member-failed events).
	deaths int
	leader string
	term   uint64
}

// watchSteady watches a quiet cluster for d: the leader and its term must
// not change (the test stops at once if they do), and afterwards every
// group must be where it was, at the same epoch (no false failover), and
// must have ticked throughout (a gap of a lease or more in its execution
// log is a freeze). Each move and freeze is an error of the test, and
// counted.
func (c *cluster) watchSteady(leader *node, names []string, before map[string]*havenv1.Group, d time.Duration) steady {
	t := c.t
	t.Helper()
	st0, err := leader.status()
	if err != nil {
		t.Fatal(err)
	}
	// Every agent's own view of membership: a member-failed event while
	// every node runs is a false death.
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var deaths []string
	var watchers sync.WaitGroup
	for _, n := range c.nodes {
		stream, err := n.api().WatchEvents(wctx, &havenv1.WatchEventsRequest{Follow: true, Kinds: []string{"member-failed"}})
		if err != nil {
			t.Fatal(err)
		}
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			for {
				resp, err := stream.Recv()
				if err != nil {
					return
				}
				mu.Lock()
				deaths = append(deaths, fmt.Sprintf("%s saw %s fail at %s", n.name, resp.GetEvent().GetNode(), resp.GetEvent().GetTime().AsTime().Format(time.StampMilli)))
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	deadline := start.Add(d)
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
	w := steady{ran: time.Since(start), leader: st0.GetLeader(), term: st0.GetTerm()}
	cancel()
	watchers.Wait()
	for _, d := range deaths {
		w.deaths++
		t.Errorf("false death: %s", d)
	}
	after := c.allOnline(leader, names, 10*time.Second, anyOwner)
	lease := c.nodes[0].cfg.Lease.Duration
	for _, name := range names {
		b, a := before[name], after[name]
		if a.GetOwner() != b.GetOwner() || a.GetEpoch() != b.GetEpoch() {
			w.moved++
			t.Errorf("%s moved: %s@%d -> %s@%d", name, b.GetOwner(), b.GetEpoch(), a.GetOwner(), a.GetEpoch())
		}
		var last time.Time
		for _, r := range c.execRecords(name) {
			if r.Wall.Before(start) {
				continue
			}
			if !last.IsZero() && r.Wall.Sub(last) >= lease {
				w.froze++
				t.Errorf("%s froze on %s: no tick from %s to %s", name, r.Node, last.Format(time.RFC3339Nano), r.Wall.Format(time.RFC3339Nano))
			}
			last = r.Wall
		}
		if last.Before(deadline.Add(-lease)) {
			w.froze++
			t.Errorf("%s: last tick at %s, the run ended at %s", name, last.Format(time.RFC3339Nano), deadline.Format(time.RFC3339Nano))
		}
	}
	return w
}
