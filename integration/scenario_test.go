package integration

import (
	"flag"
	"fmt"
	"sort"
	"testing"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var scenario = flag.Bool("scenario", false, "run the scenario runners that print cluster figures (slow; make scenario)")

var scenarioRuns = flag.Int("runs", 5, "runs per scenario figure")

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
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

// TestScenarioFailover prints, for 5 nodes and 100 groups, the time from
// SIGKILL of an owner to the leader's first failover decision committed
// ("detection") and to the last displaced group executing on its new node
// (its first guest tick there, from the exec log), with tightened and
// default timings.
func TestScenarioFailover(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make scenario)")
	}
	binary(t, "haven")
	for _, timing := range []struct {
		name string
		opts []option
	}{
		{"tightened", nil},
		{"default", []option{withDefaultTimings()}},
	} {
		var detect, running []time.Duration
		var displaced []int
		for run := 0; run < *scenarioRuns; run++ {
			t.Run(fmt.Sprintf("%s-%d", timing.name, run), func(t *testing.T) {
				c := newCluster(t, timing.opts...)
				c.startN(5)
				leader := c.leader(60 * time.Second)
				names := groupNames("f", 100)
				c.createAndStart(leader, names)
				before := c.allOnline(leader, names, 120*time.Second, anyOwner)
				victim := c.ownerOfSome(before, leader)
				var moved []string
				for _, name := range names {
					if before[name].GetOwner() == victim.name {
						moved = append(moved, name)
					}
				}
				killed := time.Now()
				victim.kill()
				var first time.Duration
				waitFor(t, 120*time.Second, "first failover committed", func() error {
					gs, err := groupStates(leader)
					if err != nil {
						return err
					}
					for _, name := range moved {
						if gs[name].GetEpoch() > before[name].GetEpoch() {
							first = time.Since(killed)
							return nil
						}
					}
					return errNotYet
				})
				after := c.allOnline(leader, names, 120*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
				var last time.Time
				for _, name := range moved {
					g := after[name]
					var firstTick time.Time
					waitFor(t, 30*time.Second, name+" executing on its new node", func() error {
						for _, r := range c.execRecords(name) {
							if r.Node == g.GetOwner() && r.Epoch == g.GetEpoch() {
								firstTick = r.Wall
								return nil
							}
						}
						return errNotYet
					})
					if firstTick.After(last) {
						last = firstTick
					}
				}
				detect = append(detect, first)
				running = append(running, last.Sub(killed))
				displaced = append(displaced, len(moved))
				c.checkInvariants(names)
			})
		}
		fmt.Printf("scenario failover timing=%s nodes=5 groups=100 runs=%d displaced=%v kill_to_first_failover_median=%s (all %v) kill_to_all_displaced_running_median=%s (all %v)\n",
			timing.name, len(detect), displaced, median(detect).Round(time.Millisecond), round(detect), median(running).Round(time.Millisecond), round(running))
	}
}
