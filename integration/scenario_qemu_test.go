package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver/qemu/testguest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestScenarioQemuFailover prints the failover time of a real VM: three
// agents with the qemu driver (TCG), one group booting the test guest;
// the owner's agent is SIGKILLed, the group comes up elsewhere, the agent
// returns (and kills its frozen QEMU), and again, -runs times. Two figures
// per run: SIGKILL to the group online on its new node (haven's part:
// detection, the lease, failover_after, the start), and from there to the
// guest's first tick on its console (the guest's boot under TCG).
func TestScenarioQemuFailover(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make bench-qemu)")
	}
	for _, timing := range []struct {
		name string
		opts []option
	}{
		{"tightened", nil},
		{"default", []option{withDefaultTimings()}},
	} {
		t.Run(timing.name, func(t *testing.T) {
			qc := newQemuCluster(t, 3, timing.opts...)
			g := qc.group("web", testguest.Options{MemMiB: 16, TickMs: 20})
			var online, booted []time.Duration
			for run := 0; run < *scenarioRuns; run++ {
				owner := qc.node(g.GetOwner())
				old := qc.qemuPID(owner.name, "web")
				owner.kill()
				killed := time.Now()
				leader := qc.leader(60 * time.Second)
				g = qc.allOnline(leader, []string{"web"}, 120*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != owner.name })["web"]
				up := time.Since(killed)
				qc.console(g.GetOwner(), "web").Wait(t, 120*time.Second, "the guest counting on "+g.GetOwner(), func(s *testguest.Serial) bool { return s.Last().N > 0 })
				ticked := time.Since(killed)
				online, booted = append(online, up), append(booted, ticked-up)
				t.Logf("run %d: %s killed; %s online after %s, its guest ticking %s later", run, owner.name, g.GetOwner(), up.Round(time.Millisecond), (ticked - up).Round(time.Millisecond))
				owner.start()
				waitFor(t, 60*time.Second, "the old QEMU gone", func() error {
					if s := procState(old); s != "" && s != "Z" {
						return fmt.Errorf("pid %d in state %s", old, s)
					}
					return nil
				})
			}
			fmt.Printf("scenario qemu-failover timing=%s runs=%d kill_to_online_median=%s (all %v) online_to_first_tick_median=%s (all %v)\n",
				timing.name, *scenarioRuns, median(online), online, median(booted), booted)
		})
	}
}
