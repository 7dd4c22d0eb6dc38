package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// nodesAlive waits until the given node's FSM lists want nodes, all alive:
// placement sees only the nodes the leader has recorded.
func (c *cluster) nodesAlive(via *node, want int, timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, timeout, fmt.Sprintf("%d nodes alive", want), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := rpcclient.AllNodes(ctx, via.api(), &havenv1.ListNodesRequest{})
		if err != nil {
			return err
		}
		n := 0
		for _, ni := range resp.GetNodes() {
			if ni.GetNode().GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
				n++
			}
		}
		if n != want {
			return fmt.Errorf("%d of %d alive", n, len(resp.GetNodes()))
		}
		return nil
	})
}

func reserveOf(t *testing.T, n *node) *havenv1.GetReserveResponse {
	t.Helper()
	r, err := n.api().GetReserve(ctx(t), &havenv1.GetReserveRequest{})
	if err != nil {
		t.Fatalf("GetReserve through %s: %v", n.name, err)
	}
	return r
}

// TestReserveAdmissionAndAntiAffinity: four nodes with room for four
// 512 MiB groups each and a reserve of one failure. A hard anti-affinity
// class of three groups lands on three nodes; more groups are accepted
// until the reserve is full (12 groups: after any one failure the other
// three nodes are exactly full), and the next is refused with
// ResourceExhausted naming the failure that would break. Then a node that
// runs a class member is SIGKILLed: every HA group runs again, the class
// still on three different nodes, and the reserve report says it is now
// broken and why.
func TestReserveAdmissionAndAntiAffinity(t *testing.T) {
	c := newCluster(t, withReserve(1), withCapacity(4000, 2<<30))
	c.startN(4)
	leader := c.leader(30 * time.Second)
	c.nodesAlive(leader, 4, 30*time.Second)
	// Through a follower: the reserve is the leader's, forwarded.
	var follower *node
	for _, n := range c.nodes {
		if n != leader {
			follower = n
			break
		}
	}
	if r := reserveOf(t, follower); !r.GetCanSustain() || r.GetK() != 1 || !r.GetEnforced() || r.GetLeader() != leader.name {
		t.Fatalf("empty cluster's reserve: %v", r)
	}

	sql := []string{"sql1", "sql2", "sql3"}
	for _, name := range sql {
		spec := vmGroup(name)
		spec.AntiAffinity = []*havenv1.AntiAffinity{{Class: "sql", Hard: true}}
		if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name}); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
	}
	names := append([]string(nil), sql...)
	var refusal error
	for i := 1; i <= 20 && refusal == nil; i++ {
		name := fmt.Sprintf("g%d", i)
		if _, err := follower.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup(name)}); err != nil {
			refusal = err
			break
		}
		if _, err := follower.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name}); err != nil {
			t.Fatalf("%s was admitted at creation but its start was refused: %v", name, err)
		}
		names = append(names, name)
	}
	st := status.Convert(refusal)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("after %d groups: %v, want ResourceExhausted", len(names), refusal)
	}
	for _, want := range []string{"would break reserve 1", "fails, group", "cannot restart"} {
		if !strings.Contains(st.Message(), want) {
			t.Errorf("refusal %q does not say %q", st.Message(), want)
		}
	}
	t.Logf("%d groups admitted, then: %s", len(names), st.Message())
	if len(names) != 12 {
		t.Errorf("%d groups admitted, want 12: any one failure must leave the other three nodes room for its groups, and 12 fill them exactly", len(names))
	}
	// The refused group changed nothing.
	if _, err := leader.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: fmt.Sprintf("g%d", len(names)-2)}); status.Code(err) != codes.NotFound {
		t.Errorf("refused group exists: %v", err)
	}
	before := c.allOnline(leader, names, 60*time.Second, anyOwner)
	sqlNodes := func(gs map[string]*havenv1.Group) map[string]string {
		owners := map[string]string{}
		for _, n := range sql {
			o := gs[n].GetOwner()
			if other, dup := owners[o]; dup {
				t.Fatalf("hard anti-affinity broken: %s and %s both on %s", other, n, o)
			}
			owners[o] = n
		}
		return owners
	}
	onNodes := sqlNodes(before)
	if r := reserveOf(t, leader); !r.GetCanSustain() || r.GetFailureSetsBroken() != 0 {
		t.Fatalf("full reserve: %v", r)
	}
	out, err := exec.Command(binary(t, "haven"), "--addr", leader.grpcAddr(), "reserve").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Can sustain 1 failure(s):") || !strings.Contains(string(out), "yes") {
		t.Fatalf("haven reserve: %v\n%s", err, out)
	}
	// Ranking a further group: every node would break the reserve.
	out, err = exec.Command(binary(t, "haven"), "--addr", follower.grpcAddr(), "-o", "json", "place", "--cpu", "1", "--mem", "512M").CombinedOutput()
	if err != nil {
		t.Fatalf("haven place: %v\n%s", err, out)
	}
	var ranked havenv1.RankNodesResponse
	if err := protojson.Unmarshal(out, &ranked); err != nil {
		t.Fatalf("haven place -o json: %v\n%s", err, out)
	}
	for _, n := range ranked.GetNodes() {
		if n.GetKeepsReserve() || n.GetStars() != 0 {
			t.Errorf("full cluster, node %s keeps the reserve for one more group: %v", n.GetNode(), n)
		}
	}

	// SIGKILL a follower that runs a class member.
	var victim *node
	for _, n := range c.nodes {
		if _, ok := onNodes[n.name]; ok && n != leader {
			victim = n
			break
		}
	}
	if victim == nil {
		t.Fatalf("no follower runs a class member: %v", onNodes)
	}
	victim.kill()
	t.Logf("killed %s, which ran %s", victim.name, onNodes[victim.name])
	after := c.allOnline(leader, names, 60*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	c.checkInvariants(names)
	onNodes = sqlNodes(after)
	if _, ok := onNodes[victim.name]; ok {
		t.Fatalf("a class member is still on %s", victim.name)
	}
	for _, name := range names {
		if b, a := before[name], after[name]; b.GetOwner() == victim.name && a.GetEpoch() != b.GetEpoch()+1 {
			t.Errorf("%s: epoch %d -> %d, want one failover", name, b.GetEpoch(), a.GetEpoch())
		}
	}
	// The leader executed the plan its reserve check had made.
	if !logContains(leader, fmt.Sprintf(`sub=leader failed=[%s] `, victim.name)) || !logContains(leader, "placed_afresh=0 unplaced=0") {
		t.Errorf("the failover of %s did not execute a kept restart plan (see the leader's log)", victim.name)
	}
	// Three nodes, exactly full: no further failure can be sustained,
	// and the report says which breaks and why.
	r := reserveOf(t, leader)
	if r.GetCanSustain() || r.GetBreach().GetGroup() == "" || len(r.GetBreach().GetFailedNodes()) != 1 {
		t.Fatalf("reserve after the failure: %v", r)
	}
	t.Logf("reserve after the failure: %s", r.GetSummary())
	// GetStatus, answered by any agent from its own copy, says so too.
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		waitFor(t, 10*time.Second, "status of "+n.name+" reports the broken reserve", func() error {
			st, err := n.status()
			if err != nil {
				return err
			}
			if st.GetReserveK() != 1 || st.GetReserveOk() || !strings.Contains(st.GetReserveSummary(), "no") {
				return fmt.Errorf("reserve k %d ok %v: %q", st.GetReserveK(), st.GetReserveOk(), st.GetReserveSummary())
			}
			return nil
		})
	}
	// And nothing more is admitted (here no node has room at all, which
	// is said first).
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup("late")}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("create with the reserve broken: %v, want ResourceExhausted", err)
	}
}

// TestAntiAffinityAcrossSites: two sites as routed subnets (each with its
// own same-site gossip pool); the members of a class spread across sites
// are placed one per site, and after the node of one of them dies it
// restarts in that same site, not next to its partner.
func TestAntiAffinityAcrossSites(t *testing.T) {
	c := newLabCluster(t, []string{"a", "a", "b", "b"})
	c.startN(4)
	leader := c.leaderOf()
	names := []string{"db1", "db2"}
	for _, name := range names {
		spec := vmGroup(name)
		spec.AntiAffinity = []*havenv1.AntiAffinity{{Class: "db", Hard: true, AcrossSites: true}}
		if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
			t.Fatal(err)
		}
		if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	site := func(node string) string { return c.node(node).cfg.Site }
	before := c.allOnline(leader, names, 30*time.Second, anyOwner)
	if site(before["db1"].GetOwner()) == site(before["db2"].GetOwner()) {
		t.Fatalf("db1 on %s and db2 on %s: same site", before["db1"].GetOwner(), before["db2"].GetOwner())
	}
	victim := c.node(before["db1"].GetOwner())
	if victim == leader {
		victim = c.node(before["db2"].GetOwner())
	}
	victim.kill()
	after := c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	if site(after["db1"].GetOwner()) == site(after["db2"].GetOwner()) {
		t.Fatalf("after the failure db1 on %s and db2 on %s: same site", after["db1"].GetOwner(), after["db2"].GetOwner())
	}
	c.checkInvariants(names)
}

// TestNodeSelector: labels from a node's configuration reach the cluster
// state, and a group whose node_selector asks for them runs only on such
// nodes, through a failover too.
func TestNodeSelector(t *testing.T) {
	c := newCluster(t)
	for i := 0; i < 3; i++ {
		c.add(3)
	}
	for _, n := range c.nodes[1:] {
		n.reconfigure(func(cfg *agent.Config) { cfg.Labels = map[string]string{"gpu": "a100"} })
	}
	for _, n := range c.nodes {
		n.start()
	}
	leader := c.leader(30 * time.Second)
	c.nodesAlive(leader, 3, 30*time.Second)
	nodes, err := leader.api().ListNodes(ctx(t), &havenv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ni := range nodes.GetNodes() {
		if got := ni.GetNode().GetLabels()["gpu"]; (ni.GetNode().GetName() != "n1") != (got == "a100") {
			t.Fatalf("labels of %s: %v", ni.GetNode().GetName(), ni.GetNode().GetLabels())
		}
	}
	spec := vmGroup("ml")
	spec.NodeSelector = map[string]string{"gpu": "a100"}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "ml"}); err != nil {
		t.Fatal(err)
	}
	g := c.allOnline(leader, []string{"ml"}, 30*time.Second, anyOwner)["ml"]
	if g.GetOwner() == "n1" {
		t.Fatalf("ml runs on n1, which lacks gpu=a100")
	}
	if owner := c.node(g.GetOwner()); owner != leader {
		owner.kill()
		g = c.allOnline(leader, []string{"ml"}, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != owner.name })["ml"]
		if g.GetOwner() == "n1" {
			t.Fatalf("after the failover ml runs on n1, which lacks gpu=a100")
		}
	}
	c.checkInvariants([]string{"ml"})
}
