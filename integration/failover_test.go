package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/sim"
	"github.com/haven-ha/haven/internal/rpcclient"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// groupStates returns every group as the given node sees it, all pages.
func groupStates(n *node) (map[string]*havenv1.Group, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := rpcclient.AllGroups(ctx, n.api(), &havenv1.ListGroupsRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]*havenv1.Group{}
	for _, g := range resp.GetGroups() {
		out[g.GetSpec().GetName()] = g
	}
	return out, nil
}

// allOnline waits until every listed group is online, on a node for which
// ok returns true.
func (c *cluster) allOnline(via *node, names []string, timeout time.Duration, ok func(*havenv1.Group) bool) map[string]*havenv1.Group {
	c.t.Helper()
	return c.allOnlineEvery(via, names, timeout, 50*time.Millisecond, ok)
}

// allOnlineEvery is allOnline polling every every: a list of 10,000
// groups every 50 ms is load on the node that answers.
func (c *cluster) allOnlineEvery(via *node, names []string, timeout, every time.Duration, ok func(*havenv1.Group) bool) map[string]*havenv1.Group {
	c.t.Helper()
	var groups map[string]*havenv1.Group
	waitEvery(c.t, timeout, every, "groups online", func() error {
		var err error
		groups, err = groupStates(via)
		if err != nil {
			return err
		}
		for _, n := range names {
			g := groups[n]
			if g == nil || g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || !ok(g) {
				return fmt.Errorf("group %s: %v owner %q epoch %d (%s)", n, g.GetState(), g.GetOwner(), g.GetEpoch(), g.GetStateReason())
			}
		}
		return nil
	})
	return groups
}

// runGroups starts n nodes, waits for their leader, and creates and starts
// count groups named prefix0.., returning them once all are online.
func (c *cluster) runGroups(n int, prefix string, count int) (*node, []string, map[string]*havenv1.Group) {
	c.t.Helper()
	c.startN(n)
	leader := c.leader(30 * time.Second)
	names := groupNames(prefix, count)
	c.createAndStart(leader, names)
	return leader, names, c.allOnline(leader, names, 30*time.Second, anyOwner)
}

func (c *cluster) createAndStart(via *node, names []string) {
	c.t.Helper()
	for _, name := range names {
		if _, err := via.api().CreateGroup(ctx(c.t), &havenv1.CreateGroupRequest{Spec: vmGroup(name)}); err != nil {
			c.t.Fatalf("create %s: %v", name, err)
		}
		if _, err := via.api().StartGroup(ctx(c.t), &havenv1.StartGroupRequest{Name: name}); err != nil {
			c.t.Fatalf("start %s: %v", name, err)
		}
	}
}

// TestSIGKILLOwnerFailsOver: every group of a SIGKILLed owner runs again
// elsewhere, at a new epoch, exactly once.
func TestSIGKILLOwnerFailsOver(t *testing.T) {
	c := newCluster(t)
	leader, names, before := c.runGroups(3, "g", 9)
	// Kill a follower that owns groups.
	victim := c.ownerOfSome(before, leader)
	victim.kill()
	after := c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	for _, name := range names {
		b, a := before[name], after[name]
		if b.GetOwner() == victim.name && a.GetEpoch() != b.GetEpoch()+1 {
			t.Errorf("group %s moved from %s at epoch %d to %s at epoch %d: want exactly one new epoch", name, b.GetOwner(), b.GetEpoch(), a.GetOwner(), a.GetEpoch())
		}
		if b.GetOwner() != victim.name && a.GetEpoch() != b.GetEpoch() {
			t.Errorf("group %s on a surviving node changed epoch %d -> %d", name, b.GetEpoch(), a.GetEpoch())
		}
	}
	c.checkInvariants(names)
}

// execRecords reads the execution log of a group's VM "vm".
func (c *cluster) execRecords(group string) []sim.Record {
	recs, err := sim.ReadExecLog(sim.ExecLogPath(filepath.Join(c.dir, "shared"), driver.VMID{Group: group, Resource: "vm"}))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		c.t.Fatal(err)
	}
	return recs
}

// execRunning reports whether node ran the group at epoch after since.
func (c *cluster) execRunning(node, group string, epoch uint64, since time.Time) error {
	for _, r := range c.execRecords(group) {
		if r.Node == node && r.Epoch == epoch && r.Wall.After(since) {
			return nil
		}
	}
	recs := c.execRecords(group)
	last := "none"
	if len(recs) > 0 {
		last = fmt.Sprintf("%+v", recs[len(recs)-1])
	}
	return fmt.Errorf("no tick of %s by %s at epoch %d since %s (%d records, last %s)", group, node, epoch, since.Format(time.StampMilli), len(recs), last)
}

// checkFrozeAndThawed checks, from n's exec logs, that each group n owned
// stopped executing during the outage (from the end of its lease on) and
// executed again after it at the same epoch, its counter going on.
func (c *cluster) checkFrozeAndThawed(n *node, groups map[string]*havenv1.Group, cut, healed time.Time) {
	c.t.Helper()
	// The lease surely ended one renewal interval plus one lease after
	// the cut; allow one guest tick for a write in flight.
	frozenFrom := cut.Add(n.cfg.Lease.Duration + n.cfg.Lease.Duration/4 + n.cfg.Sim.Tick)
	for name, g := range groups {
		if g.GetOwner() == n.name {
			waitFor(c.t, 30*time.Second, name+" thawed on "+n.name, func() error {
				return c.execRunning(n.name, name, g.GetEpoch(), healed)
			})
		}
	}
	for name, g := range groups {
		if g.GetOwner() != n.name {
			continue
		}
		var lastBefore uint64
		thawed := false
		for _, r := range c.execRecords(name) {
			if r.Node != n.name || r.Epoch != g.GetEpoch() {
				continue
			}
			switch {
			case r.Wall.Before(cut):
				lastBefore = r.Counter
			case r.Wall.After(frozenFrom) && r.Wall.Before(healed):
				c.t.Errorf("%s executed on %s at %s, after its lease ended (%s) and before the network healed (%s)",
					name, n.name, r.Wall.Format(time.StampMilli), frozenFrom.Format(time.StampMilli), healed.Format(time.StampMilli))
			case r.Wall.After(healed):
				thawed = true
				if r.Counter <= lastBefore {
					c.t.Errorf("%s on %s: counter %d after the thaw, %d before", name, n.name, r.Counter, lastBefore)
				}
			}
		}
		if !thawed {
			c.t.Errorf("%s never executed on %s after the network healed", name, n.name)
		}
	}
}

// TestLeaderKilledDuringFailover: the leader dies right after it commits
// a dead node's failover, while the new owners start the groups and
// report; the next leader finishes the job, and no group runs twice or
// moves twice for one failure. The failover of one node is one commit,
// so it is never seen half done.
func TestLeaderKilledDuringFailover(t *testing.T) {
	c := newCluster(t)
	c.startN(5)
	leader := c.leader(30 * time.Second)
	names := groupNames("m", 60)
	c.createAndStart(leader, names)
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	victim := c.ownerOfSome(before, leader)
	var theirs []string
	for _, n := range names {
		if before[n].GetOwner() == victim.name {
			theirs = append(theirs, n)
		}
	}
	victim.kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		gs, err := groupStates(leader)
		if err == nil {
			moved := 0
			for _, n := range theirs {
				if gs[n].GetEpoch() > before[n].GetEpoch() {
					moved++
				}
			}
			if moved > 0 {
				leader.kill()
				if moved != len(theirs) {
					t.Errorf("the failover was seen half committed: %d of %d groups moved", moved, len(theirs))
				}
				t.Logf("killed leader %s after its failover of %d groups", leader.name, len(theirs))
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no failover started")
		}
		time.Sleep(2 * time.Millisecond)
	}
	next := c.leader(30 * time.Second)
	after := c.allOnline(next, names, 60*time.Second, func(g *havenv1.Group) bool {
		return g.GetOwner() != victim.name && g.GetOwner() != leader.name
	})
	for _, n := range theirs {
		b, a := before[n], after[n]
		// One failover for the victim's death; a group that landed on the
		// old leader moved once more when that died.
		if a.GetEpoch() != b.GetEpoch()+1 && a.GetEpoch() != b.GetEpoch()+2 {
			t.Errorf("%s: epoch %d -> %d", n, b.GetEpoch(), a.GetEpoch())
		}
	}
	c.checkInvariants(names)
}

// TestFailbackToPreferredOwner: a group that failed over returns to its
// preferred owner once that node has been back for failback_after, by a
// live move: the guest goes on, never running on both.
func TestFailbackToPreferredOwner(t *testing.T) {
	c := newCluster(t, withGuestTick(guestTick))
	c.startN(3)
	leader := c.leader(30 * time.Second)
	home := c.follower(leader)
	spec := vmGroup("fb")
	spec.PreferredOwners = []string{home.name}
	spec.Failback = &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_IMMEDIATE}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "fb"}); err != nil {
		t.Fatal(err)
	}
	g1 := c.allOnline(leader, []string{"fb"}, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() == home.name })["fb"]
	home.kill()
	g2 := c.allOnline(leader, []string{"fb"}, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != home.name })["fb"]
	if g2.GetEpoch() != g1.GetEpoch()+1 {
		t.Fatalf("failover: epoch %d -> %d", g1.GetEpoch(), g2.GetEpoch())
	}
	home.start()
	g3 := c.allOnline(leader, []string{"fb"}, 60*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() == home.name })["fb"]
	if g3.GetEpoch() != g2.GetEpoch()+1 || g3.GetMoveTo() != "" {
		t.Fatalf("failback: %s@%d move_to %q (%s), want %s@%d", g3.GetOwner(), g3.GetEpoch(), g3.GetMoveTo(), g3.GetStateReason(), home.name, g2.GetEpoch()+1)
	}
	waitFor(t, 10*time.Second, "fb executing on "+home.name, func() error {
		return c.execRunning(home.name, "fb", g3.GetEpoch(), time.Time{})
	})
	c.checkMovedLive(leader, map[string]*havenv1.Group{"fb": g2}, map[string]*havenv1.Group{"fb": g3}, g2.GetOwner(), "failback")
	// The checker proves the interim owner stopped before the preferred
	// one started: no overlap of the two runs.
	c.checkInvariants([]string{"fb"})
}

// TestDrainNode: a drained node's groups move to other nodes live, each
// exactly once, the guests never stopping longer than the downtime target;
// it receives no new group while draining, and takes groups again after
// resume.
func TestDrainNode(t *testing.T) {
	c := newCluster(t, withGuestTick(guestTick))
	leader, names, before := c.runGroups(3, "d", 6)
	victim := c.ownerOfSome(before, leader)
	resp, err := c.nodes[0].api().DrainNode(ctx(t), &havenv1.DrainNodeRequest{Node: victim.name})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetNode().GetDraining() || len(resp.GetGroups()) == 0 {
		t.Fatalf("drain answer: %v", resp)
	}
	after := c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	c.checkMovedLive(leader, before, after, victim.name, "drain")
	for _, name := range names {
		b, a := before[name], after[name]
		if b.GetOwner() == victim.name && a.GetEpoch() != b.GetEpoch()+1 {
			t.Errorf("%s moved from %s: epoch %d -> %d, want one move", name, victim.name, b.GetEpoch(), a.GetEpoch())
		}
		if b.GetOwner() != victim.name && a.GetEpoch() != b.GetEpoch() {
			t.Errorf("%s was not on the drained node but moved: epoch %d -> %d", name, b.GetEpoch(), a.GetEpoch())
		}
	}
	// Nothing new lands on a draining node, even when asked for it.
	extra := groupNames("x", 3)
	c.createAndStart(leader, extra)
	for name, g := range c.allOnline(leader, extra, 30*time.Second, anyOwner) {
		if g.GetOwner() == victim.name {
			t.Errorf("%s placed on draining %s", name, victim.name)
		}
	}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup("pinned")}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "pinned", Node: victim.name}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("start on a draining node: %v, want ResourceExhausted", err)
	}
	if _, err := leader.api().ResumeNode(ctx(t), &havenv1.ResumeNodeRequest{Node: victim.name}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "pinned", Node: victim.name}); err != nil {
		t.Fatalf("start on a resumed node: %v", err)
	}
	c.allOnline(leader, []string{"pinned"}, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() == victim.name })
	c.checkInvariants(append(append(names, extra...), "pinned"))
}

// follower is the first node that is not the leader.
func (c *cluster) follower(leader *node) *node {
	c.t.Helper()
	for _, n := range c.nodes {
		if n != leader {
			return n
		}
	}
	c.t.Fatal("no follower")
	return nil
}

// TestStartOnRestartedNodeStays: a group started on a node that has just
// restarted is not failed over before the node had failover_after to
// renew its lease. Its silence before the restart is not the group's.
func TestStartOnRestartedNodeStays(t *testing.T) {
	c := newCluster(t)
	c.startN(3)
	leader := c.leader(30 * time.Second)
	victim := c.follower(leader)
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup("web")}); err != nil {
		t.Fatal(err)
	}
	victim.kill()
	// Observation window: the victim's last grant is now older than
	// failover_after, as after any restart that took a while.
	time.Sleep(victim.cfg.Lease.FailoverAfter + time.Second)
	victim.start()
	var started *havenv1.Group
	waitFor(t, 30*time.Second, "start on the restarted node accepted", func() error {
		resp, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "web", Node: victim.name})
		if err != nil {
			return err
		}
		started = resp.GetGroup()
		return nil
	})
	// Observation window: twice failover_after, in which the group must
	// stay where it was started, at its epoch, and come online.
	deadline := time.Now().Add(2 * victim.cfg.Lease.FailoverAfter)
	online := false
	for time.Now().Before(deadline) {
		gs, err := groupStates(leader)
		if err != nil {
			t.Fatal(err)
		}
		g := gs["web"]
		if g.GetOwner() != victim.name || g.GetEpoch() != started.GetEpoch() {
			t.Fatalf("group started on %s at epoch %d moved to %q at epoch %d (%s)", victim.name, started.GetEpoch(), g.GetOwner(), g.GetEpoch(), g.GetStateReason())
		}
		online = online || g.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE
		time.Sleep(100 * time.Millisecond)
	}
	if !online {
		t.Fatalf("group never came online on %s", victim.name)
	}
	c.checkInvariants([]string{"web"})
}
