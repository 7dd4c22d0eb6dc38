package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestOutsidersFollowTheLog: with raft.max_members 3, the fourth and
// fifth agents stay out of the Raft configuration and follow the committed
// log by a stream from a member. They read every write and name the
// leader, as every node does; they run the groups placed on them under the
// leader's leases; when the leader is SIGKILLed they learn the new one and
// their groups run on at the same epoch, and one of them is taken into the
// configuration in the dead member's place. An outsider's SIGKILL fails
// its groups over like any node's.
func TestOutsidersFollowTheLog(t *testing.T) {
	c := newCluster(t, func(cfg *agent.Config) { cfg.Raft.MaxVoters, cfg.Raft.MaxMembers = 3, 3 })
	c.startN(3)
	leader := c.leader(30 * time.Second)
	c.add(0).start()
	c.add(0).start()
	outside := func(via *node) ([]string, error) {
		roles, err := raftRoles(via)
		if err != nil {
			return nil, err
		}
		if len(roles) != 5 {
			return nil, fmt.Errorf("%s lists %d nodes", via.name, len(roles))
		}
		var out []string
		for name, r := range roles {
			if r == havenv1.RaftRole_RAFT_ROLE_NONE {
				out = append(out, name)
			}
		}
		return out, nil
	}
	waitFor(t, 30*time.Second, "n4 and n5 outside the configuration, as every node says", func() error {
		for _, via := range c.nodes {
			out, err := outside(via)
			if err != nil {
				return err
			}
			if len(out) != 2 || !(out[0] == "n4" && out[1] == "n5" || out[0] == "n5" && out[1] == "n4") {
				return fmt.Errorf("%s says %v are outside", via.name, out)
			}
		}
		return nil
	})
	// New work goes to nodes that hold a lease (leader/reserve.go): a
	// group created before its preferred owner's first grant lands
	// elsewhere and, with no failback policy, stays there.
	c.waitLeased(c.nodes[3], c.nodes[4])

	names := []string{"on4", "on5", "any"}
	prefer := map[string]string{"on4": "n4", "on5": "n5"}
	for _, name := range names {
		spec := vmGroup(name)
		if p := prefer[name]; p != "" {
			spec.PreferredOwners = []string{p}
		}
		if _, err := c.nodes[3].api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
			t.Fatalf("create %s through an outsider: %v", name, err)
		}
		if _, err := c.nodes[4].api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name}); err != nil {
			t.Fatalf("start %s through an outsider: %v", name, err)
		}
	}
	before := c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool {
		p := prefer[g.GetSpec().GetName()]
		return p == "" || g.GetOwner() == p
	})
	for _, name := range names {
		c.groupEverywhere(name, 10*time.Second)
	}

	leader.kill()
	newLeader := c.leader(30 * time.Second)
	elected := time.Now()
	var joined, stayed *node
	waitFor(t, 30*time.Second, "one outsider taken into the configuration in the dead member's place", func() error {
		out, err := outside(newLeader)
		if err != nil {
			return err
		}
		if len(out) != 1 {
			return fmt.Errorf("outside: %v", out)
		}
		stayed = c.node(out[0])
		joined = c.node(map[string]string{"n4": "n5", "n5": "n4"}[out[0]])
		return nil
	})
	after := c.allOnline(newLeader, names, 30*time.Second, anyOwner)
	for _, name := range []string{"on4", "on5"} {
		b, a := before[name], after[name]
		if a.GetOwner() != b.GetOwner() || a.GetEpoch() != b.GetEpoch() {
			t.Errorf("%s went from %s at epoch %d to %s at epoch %d across the leader's death: an outsider's group must run on", name, b.GetOwner(), b.GetEpoch(), a.GetOwner(), a.GetEpoch())
		}
		// Frozen while no leader grants (as on any node), then on again.
		waitFor(t, 15*time.Second, name+" running on after the new leader's grant", func() error {
			return c.execRunning(b.GetOwner(), name, b.GetEpoch(), elected)
		})
	}
	t.Logf("%s joined the configuration, %s stayed outside", joined.name, stayed.name)

	// The outsider's SIGKILL: its group fails over, once.
	mine := "on" + stayed.name[1:]
	stayed.kill()
	moved := c.allOnline(newLeader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != stayed.name })
	if got, was := moved[mine].GetEpoch(), before[mine].GetEpoch(); got != was+1 {
		t.Errorf("%s failed over at epoch %d, want %d", mine, got, was+1)
	}
	c.checkInvariants(names)
}
