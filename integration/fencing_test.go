package integration

import (
	"fmt"
	"testing"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func groupNames(prefix string, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

// ownerOfSome returns a running node other than not that owns at least one
// of the groups.
func (c *cluster) ownerOfSome(groups map[string]*havenv1.Group, not *node) *node {
	c.t.Helper()
	for _, n := range c.nodes {
		if n == not || !n.running() {
			continue
		}
		for _, g := range groups {
			if g.GetOwner() == n.name {
				return n
			}
		}
	}
	c.t.Fatalf("no node but %s owns a group", not.name)
	return nil
}

func anyOwner(*havenv1.Group) bool { return true }

// TestSIGSTOPLongerThanLease: an owner frozen by SIGSTOP past its lease
// loses its groups to other nodes; when it wakes it must not resume any of
// them (its VMs' gate refuses), and the records show no overlap.
func TestSIGSTOPLongerThanLease(t *testing.T) {
	c := newCluster(t)
	leader, names, before := c.runGroups(3, "s", 6)
	victim := c.ownerOfSome(before, leader)
	victim.pause()
	after := c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	victim.resume()
	// The woken node renews, learns the new epochs and kills its frozen VMs.
	waitFor(t, 20*time.Second, victim.name+" back", func() error {
		_, err := victim.status()
		return err
	})
	time.Sleep(time.Second) // let any wrongly resumed guest write records
	for _, name := range names {
		if before[name].GetOwner() == victim.name && after[name].GetEpoch() != before[name].GetEpoch()+1 {
			t.Errorf("%s: epoch %d -> %d, want one failover", name, before[name].GetEpoch(), after[name].GetEpoch())
		}
	}
	c.checkInvariants(names)
}

// TestSIGSTOPShorterThanLease: a pause shorter than the lease costs nothing:
// no group moves and every guest keeps counting.
func TestSIGSTOPShorterThanLease(t *testing.T) {
	c := newCluster(t)
	leader, names, before := c.runGroups(3, "q", 6)
	victim := c.ownerOfSome(before, leader)
	victim.pause()
	// A deliberate pause: half the lease.
	time.Sleep(victim.cfg.Lease.Duration / 2)
	victim.resume()
	// Watch past the failover time: nothing may move.
	time.Sleep(victim.cfg.Lease.FailoverAfter + time.Second)
	after := c.allOnline(leader, names, 10*time.Second, anyOwner)
	for _, name := range names {
		if after[name].GetEpoch() != before[name].GetEpoch() || after[name].GetOwner() != before[name].GetOwner() {
			t.Errorf("%s moved after a short pause: %s@%d -> %s@%d", name, before[name].GetOwner(), before[name].GetEpoch(), after[name].GetOwner(), after[name].GetEpoch())
		}
	}
	c.checkInvariants(names)
}
