package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// metric reads one sample from an agent's /metrics (see series).
func metric(t *testing.T, n *node, name string) (float64, bool) {
	t.Helper()
	return series(t, scrape(t, n), name)
}

// series reads one sample of a scraped /metrics page: the value of the
// line that starts with name (name and labels as Prometheus writes them,
// `x_bucket{le="1.024"}`).
func series(t *testing.T, page, name string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q", name, line)
			}
			return f, true
		}
	}
	return 0, false
}

// sumMetrics sums, in a scraped /metrics page, each name's samples
// whatever their labels.
func sumMetrics(t *testing.T, page string, names []string) []float64 {
	t.Helper()
	sums := make([]float64, len(names))
	for _, line := range strings.Split(page, "\n") {
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line[:sp], "{")
		if i := slices.Index(names, name); i >= 0 {
			f, err := strconv.ParseFloat(line[sp+1:], 64)
			if err != nil {
				t.Fatalf("%s: %q", name, line)
			}
			sums[i] += f
		}
	}
	return sums
}

// TestMetrics: the leader's /metrics shows that it leads, the groups by
// state, raft's own metrics and, after a node dies, the failover it made,
// counted and timed; a follower's shows it does not lead and counts the
// commands it applied. Every name passes promlint. On the same cluster,
// `haven events -f -o json` on the leader, filtered by kind, shows the
// victim's death, its fence and its groups' failovers in that order.
func TestMetrics(t *testing.T) {
	c := newCluster(t)
	leader, names, before := c.runGroups(3, "mx", 6)
	follower := c.follower(leader)
	if v, _ := metric(t, leader, "haven_raft_leader"); v != 1 {
		t.Errorf("leader's haven_raft_leader = %v", v)
	}
	if v, _ := metric(t, follower, "haven_raft_leader"); v != 0 {
		t.Errorf("follower's haven_raft_leader = %v", v)
	}
	if v, _ := metric(t, leader, `haven_groups{state="online"}`); int(v) != len(names) {
		t.Errorf(`haven_groups{state="online"} = %v, want %d`, v, len(names))
	}
	if v, ok := metric(t, follower, `haven_fsm_applied_total{kind="create-group"}`); !ok || int(v) != len(names) {
		t.Errorf(`follower's haven_fsm_applied_total{kind="create-group"} = %v, want %d`, v, len(names))
	}
	// Raft's own, bridged: the leader timed its commits, the follower its
	// log writes.
	if v, _ := metric(t, leader, "haven_raft_commit_time_seconds_count"); v < float64(len(names)) {
		t.Errorf("leader's haven_raft_commit_time_seconds_count = %v, want at least %d", v, len(names))
	}
	if v, _ := metric(t, follower, "haven_raft_rpc_store_logs_seconds_count"); v < 1 {
		t.Errorf("follower's haven_raft_rpc_store_logs_seconds_count = %v", v)
	}
	lint(t, leader)
	if v, _ := metric(t, leader, `haven_failover_duration_seconds_count{outcome="restarted"}`); v != 0 {
		t.Fatalf("failovers timed before any node died: %v", v)
	}

	victim := c.ownerOfSome(before, leader)
	moved := map[string]bool{}
	for _, name := range names {
		if before[name].GetOwner() == victim.name {
			moved[name] = true
		}
	}
	watch := c.watchEvents(leader, "member-failed", "node-fenced", "failover")
	victim.kill()
	c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	if v, _ := metric(t, leader, `haven_failovers_total{outcome="restarted"}`); int(v) != len(moved) {
		t.Errorf(`haven_failovers_total{outcome="restarted"} = %v, want %d`, v, len(moved))
	}
	// Each failover is timed from the victim's last grant: at least the
	// failover time (the leader waits that long), and well under the
	// 30 s the groups had to come back.
	count, _ := metric(t, leader, `haven_failover_duration_seconds_count{outcome="restarted"}`)
	sum, _ := metric(t, leader, `haven_failover_duration_seconds_sum{outcome="restarted"}`)
	fa := victim.cfg.Lease.FailoverAfter.Seconds()
	if int(count) != len(moved) || sum < fa*count || sum > 30*count {
		t.Errorf("haven_failover_duration_seconds{outcome=\"restarted\"}: count %v, sum %vs, want %d failovers of %.1fs to 30s each", count, sum, len(moved), fa)
	}
	t.Logf("failover duration: %.2fs on average over %d groups (failover_after %.1fs)", sum/count, int(count), fa)
	if v, _ := metric(t, leader, "haven_fences_total"); v != 1 {
		t.Errorf("haven_fences_total = %v, want 1", v)
	}
	waitFor(t, 20*time.Second, "the leader's gossip to count the victim dead", func() error {
		if v, _ := metric(t, leader, fmt.Sprintf(`haven_members{site=%q,state="dead"}`, victim.cfg.Site)); v != 1 {
			return fmt.Errorf(`haven_members{state="dead"} = %v`, v)
		}
		return nil
	})
	lint(t, leader)

	// The events, in the order the leader's agent streamed them.
	var order []string
	died, fenced := -1, -1
	for len(moved) > 0 || died < 0 || fenced < 0 {
		e := watch.next(t, 20*time.Second)
		switch {
		case e.Kind == "member-failed" && e.Node == victim.name:
			died = len(order)
		case e.Kind == "node-fenced" && e.Node == victim.name:
			fenced = len(order)
		case e.Kind == "failover" && moved[e.Group] && e.Refused == "":
			if died < 0 || fenced < 0 {
				t.Errorf("failover of %s before the death (%d) and fence (%d) of %s: %v", e.Group, died, fenced, victim.name, order)
			}
			delete(moved, e.Group)
		default:
			continue
		}
		order = append(order, e.Kind+" "+e.Node+e.Group)
	}
	if died > fenced {
		t.Errorf("the fence came before the death: %v", order)
	}
	t.Logf("events: %v", order)
}

// lint fails the test for every problem promlint finds in n's scrape.
func lint(t *testing.T, n *node) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(scrape(t, n))).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint on %s: %s: %s", n.name, p.Metric, p.Text)
	}
}

// eventLine is an event as `haven events -o json` prints it.
type eventLine struct {
	Index   string `json:"index"`
	Kind    string `json:"kind"`
	Group   string `json:"group"`
	Node    string `json:"node"`
	Refused string `json:"refused"`
}

type eventWatch struct {
	lines chan eventLine
}

// watchEvents runs `haven events --follow -o json` on n for kinds and
// returns once it watches: it asks for the kept create-group events too,
// which the agent replays atomically with its subscription, and waits for
// the first.
func (c *cluster) watchEvents(n *node, kinds ...string) *eventWatch {
	t := c.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, binary(t, "haven"), "--addr", n.grpcAddr(), "-o", "json", "events", "--follow",
		"--kind", strings.Join(append(kinds, "create-group"), ","))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &eventWatch{lines: make(chan eventLine, 1024)}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("haven events stderr: %s", stderr.String())
		}
	})
	go func() {
		defer close(w.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e eventLine
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e.Kind = "unparsed: " + sc.Text()
			}
			w.lines <- e
		}
	}()
	select {
	case e := <-w.lines:
		if e.Kind != "create-group" {
			t.Fatalf("first event %+v, want a kept create-group", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("haven events printed no kept create-group within 10s")
	}
	return w
}

// next is the next event that is not a create-group.
func (w *eventWatch) next(t *testing.T, timeout time.Duration) eventLine {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case e, ok := <-w.lines:
			switch {
			case !ok:
				t.Fatal("haven events ended")
			case strings.HasPrefix(e.Kind, "unparsed"):
				t.Fatalf("haven events printed %s", e.Kind)
			case e.Kind != "create-group":
				return e
			}
		case <-deadline:
			t.Fatalf("no event within %s", timeout)
		}
	}
}
