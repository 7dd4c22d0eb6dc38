package integration

import (
	"testing"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func (c *cluster) leaderOf() *node { return c.leader(30 * time.Second) }

// TestPartitionedOwnerFreezesBeforeFailover: a node cut off from the rest
// freezes its groups when its lease ends; the rest restart them only after
// that. The exec logs, which are not fenced, prove the order.
func TestPartitionedOwnerFreezesBeforeFailover(t *testing.T) {
	c := newLabCluster(t, []string{"a", "a", "a"})
	leader, names, before := c.runGroups(3, "p", 6)
	victim := c.ownerOfSome(before, leader)
	c.lab.Isolate(victim.host)
	c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	c.lab.HealAll()
	waitFor(t, 30*time.Second, victim.name+" renews again", func() error {
		st, err := victim.status()
		if err != nil {
			return err
		}
		if st.GetLeader() == "" {
			return errNotYet
		}
		return nil
	})
	// A deliberate window: a healed node that wrongly resumed a moved
	// group would write records now, for the checker to find.
	time.Sleep(time.Second)
	c.checkInvariants(names)
}

// TestShortPartitionFreezesAndThaws: cut off for longer than the lease but
// less than the failover time, a node's guests pause and then continue at
// the same epoch; nothing restarts anywhere.
func TestShortPartitionFreezesAndThaws(t *testing.T) {
	// A failover time well above the lease leaves room to heal in between
	// on a loaded machine.
	c := newLabCluster(t, []string{"a", "a", "a"}, withFailoverAfter(5*time.Second))
	leader, names, before := c.runGroups(3, "b", 6)
	victim := c.ownerOfSome(before, leader)
	cfg := victim.cfg.Lease
	// Long enough that the lease surely ends (one renewal interval after
	// the last grant plus the lease), short enough to heal before the
	// failover time.
	outage := cfg.Duration + cfg.Duration/4 + (cfg.FailoverAfter-cfg.Duration-cfg.Duration/4)/3
	c.lab.Isolate(victim.host)
	cut := time.Now()
	time.Sleep(outage)
	c.lab.HealAll()
	healed := time.Now()
	// Watch past the failover time: nothing may move.
	time.Sleep(cfg.FailoverAfter)
	after := c.allOnline(leader, names, 10*time.Second, anyOwner)
	for _, name := range names {
		if after[name].GetEpoch() != before[name].GetEpoch() {
			t.Errorf("%s restarted after a %s partition: %s@%d -> %s@%d", name, outage, before[name].GetOwner(), before[name].GetEpoch(), after[name].GetOwner(), after[name].GetEpoch())
		}
	}
	c.checkFrozeAndThawed(victim, before, cut, healed)
	c.checkInvariants(names)
}

// TestEveryNodeCutOff: the outage that makes Proxmox fence every node. With
// every node cut off from every other for 30 s, every group freezes, none
// restarts anywhere, and all thaw when the network returns.
func TestEveryNodeCutOff(t *testing.T) {
	c := newLabCluster(t, []string{"a", "a", "a"})
	_, names, before := c.runGroups(3, "e", 6)
	c.lab.IsolateAll()
	cut := time.Now()
	time.Sleep(30 * time.Second)
	c.lab.HealAll()
	healed := time.Now()
	after := c.allOnline(c.leaderOf(), names, 30*time.Second, anyOwner)
	for _, name := range names {
		if after[name].GetEpoch() != before[name].GetEpoch() {
			t.Errorf("%s restarted: %s@%d -> %s@%d", name, before[name].GetOwner(), before[name].GetEpoch(), after[name].GetOwner(), after[name].GetEpoch())
		}
	}
	for _, n := range c.nodes {
		c.checkFrozeAndThawed(n, before, cut, healed)
	}
	c.checkInvariants(names)
}

// TestPartitionedLeader: the majority elects a new leader, which restarts
// the old leader's groups once they are fenced; nothing runs twice.
func TestPartitionedLeader(t *testing.T) {
	c := newLabCluster(t, []string{"a", "a", "a"})
	leader, names, before := c.runGroups(3, "l", 6)
	c.lab.Isolate(leader.host)
	var majority *node
	waitFor(t, 30*time.Second, "a new leader in the majority", func() error {
		for _, n := range c.nodes {
			if n == leader {
				continue
			}
			st, err := n.status()
			if err != nil {
				return err
			}
			if st.GetLeader() != "" && st.GetLeader() != leader.name {
				majority = c.node(st.GetLeader())
				return nil
			}
		}
		return errNotYet
	})
	after := c.allOnline(majority, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != leader.name })
	for _, name := range names {
		if before[name].GetOwner() == leader.name && after[name].GetEpoch() != before[name].GetEpoch()+1 {
			t.Errorf("%s: epoch %d -> %d", name, before[name].GetEpoch(), after[name].GetEpoch())
		}
	}
	c.lab.HealAll()
	c.leaderOf()
	// A deliberate window, as above: the old leader must not resume.
	time.Sleep(time.Second)
	c.checkInvariants(names)
}
