package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Planned moves: drain, drain on shutdown, failback and the automatic
// balancer move running groups live; the guest sees a switchover, not a
// reboot.

// guestTick is the sim guest's tick in these tests: the guest-seen gap is
// measured between ticks, so it must be small beside the downtime target.
const guestTick = 10 * time.Millisecond

func withGuestTick(d time.Duration) option { return func(c *agent.Config) { c.Sim.Tick = d } }

// operations lists every move the cluster recorded.
func (c *cluster) operations(via *node) []*havenv1.Operation {
	c.t.Helper()
	resp, err := via.api().ListOperations(ctx(c.t), &havenv1.ListOperationsRequest{Consistent: true})
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.GetOperations()
}

// checkMovedLive checks that every group of before that ran on from now
// runs elsewhere after exactly one completed live move of cause, and that
// its guest went on from where it stopped within the move's downtime
// target: the gap between its last tick on from and its first on the
// target, which can exceed the pause by up to a tick on either side.
func (c *cluster) checkMovedLive(via *node, before, after map[string]*havenv1.Group, from, cause string) {
	c.t.Helper()
	byGroup := map[string][]*havenv1.Operation{}
	for _, op := range c.operations(via) {
		if op.GetCause() == cause {
			byGroup[op.GetGroup()] = append(byGroup[op.GetGroup()], op)
		}
	}
	moved := 0
	for name, b := range before {
		if b.GetOwner() != from {
			continue
		}
		moved++
		a := after[name]
		ops := byGroup[name]
		if len(ops) != 1 {
			c.t.Errorf("%s: %d %s moves, want 1: %v", name, len(ops), cause, ops)
			continue
		}
		op := ops[0]
		if op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED || op.GetKind() != havenv1.MoveKind_MOVE_KIND_LIVE ||
			op.GetSource() != from || op.GetTarget() != a.GetOwner() || a.GetEpoch() != b.GetEpoch()+1 {
			c.t.Errorf("%s: move %v; group before %s@%d, after %s@%d", name, op, b.GetOwner(), b.GetEpoch(), a.GetOwner(), a.GetEpoch())
			continue
		}
		gap := c.guestGap(name, from, a.GetOwner(), b.GetEpoch(), a.GetEpoch())
		target := 300 * time.Millisecond
		if d := op.GetOptions().GetDowntimeTarget(); d != nil {
			target = d.AsDuration()
		}
		if limit := target + 2*guestTick; gap > limit {
			c.t.Errorf("%s: the guest stopped %s across its move, over %s (the downtime target and a tick each side)", name, gap, limit)
		}
		c.t.Logf("%s: %s move %s -> %s, guest gap %s", name, cause, from, a.GetOwner(), gap)
	}
	if moved == 0 {
		c.t.Fatalf("no group ran on %s", from)
	}
}

// TestDrainOnShutdown: an agent with drain_on_shutdown told to stop moves
// its groups off live before it exits, and ends its own drain when it
// starts again.
func TestDrainOnShutdown(t *testing.T) {
	c := newCluster(t, withGuestTick(guestTick), func(cfg *agent.Config) { cfg.DrainOnShutdown, cfg.DrainTimeout = true, 15*time.Second })
	leader, names, before := c.runGroups(3, "ds", 6)
	victim := c.ownerOfSome(before, leader)
	victim.stop()
	// Right after the exit, before any failover could have happened: the
	// groups already run elsewhere.
	after, err := groupStates(leader)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if g := after[name]; g.GetOwner() == victim.name || g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE && g.GetState() != havenv1.GroupState_GROUP_STATE_STARTING {
			t.Errorf("%s when %s had exited: %s on %s", name, victim.name, g.GetState(), g.GetOwner())
		}
	}
	after = c.allOnline(leader, names, 30*time.Second, anyOwner)
	c.checkMovedLive(leader, before, after, victim.name, "drain")
	victim.start()
	waitFor(t, 30*time.Second, victim.name+" back and no longer draining", func() error {
		resp, err := leader.api().ListNodes(ctx(t), &havenv1.ListNodesRequest{})
		if err != nil {
			return err
		}
		for _, ni := range resp.GetNodes() {
			if n := ni.GetNode(); n.GetName() == victim.name && (n.GetDraining() || n.GetStatus() != havenv1.NodeStatus_NODE_STATUS_ALIVE) {
				return fmt.Errorf("%s: %s, draining %v", n.GetName(), n.GetStatus(), n.GetDraining())
			}
		}
		return nil
	})
	c.checkInvariants(names)
}

// TestBalancerMovesLiveToNewNode: in automatic mode, an empty node that
// joins a loaded cluster receives groups by live moves until the imbalance
// is under the threshold; no group moves twice within the hold-off.
func TestBalancerMovesLiveToNewNode(t *testing.T) {
	c := newCluster(t, withGuestTick(guestTick), withCapacity(4000, 8<<30), func(cfg *agent.Config) {
		cfg.Placement.Balancer = agent.BalancerAutomatic
		cfg.Placement.BalancerInterval = time.Second
	})
	leader, names, before := c.runGroups(3, "bl", 9)
	n4 := c.add(3)
	n4.start()
	c.waitAlive(leader, n4.name)
	var last *havenv1.BalanceResponse
	waitFor(t, 90*time.Second, "the balancer done", func() error {
		resp, err := leader.api().Balance(ctx(t), &havenv1.BalanceRequest{DryRun: true})
		if err != nil {
			return err
		}
		last = resp
		for _, op := range c.operations(leader) {
			if op.GetPhase() != havenv1.OperationPhase_OPERATION_PHASE_FINISHED {
				return fmt.Errorf("move %s of %s in flight", op.GetId(), op.GetGroup())
			}
		}
		if resp.GetImbalanceBefore() > resp.GetThreshold() {
			return fmt.Errorf("imbalance %.4f over the threshold %.4f", resp.GetImbalanceBefore(), resp.GetThreshold())
		}
		return nil
	})
	after := c.allOnline(leader, names, 30*time.Second, anyOwner)
	seen := map[string]int{}
	toNew := 0
	for _, op := range c.operations(leader) {
		if op.GetCause() != "balancer" {
			t.Errorf("a move the balancer test did not expect: %v", op)
			continue
		}
		seen[op.GetGroup()]++
		if op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED || op.GetKind() != havenv1.MoveKind_MOVE_KIND_LIVE {
			t.Errorf("balancer move %v", op)
		}
		if op.GetTarget() == n4.name {
			toNew++
		}
		b, a := before[op.GetGroup()], after[op.GetGroup()]
		gap := c.guestGap(op.GetGroup(), op.GetSource(), op.GetTarget(), b.GetEpoch(), a.GetEpoch())
		if limit := 300*time.Millisecond + 2*guestTick; gap > limit {
			t.Errorf("%s: guest gap %s over %s", op.GetGroup(), gap, limit)
		}
	}
	for g, n := range seen {
		if n > 1 {
			t.Errorf("%s moved %d times within the hold-off", g, n)
		}
	}
	if toNew == 0 {
		t.Fatalf("nothing moved to the new node %s; imbalance %.4f", n4.name, last.GetImbalanceBefore())
	}
	t.Logf("%d groups moved to %s; imbalance now %.4f (threshold %.4f)", toNew, n4.name, last.GetImbalanceBefore(), last.GetThreshold())
	c.checkInvariants(names)
}

// waitLeased waits until each of nodes has had a lease grant, by its own
// metrics.
func (c *cluster) waitLeased(nodes ...*node) {
	c.t.Helper()
	for _, n := range nodes {
		waitFor(c.t, 30*time.Second, n.name+" granted a lease", func() error {
			page, err := tryScrape(n)
			if err != nil {
				return err
			}
			if sumMetrics(c.t, page, []string{"haven_lease_renewal_duration_seconds_count"})[0] == 0 {
				return errNotYet
			}
			return nil
		})
	}
}

// waitAlive waits until the cluster's state has node alive.
func (c *cluster) waitAlive(via *node, name string) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, name+" alive in the cluster's state", func() error {
		resp, err := via.api().ListNodes(ctx(c.t), &havenv1.ListNodesRequest{})
		if err != nil {
			return err
		}
		for _, ni := range resp.GetNodes() {
			if n := ni.GetNode(); n.GetName() == name && n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
				return nil
			}
		}
		return fmt.Errorf("%s is not alive in the state", name)
	})
}
