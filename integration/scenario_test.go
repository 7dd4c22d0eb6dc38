package integration

import (
	"flag"
	"fmt"
	"sort"
	"testing"
	"time"
)

var scenario = flag.Bool("scenario", false, "run the scenario runners that print cluster figures (slow; make scenario)")

var scenarioRuns = flag.Int("runs", 5, "runs per scenario figure")

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestScenarioElection prints the time from three cold starts to a leader
// that all nodes agree on, and from SIGKILL of the leader to a new leader
// that both survivors agree on, with tightened and default timings.
func TestScenarioElection(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make scenario)")
	}
	binary(t, "haven") // build outside the timed part
	for _, timing := range []struct {
		name string
		opts []option
	}{
		{"tightened", nil},
		{"default", []option{withDefaultTimings()}},
	} {
		var cold, failover []time.Duration
		for run := 0; run < *scenarioRuns; run++ {
			t.Run(fmt.Sprintf("%s-%d", timing.name, run), func(t *testing.T) {
				c := newCluster(t, timing.opts...)
				for i := 0; i < 3; i++ {
					c.add(3)
				}
				start := time.Now()
				for _, n := range c.nodes {
					n.start()
				}
				leader := c.leader(60 * time.Second)
				cold = append(cold, time.Since(start))
				killed := time.Now()
				leader.kill()
				c.leader(60 * time.Second)
				failover = append(failover, time.Since(killed))
			})
		}
		fmt.Printf("scenario election timing=%s runs=%d cold_start_to_leader_median=%s (all %v) leader_kill_to_new_leader_median=%s (all %v)\n",
			timing.name, len(cold), median(cold).Round(time.Millisecond), round(cold), median(failover).Round(time.Millisecond), round(failover))
	}
}

func round(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
