package heartbeat

import (
	"flag"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"
)

var idleCost = flag.Bool("gossip.idle-cost", false, "measure what an idle pool costs with and without memberlist's compression (TestIdleGossipCost, about a minute)")

func processCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestIdleGossipCost weighs memberlist's compression, which poolConfig
// turns off: 20 members of one site with the default profiles, idle, in
// this process, in alternating rounds so that both see the same machine.
// It prints the process's CPU and allocation per second; run it with
// go test -run TestIdleGossipCost ./heartbeat/ -v -args -gossip.idle-cost
func TestIdleGossipCost(t *testing.T) {
	if !*idleCost {
		t.Skip("a measurement: run with -gossip.idle-cost")
	}
	const members, window = 20, 10 * time.Second
	for round := range 3 {
		for _, compress := range []bool{true, false} {
			// Not start: its debug log into the test's output would cost
			// more than what is weighed.
			var nodes []*Membership
			for i := range members {
				cfg := testConfig(fmt.Sprintf("r%d-%v-%d", round, compress, i), "A")
				cfg.SameSite, cfg.CrossSite, cfg.compress = SameSiteDefaults(), CrossSiteDefaults(), compress
				m, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				nodes = append(nodes, m)
				if i > 0 {
					if _, err := m.Join([]string{nodes[0].WANAddr()}); err != nil {
						t.Fatal(err)
					}
				}
			}
			waitFor(t, "every member seeing all in both pools", func() error {
				for _, m := range nodes {
					if err := m.poolSizes(members, members); err != nil {
						return err
					}
				}
				return nil
			})
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			c0 := processCPU(t)
			time.Sleep(window) // deliberate: the idle window measured
			c1 := processCPU(t)
			runtime.ReadMemStats(&m1)
			t.Logf("round %d, compression %-5v: %d idle members: CPU %.1f ms/s, %.0f KiB/s allocated",
				round, compress, members, (c1-c0).Seconds()*1000/window.Seconds(), float64(m1.TotalAlloc-m0.TotalAlloc)/window.Seconds()/1024)
			for _, n := range nodes {
				if err := n.Shutdown(); err != nil {
					t.Error(err)
				}
			}
		}
	}
}
