package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A witness that leads (here: it bootstrapped the cluster alone) hands
// leadership to a data-site voter as soon as one exists, and a node of
// weight 0 never gets a vote; then the leader stays put.
func TestWitnessHandsOffLeadership(t *testing.T) {
	c := newCluster(t)
	w := c.add(1)
	w.reconfigure(func(cfg *agent.Config) { cfg.Site, cfg.Witness = "w", true })
	w.start()
	if l := c.leader(60 * time.Second); l != w {
		t.Fatalf("leader %s, want the witness, alone", l.name)
	}
	for _, site := range []string{"a", "a", "b", "b"} {
		n := c.add(0)
		n.reconfigure(func(cfg *agent.Config) { cfg.Site = site })
		if n.name == "n5" {
			n.reconfigure(func(cfg *agent.Config) { cfg.NodeWeight = 0 })
		}
		n.start()
	}
	var leader *node
	waitFor(t, 60*time.Second, "a data-site voter leading, the weight-0 node not voting", func() error {
		leader = c.leader(10 * time.Second)
		if leader == w {
			return fmt.Errorf("the witness still leads")
		}
		roles, err := raftRoles(leader)
		if err != nil {
			return err
		}
		if roles["n5"] != havenv1.RaftRole_RAFT_ROLE_NONVOTER {
			return fmt.Errorf("n5 (weight 0) is %s", roles["n5"])
		}
		voters := 0
		for _, r := range roles {
			if r == havenv1.RaftRole_RAFT_ROLE_VOTER {
				voters++
			}
		}
		if voters != 3 {
			return fmt.Errorf("%d voters: %v", voters, roles)
		}
		return nil
	})
	if !logContains(w, "handing leadership to a data-site voter") {
		t.Error("the witness did not say it handed leadership off")
	}
	// Several reconciles later the same node leads: no handing back.
	deadline := time.Now().Add(3 * c.nodes[0].cfg.Raft.ReconcileInterval)
	for time.Now().Before(deadline) {
		if l := c.leader(10 * time.Second); l != leader {
			t.Fatalf("leadership moved on from %s to %s", leader.name, l.name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A node of site a dies: its groups restart on the other node of a,
// which has room, not in site b, although b's nodes are emptier; each
// runs once (the invariant checker).
func TestFailoverStaysInSite(t *testing.T) {
	c := newCluster(t)
	for _, site := range []string{"a", "a", "b", "b"} {
		n := c.add(4)
		n.reconfigure(func(cfg *agent.Config) { cfg.Site = site })
	}
	for _, n := range c.nodes {
		n.start()
	}
	leader := c.leader(60 * time.Second)
	// The victim is a node of a that does not lead; its partner in a is
	// the other one.
	var victim, partner *node
	for _, n := range c.nodes[:2] {
		if n != leader && victim == nil {
			victim = n
		} else {
			partner = n
		}
	}
	names := groupNames("st", 4)
	for _, name := range names {
		if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup(name)}); err != nil {
			t.Fatal(err)
		}
		if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name, Node: victim.name}); err != nil {
			t.Fatal(err)
		}
	}
	c.allOnline(leader, names, 60*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() == victim.name })
	t0 := time.Now()
	victim.kill()
	after := c.allOnline(leader, names, 60*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	t.Logf("all %d groups running again %s after the SIGKILL", len(names), time.Since(t0).Round(time.Millisecond))
	for name, g := range after {
		if g.GetOwner() != partner.name {
			t.Errorf("%s restarted on %s, want %s, the other node of site a", name, g.GetOwner(), partner.name)
		}
	}
	c.checkInvariants(names)
}
