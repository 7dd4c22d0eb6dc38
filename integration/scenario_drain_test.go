package integration

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var (
	drainGroups = flag.Int("drain.groups", 20, "TestScenarioDrain: groups on the drained node")
	drainMem    = flag.Int64("drain.mem", 256<<20, "TestScenarioDrain: each group's memory, all of it data")
	drainDirty  = flag.Int64("drain.dirty", 16<<20, "TestScenarioDrain: what each guest dirties per second")
)

// drainTick is the guests' tick in the drain scenario: twenty guests at
// 5 ms would write 4,000 execution records a second on two cores.
const drainTick = 10 * time.Millisecond

// TestScenarioDrain prints the drain of a node holding many groups (20 of
// 256 MiB whose guests dirty 16 MiB/s, by default): the time from
// DrainNode to the last group running elsewhere against the sum of their
// memory at the raw stream rate (a link probe between the same agents in
// the same run), the longest guest gap against the downtime target, and
// whether the reserve held at every look during the drain.
func TestScenarioDrain(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make bench-moves)")
	}
	binary(t, "haven")
	for run := 0; run < *scenarioRuns; run++ {
		t.Run(fmt.Sprint(run), func(t *testing.T) { drainOnce(t) })
	}
}

func drainOnce(t *testing.T) {
	mem, count := *drainMem, *drainGroups
	c := newCluster(t, func(cfg *agent.Config) {
		cfg.Sim.DirtyRate, cfg.Sim.WorkingSetBytes, cfg.Sim.Tick = *drainDirty, mem, drainTick
	})
	c.startN(3)
	leader := c.leader(60 * time.Second)
	victim := c.follower(leader)
	names := groupNames("dr", count)
	for _, name := range names {
		spec := vmGroup(name)
		spec.Resources[2].Vm.MemoryBytes = mem
		if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
			t.Fatal(err)
		}
		if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name, Node: victim.name}); err != nil {
			t.Fatal(err)
		}
	}
	before := c.allOnline(leader, names, 2*time.Minute, func(g *havenv1.Group) bool { return g.GetOwner() == victim.name })
	for _, name := range names {
		fctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		resp, err := havenv1.NewNodeServiceClient(victim.conn).FillVM(fctx, &havenv1.FillVMRequest{Group: name, Vm: "vm"})
		cancel()
		if err != nil || resp.GetBytes() != mem {
			t.Fatalf("filling %s: %v, %v", name, resp, err)
		}
	}
	// The baseline: one stream from the drained node to each target.
	var rates []float64
	for _, n := range c.nodes {
		if n == victim {
			continue
		}
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		resp, err := havenv1.NewNodeServiceClient(victim.conn).ProbeLink(pctx, &havenv1.ProbeLinkRequest{Target: n.name, Bytes: 1 << 30})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		rates = append(rates, float64(resp.GetBytes())/resp.GetDuration().AsDuration().Seconds())
	}
	rate := medianF(rates)

	// The reserve, looked at every 200 ms while the drain runs.
	var (
		mu             sync.Mutex
		looks, held    int
		breach         string
		stopW, stopped = make(chan struct{}), make(chan struct{})
	)
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stopW:
				return
			case <-time.After(200 * time.Millisecond):
			}
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := leader.api().GetReserve(rctx, &havenv1.GetReserveRequest{})
			cancel()
			if err != nil {
				continue
			}
			mu.Lock()
			looks++
			if resp.GetCanSustain() {
				held++
			} else if breach == "" {
				breach = fmt.Sprint(resp.GetBreach())
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	if _, err := leader.api().DrainNode(ctx(t), &havenv1.DrainNodeRequest{Node: victim.name}); err != nil {
		t.Fatal(err)
	}
	after := c.allOnline(leader, names, 10*time.Minute, func(g *havenv1.Group) bool {
		return g.GetOwner() != victim.name && g.GetOperation() == ""
	})
	took := time.Since(start)
	close(stopW)
	<-stopped

	var gaps []time.Duration
	live := 0
	for _, op := range c.operations(leader) {
		if op.GetCause() != "drain" || op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED {
			t.Errorf("drain move %s of %s: %s %s (%s)", op.GetId(), op.GetGroup(), op.GetKind(), op.GetOutcome(), op.GetReason())
			continue
		}
		if op.GetKind() == havenv1.MoveKind_MOVE_KIND_LIVE {
			live++
		}
		b, a := before[op.GetGroup()], after[op.GetGroup()]
		gaps = append(gaps, c.guestGap(op.GetGroup(), victim.name, a.GetOwner(), b.GetEpoch(), a.GetEpoch()))
	}
	c.checkInvariants(names)
	ideal := time.Duration(float64(mem) * float64(count) / rate * float64(time.Second))
	over := 0
	for _, g := range gaps {
		if g > 300*time.Millisecond+drainTick {
			over++
		}
	}
	maxGap := time.Duration(0)
	if len(gaps) > 0 {
		maxGap = slices.Max(gaps)
	}
	fmt.Printf("scenario drain groups=%d mem=%dMiB dirty=%dMiB/s tick=%s live_moves=%d took=%s stream_rate_median=%.0fMB/s sum_mem_at_stream_rate=%s ratio=%.2f (target <= 1.5) gap_median=%s gap_p99=%s gap_max=%s gaps_over_target=%d reserve_held=%d/%d looks%s\n",
		count, mem>>20, *drainDirty>>20, drainTick, live, toMS(took), rate/1e6, toMS(ideal), float64(took)/float64(ideal),
		toMS(median(gaps)), toMS(pct(gaps, 99)), toMS(maxGap), over, held, looks, breachNote(breach))
}

func breachNote(b string) string {
	if b == "" {
		return ""
	}
	return " first_breach=" + b
}
