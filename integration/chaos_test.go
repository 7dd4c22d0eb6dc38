package integration

import (
	"flag"
	"math/rand"
	"testing"
	"time"
)

var (
	chaosSeed     = flag.Int64("chaos.seed", 0, "seed of the randomized fault test (0: from the clock; the test prints it)")
	chaosDuration = flag.Duration("chaos.duration", 40*time.Second, "how long the randomized fault test injects faults (make chaos runs it longer)")
)

// TestRandomFaults injects a seeded random sequence of faults — SIGKILL and
// restart, SIGSTOP and SIGCONT, partitions, clean restarts — into a
// five-node cluster running groups, then heals everything and runs the
// invariant checker. The fault schedule is reproducible from the printed
// seed (the timing of a real cluster is not).
func TestRandomFaults(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("chaos seed %d (rerun with -args -chaos.seed=%d)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	c := newLabCluster(t, []string{"a", "a", "a", "b", "b"})
	c.startN(5)
	leader := c.leaderOf()
	names := groupNames("r", 20)
	c.createAndStart(leader, names)
	c.allOnline(leader, names, 60*time.Second, anyOwner)

	hold := func(min, max time.Duration) time.Duration {
		return min + time.Duration(rng.Int63n(int64(max-min)))
	}
	end := time.Now().Add(*chaosDuration)
	for step := 1; time.Now().Before(end); step++ {
		n := c.nodes[rng.Intn(len(c.nodes))]
		switch f := rng.Intn(4); f {
		case 0:
			d := hold(500*time.Millisecond, 6*time.Second)
			t.Logf("step %d: SIGKILL %s, restart after %s", step, n.name, d.Round(time.Millisecond))
			n.kill()
			time.Sleep(d)
			n.start()
		case 1:
			d := hold(200*time.Millisecond, 5*time.Second)
			t.Logf("step %d: SIGSTOP %s for %s", step, n.name, d.Round(time.Millisecond))
			n.pause()
			time.Sleep(d)
			n.resume()
		case 2:
			d := hold(500*time.Millisecond, 8*time.Second)
			t.Logf("step %d: isolate %s for %s", step, n.name, d.Round(time.Millisecond))
			c.lab.Isolate(n.host)
			time.Sleep(d)
			c.lab.HealAll()
		case 3:
			t.Logf("step %d: clean restart of %s", step, n.name)
			n.stop()
			n.start()
		}
		time.Sleep(hold(200*time.Millisecond, 2*time.Second))
	}
	c.lab.HealAll()
	for _, n := range c.nodes {
		if !n.running() {
			n.start()
		}
	}
	leader = c.leaderOf()
	c.allOnline(leader, names, 90*time.Second, anyOwner)
	c.checkInvariants(names)
}
