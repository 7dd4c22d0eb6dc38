package leader

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent/lease"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// The leader simulation (make bench-leader-sim) runs the leader's duties
// on a cluster of many nodes and groups with no process and no network:
// a real Leader over a real FSM fed by fsmtest, gossip and Raft faked as
// in the decision tests. It measures what one Raft group's leader pays as
// the cluster grows, through the functions the leader itself calls.
var (
	leaderSim      = flag.Bool("leadersim", false, "run the leader simulation (TestLeaderSim)")
	leaderSimScale = flag.String("leadersim.scale", "100x10000,1000x100000", "comma-separated NODESxGROUPS to simulate")
)

// simRaft is fakeRaft that times what a commit costs: encoding the
// command, and the FSM's decode and apply, as Raft would on every node
// (the log's fsync and the network are not in it).
type simRaft struct {
	*fakeRaft
	took  time.Duration
	bytes int
}

func (r *simRaft) Commit(c *havenv1.Command) (*fsm.Result, error) {
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, err
	}
	r.bytes += len(data)
	t0 := time.Now()
	res, err := r.fakeRaft.Commit(c)
	r.took += time.Since(t0)
	return res, err
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "sim" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func TestLeaderSim(t *testing.T) {
	if !*leaderSim {
		t.Skip("the leader simulation runs with -leadersim (make bench-leader-sim)")
	}
	for _, sc := range strings.Split(*leaderSimScale, ",") {
		n, g, ok := strings.Cut(sc, "x")
		nodes, err1 := strconv.Atoi(n)
		groups, err2 := strconv.Atoi(g)
		if !ok || err1 != nil || err2 != nil || nodes < 3 || groups < 100 {
			t.Fatalf("-leadersim.scale %q: want NODESxGROUPS, at least 3x100", sc)
		}
		simulate(t, nodes, groups)
	}
}

// simulate builds a cluster of nodes (n0000 leads) and groups, all online,
// one node (the dead one) holding 1 % of them and the others an even
// share of the rest, and prints one line per figure.
func simulate(t *testing.T, nodes, groups int) {
	say := func(figure string, v float64, unit string) {
		fmt.Printf("leadersim nodes=%d groups=%d %-28s %12.3f %s\n", nodes, groups, figure, v, unit)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	name := func(i int) string { return fmt.Sprintf("n%04d", i) }
	dead := name(nodes / 2)

	fr := &fakeRaft{Log: fsmtest.New(t), leaderCh: make(chan bool, 4)}
	r := &simRaft{fakeRaft: fr}
	members := &fakeMembers{}
	// Room for the dead node's 1 % and more: the sim measures the
	// leader's work, not a cluster short of room.
	const cpu, mem = 1 << 20, 4 << 40
	for i := range nodes {
		fr.AddNode(fsmtest.Node(name(i), "a", cpu, mem, nil))
		st := heartbeat.StateAlive
		if name(i) == dead {
			st = heartbeat.StateDead
		}
		members.m = append(members.m, heartbeat.Member{Name: name(i), State: st, Meta: heartbeat.Meta{Site: "a", CPUMillis: cpu, MemoryBytes: mem}})
	}
	before := heapInUse()
	t0 := time.Now()
	onDead := groups / 100
	for i := range groups {
		owner := dead
		if i >= onDead {
			// n0000 leads and the dead node has its share: the rest go
			// round the others.
			owner = name(1 + (i-onDead)%(nodes-2))
			if owner >= dead {
				owner = name(2 + (i-onDead)%(nodes-2))
			}
		}
		fr.StartOn(fmt.Sprintf("g%06d", i), owner)
	}
	build := time.Since(t0)
	after := heapInUse()
	say("fsm_build_3_commits_per_group", build.Seconds(), "s")
	say("fsm_heap_per_group", float64(after-before)/float64(groups), "bytes")

	leases := lease.NewTable(quorum.Profiles{SameSite: testLease, CrossSite: testLease}, "a", fr.FSM, func() error { return nil })
	l := New(Config{
		Name: name(0), State: fr.FSM, Raft: r, Members: members, Leases: leases,
		Logger: slog.New(slog.DiscardHandler), Reserve: 1, CPUOvercommit: 4, Balancer: placement.ModeRecommend,
		DirtyRate: fixedRate(1 << 20), MaxVoters: 5, ElectionTimeout: time.Second, ReconcileInterval: time.Second,
	})
	fr.l = l
	tm := newTerm(time.Now())
	l.cur = tm
	// The office began a minute ago and nobody has renewed since.
	leases.Begin(time.Now().Add(-time.Minute), 1)
	leases.Ready()
	now := time.Now()

	// The views every decision starts from.
	t0 = time.Now()
	all := l.state.Groups()
	say("fsm_groups_sorted_copy", ms(time.Since(t0)), "ms")
	t0 = time.Now()
	st := l.placementState()
	say("placement_state", ms(time.Since(t0)), "ms")

	// The reserve at K=1: a restart plan for every single node's failure.
	spec := l.reserveSpec(st)
	t0 = time.Now()
	res := l.reserveFor(st, spec)
	say("reserve_check_k1", ms(time.Since(t0)), "ms")
	if !res.OK || spec.K != 1 {
		t.Fatalf("reserve K=%d: %s", spec.K, res.Summary())
	}

	// A drain plan of one node: what drainNode decides before it starts
	// moves.
	drained := name(1)
	t0 = time.Now()
	names, _ := l.drainable(drained)
	dst := l.placementState()
	targets, _ := placeGroups(dst, names, []string{drained}, l.leaseHolders(dst, now))
	say("drain_plan_one_node", ms(time.Since(t0)), "ms")
	if len(targets) != len(names) || len(names) == 0 {
		t.Fatalf("drain plan placed %d of %d groups", len(targets), len(names))
	}

	// The failover of the dead node: the decision, then its one commit.
	// Every group but the dead node's was (as if) just assigned, which
	// gives it failover_after from now: only the dead node's are due. (At
	// scale the figures above take longer than failover_after.)
	now = time.Now()
	for _, g := range all {
		if g.GetOwner() != dead {
			leases.Assigned(g.GetSpec().GetName(), now)
		}
	}
	fr.reset()
	t0 = time.Now()
	l.failover(tm, now)
	total := time.Since(t0)
	say("failover_groups", float64(onDead), "groups")
	say("failover_decision", ms(total-r.took), "ms")
	say("failover_commit_encode_apply", ms(r.took), "ms")
	say("failover_command", float64(r.bytes)/1024, "KiB")
	if len(fr.commits) != 1 {
		t.Fatalf("failover committed %v, want one AssignGroups", fr.commits)
	}
	for _, g := range fr.FSM.Groups() {
		if g.GetOwner() == dead {
			t.Fatalf("group %s still on the dead node after the failover", g.GetSpec().GetName())
		}
	}

	// A snapshot: capture (under the FSM's read lock, applies wait),
	// Persist (concurrent with applies), and a follower's Restore.
	t0 = time.Now()
	snap, err := fr.FSM.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	say("snapshot_capture", ms(time.Since(t0)), "ms")
	var sink memSink
	t0 = time.Now()
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	say("snapshot_persist", ms(time.Since(t0)), "ms")
	say("snapshot_size", float64(sink.Len())/(1<<20), "MiB")
	restored := fsm.New()
	t0 = time.Now()
	if err := restored.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	say("snapshot_restore", ms(time.Since(t0)), "ms")

	// One lease renewal: what the leader answers a node (its groups at
	// their epochs), through the table's batch.
	stop := make(chan struct{})
	defer close(stop)
	go leases.Serve(stop)
	t0 = time.Now()
	if _, err := leases.Renew(t.Context(), name(1)); err != nil {
		t.Fatal(err)
	}
	say("lease_renewal_one_node", ms(time.Since(t0)), "ms")

	// An operator's creation and start of one more group, through the
	// leader's API as the gRPC service calls it: admission against the
	// reserve, the commits, the placement (the commits' cost is in
	// create_start_commits). A scale run creates its groups this way.
	const extra = 50
	r.took = 0
	t0 = time.Now()
	for i := range extra {
		name := fmt.Sprintf("x%06d", i)
		g, err := l.CreateGroup(fsmtest.VMGroup(name), "create-"+name)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		// Every node has checked the new spec: nodes report a pass at
		// most every 200 ms, for all the groups created meanwhile, so
		// the reports are not the creation's cost.
		for _, m := range members.m {
			l.checks.note(m.Name, g.GetCreateIndex())
		}
		if _, err := l.StartGroup(name, "", "start-"+name); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
	}
	total = time.Since(t0)
	say("create_start_decisions", ms(total-r.took)/extra, "ms/group")
	say("create_start_commits", ms(r.took)/extra, "ms/group")
}
