package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// metric reads one sample from an agent's /metrics: the value of the line
// that starts with series (name and labels as Prometheus writes them).
func metric(t *testing.T, n *node, series string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(scrape(t, n), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q", series, line)
			}
			return f, true
		}
	}
	return 0, false
}

// TestMetrics: the leader's /metrics shows that it leads, the groups by
// state and, after a node dies, the failover it made; a follower's shows
// it does not lead and counts the commands it applied.
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
	victim := c.ownerOfSome(before, leader)
	moved := 0
	for _, name := range names {
		if before[name].GetOwner() == victim.name {
			moved++
		}
	}
	victim.kill()
	c.allOnline(leader, names, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != victim.name })
	if v, _ := metric(t, leader, `haven_failovers_total{outcome="restarted"}`); int(v) != moved {
		t.Errorf(`haven_failovers_total{outcome="restarted"} = %v, want %d`, v, moved)
	}
	waitFor(t, 20*time.Second, "the leader's gossip to count the victim dead", func() error {
		if v, _ := metric(t, leader, `haven_members{state="dead"}`); v != 1 {
			return fmt.Errorf(`haven_members{state="dead"} = %v`, v)
		}
		return nil
	})
}
