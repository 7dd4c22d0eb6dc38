package integration

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var (
	scaleNs       = flag.String("scale.n", "3,10,32,64,100", "agent counts of the scale scenario, one cluster each")
	scalePerNode  = flag.Int("scale.groups-per-node", 100, "groups per agent in the scale scenario")
	scaleMax      = flag.Int("scale.max-groups", 10000, "most groups of one scale cluster")
	scaleSteady   = flag.Duration("scale.steady", 2*time.Minute, "steady window of each scale cluster but the largest")
	scaleLast     = flag.Duration("scale.steady-last", 10*time.Minute, "steady window of the largest scale cluster")
	scaleProfiles = flag.String("scale.profile", "", "directory for CPU profiles (30 s, in the steady window) of each cluster's leader and one follower")
	scaleProcs    = flag.Int("scale.gomaxprocs", 0, "GOMAXPROCS of every agent (0: Go's default, one per core)")
)

// The light simulated VM of the scale scenario: 16 MiB of guest memory,
// mapped but untouched but for the counter's page, no disk, no dirtying,
// a guest tick every 2 s (one execution log record) and no watchdog. What
// it costs an agent is the scenario's RSS per agent over its groups.
func scaleGroup(name string) *havenv1.GroupSpec {
	return &havenv1.GroupSpec{
		Name: name,
		Resources: []*havenv1.Resource{
			{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG},
			{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config"}, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 16 << 20}},
		},
	}
}

func withScale(n int) option {
	return func(c *agent.Config) {
		// The default profile of one site's LAN: the timings a large
		// cluster runs with, not the tightened ones of the other tests.
		withDefaultTimings()(c)
		c.LogLevel = "info"
		c.Sim = agent.SimConfig{Tick: 2 * time.Second}
		c.Capacity = agent.Capacity{CPUMillis: 64000, MemoryBytes: 256 << 30}
		// Everyone joins through the first three, as an operator's
		// retry_join would list a few servers, not the whole cluster.
		c.Join = c.Join[:min(len(c.Join), 3)]
		// A snapshot at every size of the table, not only where the
		// groups' creation alone passes the default 8192 entries.
		c.Raft.SnapshotThreshold = 1024
	}
}

// scaleRow is one cluster's figures, one row of the README's table.
type scaleRow struct {
	n, groups                                int
	formed, online                           time.Duration
	cpuCluster, cpuLeader                    float64 // cores
	cpuAgent                                 float64 // cores, the median agent's
	rssMedian, rssLeader                     int64   // bytes
	logPerHour                               float64 // entries
	snapBytes                                int64
	snapTime                                 time.Duration
	listP50, listP99                         time.Duration
	killDisplaced                            int
	killRunning                              time.Duration
	leaderGrants, leaderMaxGap               time.Duration
	falseFailovers, freezes, deaths, expired int
	steady                                   time.Duration
}

// TestScenarioScale: for each N of -scale.n, N agents on loopback with the
// default LAN profile run 100 light groups each (at most -scale.max-groups),
// created through the API; it measures the cold start, a steady window
// (CPU, RSS, Raft log growth, snapshots, ListGroups latency, false
// failovers and freezes), the SIGKILL of a node holding its share of the
// groups and the SIGKILL of the leader, and checks the invariants. One
// line per figure, and the README's table at the end (make bench-scale).
func TestScenarioScale(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make bench-scale)")
	}
	binary(t, "haven")
	var ns []int
	for _, f := range strings.Split(*scaleNs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 3 || n > 250 {
			t.Fatalf("-scale.n: %q is not an agent count in 3..250", f)
		}
		ns = append(ns, n)
	}
	if *scaleProfiles != "" {
		if err := os.MkdirAll(*scaleProfiles, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if *scaleProcs > 0 {
		// The agents inherit it; this process read its own at start.
		t.Setenv("GOMAXPROCS", strconv.Itoa(*scaleProcs))
	}
	var rows []scaleRow
	for i, n := range ns {
		steady := *scaleSteady
		if i == len(ns)-1 {
			steady = *scaleLast
		}
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			rows = append(rows, runScale(t, n, min(n**scalePerNode, *scaleMax), steady))
		})
	}
	t.Logf("scenario scale table:\n%s", scaleTable(rows))
}

func scaleTable(rows []scaleRow) string {
	var b strings.Builder
	b.WriteString("| agents | groups | formed | groups online | CPU cluster / leader (cores) | RSS median / leader (MiB) | Raft log /h | snapshot | ListGroups p50 / p99 | kill a node: groups, all running | kill the leader: grants, longest freeze | false failovers / freezes |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		snap := "none in the run"
		if r.snapBytes > 0 {
			snap = fmt.Sprintf("%.1f MiB, %s", float64(r.snapBytes)/(1<<20), r.snapTime.Round(time.Millisecond))
		}
		fmt.Fprintf(&b, "| %d | %d | %s | %s | %.2f / %.2f | %d / %d | %.0f entries | %s | %s / %s | %d, %s | %s, %s | %d / %d |\n",
			r.n, r.groups, r.formed.Round(100*time.Millisecond), r.online.Round(100*time.Millisecond),
			r.cpuCluster, r.cpuLeader, r.rssMedian>>20, r.rssLeader>>20, r.logPerHour, snap,
			r.listP50.Round(time.Millisecond), r.listP99.Round(time.Millisecond),
			r.killDisplaced, r.killRunning.Round(100*time.Millisecond),
			r.leaderGrants.Round(100*time.Millisecond), r.leaderMaxGap.Round(100*time.Millisecond),
			r.falseFailovers, r.freezes)
	}
	return b.String()
}

func runScale(t *testing.T, n, groups int, steady time.Duration) scaleRow {
	row := scaleRow{n: n, groups: groups, steady: steady}
	c := newCluster(t, withScale(n))
	// Three servers bootstrap, as an operator's would; the rest only
	// join (bootstrap_expect 0) and do not count towards the servers'
	// expect. Every agent with bootstrap_expect 3, started at once, let an
	// agent that saw some three peers first bootstrap a second Raft
	// cluster beside the first; so did counting the joiners.
	for i := range n {
		if i < 3 {
			c.add(min(n, 3))
		} else {
			c.add(0)
		}
	}
	t0 := time.Now()
	for _, nd := range c.nodes {
		nd.start()
	}
	leader := c.leader(5 * time.Minute)
	c.nodesAlive(leader, n, 5*time.Minute)
	row.formed = time.Since(t0)
	t.Logf("scenario scale N=%d: %d agents formed one cluster in %s (leader %s)", n, n, row.formed.Round(time.Millisecond), leader.name)

	names := groupNames("s", groups)
	t1 := time.Now()
	// Profiles early in the creation and again at four fifths, where each
	// start's decision reads twice the groups of the middle.
	var started atomic.Int64
	if *scaleProfiles != "" {
		go func() {
			for _, at := range []struct {
				tag  string
				done int64
			}{{"create", 1}, {"create-late", int64(groups) * 4 / 5}} {
				for started.Load() < at.done {
					time.Sleep(time.Second)
				}
				if at.done == 1 {
					time.Sleep(5 * time.Second) // deliberate: well into the creation
				}
				var each sync.WaitGroup
				for _, p := range c.profiled(leader, nil) {
					each.Go(func() {
						profile(t, p.n, filepath.Join(*scaleProfiles, fmt.Sprintf("N%d-%s-%s.pprof", n, p.who, at.tag)))
					})
				}
				each.Wait()
			}
		}()
	}
	cpu := c.cpuByRole(leader)
	c.createScale(leader, names, &started)
	created := time.Since(t1)
	t.Logf("scenario scale N=%d: CPU while the groups were created: %s", n, cpu())
	before := c.allOnline(leader, names, 15*time.Minute, anyOwner)
	row.online = time.Since(t1)
	t.Logf("scenario scale N=%d: %d groups created and started in %s, all online %s after the first create (%.0f groups/s)",
		n, groups, created.Round(time.Millisecond), row.online.Round(time.Millisecond), float64(groups)/row.online.Seconds())

	c.measureSteady(&row, leader, names, before, steady)
	stopWatch := c.killNodeScale(&row, leader, names)
	c.killLeaderScale(&row, leader, names, stopWatch)
	c.checkInvariants(names)
	t.Logf("scenario scale row: %s", strings.Split(scaleTable([]scaleRow{row}), "\n")[2])
	return row
}

// createScale creates and starts the groups through via, 16 at a time, as
// a provisioning script would, counting those done in started.
func (c *cluster) createScale(via *node, names []string, started *atomic.Int64) {
	c.t.Helper()
	work := make(chan string)
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				_, err := via.api().CreateGroup(cctx, &havenv1.CreateGroupRequest{Spec: scaleGroup(name), RequestId: "create-" + name})
				if err == nil {
					_, err = via.api().StartGroup(cctx, &havenv1.StartGroupRequest{Name: name, RequestId: "start-" + name})
				}
				cancel()
				started.Add(1)
				if err != nil {
					err = fmt.Errorf("%s: %w", name, err)
					failed.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	for _, name := range names {
		if failed.Load() != nil {
			break
		}
		work <- name
	}
	close(work)
	wg.Wait()
	if err := failed.Load(); err != nil {
		c.t.Fatal(*err)
	}
}

// procCPU is a process's user and system time so far, from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command may hold spaces: the fields start after its ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// procRSS is a process's resident set in bytes.
func procRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (c *cluster) measureSteady(row *scaleRow, leader *node, names []string, before map[string]*havenv1.Group, d time.Duration) {
	t := c.t
	// Lease expiries, like CPU, count from each agent's start: those of
	// the creation are not the steady window's.
	cpu0 := map[*node]time.Duration{}
	expired0 := map[*node]float64{}
	for _, nd := range c.nodes {
		cpu0[nd] = procCPU(nd.proc.Process().Pid())
		expired0[nd], _ = metric(t, nd, "haven_lease_expiries_total")
	}
	byRole := c.cpuByRole(leader)
	st0, err := leader.status()
	if err != nil {
		t.Fatal(err)
	}
	applied0 := appliedByKind(t, leader)
	// ListGroups, every page, through the leader and a follower in turn,
	// spread over the window; and profiles, when asked for.
	var lists []time.Duration
	listDone := make(chan struct{})
	stopList := make(chan struct{})
	follower := c.follower(leader)
	go func() {
		defer close(listDone)
		tick := time.NewTicker(d / 60)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopList:
				return
			case <-tick.C:
			}
			via := leader
			if i%2 == 1 {
				via = follower
			}
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			resp, err := rpcclient.AllGroups(ctx, via.api(), &havenv1.ListGroupsRequest{})
			cancel()
			if err == nil && len(resp.GetGroups()) == len(names) {
				lists = append(lists, time.Since(t0))
			}
		}
	}()
	// The profiles run side by side, so that all three fall inside the
	// steady window.
	var profiled sync.WaitGroup
	if *scaleProfiles != "" {
		profiled.Add(1)
		time.AfterFunc(d/3, func() { // a third into the steady window
			defer profiled.Done()
			var each sync.WaitGroup
			for _, p := range c.profiled(leader, follower) {
				each.Go(func() { profile(t, p.n, filepath.Join(*scaleProfiles, fmt.Sprintf("N%d-%s.pprof", row.n, p.who))) })
			}
			each.Wait()
		})
	}
	w := c.watchSteady(leader, names, before, d)
	profiled.Wait()
	close(stopList)
	<-listDone
	var total time.Duration
	var each []time.Duration
	for _, nd := range c.nodes {
		used := procCPU(nd.proc.Process().Pid()) - cpu0[nd]
		total += used
		each = append(each, used)
		if nd == leader {
			row.cpuLeader = used.Seconds() / w.ran.Seconds()
		}
	}
	row.cpuCluster = total.Seconds() / w.ran.Seconds()
	t.Logf("scenario scale N=%d: CPU in the steady window: %s", row.n, byRole())
	row.cpuAgent = percentile(each, .5).Seconds() / w.ran.Seconds()
	var rss []time.Duration // sorted as durations: bytes
	for _, nd := range c.nodes {
		r := procRSS(nd.proc.Process().Pid())
		rss = append(rss, time.Duration(r))
		if nd == leader {
			row.rssLeader = r
		}
	}
	row.rssMedian = int64(median(rss))
	st1, err := leader.status()
	if err != nil {
		t.Fatal(err)
	}
	row.logPerHour = float64(st1.GetCommitIndex()-st0.GetCommitIndex()) / w.ran.Hours()
	var kinds []string
	for k, v := range appliedByKind(t, leader) {
		if d := v - applied0[k]; d > 0 {
			kinds = append(kinds, fmt.Sprintf("%s %.0f", k, d))
		}
	}
	slices.Sort(kinds)
	t.Logf("scenario scale N=%d: commands applied in the steady window: %s", row.n, strings.Join(kinds, ", "))
	row.snapBytes, row.snapTime = snapshotFigures(t, leader)
	row.listP50, row.listP99 = percentile(lists, .5), percentile(lists, .99)
	row.falseFailovers, row.freezes, row.deaths = w.moved, w.froze, w.deaths
	for _, nd := range c.nodes {
		v, _ := metric(t, nd, "haven_lease_expiries_total")
		row.expired += int(v - expired0[nd])
	}
	t.Logf("scenario scale N=%d steady %s: CPU %.3f cores in all, leader %.3f, median agent %.1f ms/s; RSS median %d MiB, leader %d MiB; Raft log %.0f entries/h; snapshot %d bytes in %s; ListGroups (%d groups, all pages) p50 %s p99 %s over %d calls; false failovers %d, freezes %d, false deaths %d, lease expiries %d",
		row.n, w.ran.Round(time.Second), row.cpuCluster, row.cpuLeader, row.cpuAgent*1000, row.rssMedian>>20, row.rssLeader>>20, row.logPerHour,
		row.snapBytes, row.snapTime.Round(time.Millisecond), len(names), row.listP50.Round(time.Millisecond), row.listP99.Round(time.Millisecond), len(lists),
		row.falseFailovers, row.freezes, row.deaths, row.expired)
}

// appliedByKind is the leader's count of applied commands by kind.
func appliedByKind(t *testing.T, n *node) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(scrape(t, n), "\n") {
		rest, ok := strings.CutPrefix(line, `haven_fsm_applied_total{kind="`)
		if !ok {
			continue
		}
		kind, v, _ := strings.Cut(rest, `"} `)
		out[kind], _ = strconv.ParseFloat(v, 64)
	}
	return out
}

// profiledNode is an agent the scenario profiles, named by its role.
type profiledNode struct {
	who string
	n   *node
}

// profiled is the leader, a follower other than busy and an outsider,
// those there are.
func (c *cluster) profiled(leader, busy *node) []profiledNode {
	out := []profiledNode{{"leader", leader}, {"follower", c.quietFollower(leader, busy)}}
	if o := c.outsider(leader, busy); o != nil {
		out = append(out, profiledNode{"outsider", o})
	}
	return out
}

// quietFollower is a follower other than busy (which serves the
// scenario's lists): what a follower costs on its own.
func (c *cluster) quietFollower(leader, busy *node) *node {
	for _, nd := range c.nodes {
		if nd != leader && nd != busy {
			return nd
		}
	}
	return busy
}

// outsider is the last agent by name outside the Raft configuration
// (raft.max_members is 9), which follows the log by stream; nil if there
// is none or the leader cannot say. The last one started need not be
// outside: at 100 agents n100 was a member, its profile full of Raft's
// heartbeats.
func (c *cluster) outsider(leader, busy *node) *node {
	roles, err := raftRoles(leader)
	if err != nil {
		c.t.Logf("no outsider to profile: %v", err)
		return nil
	}
	for i := len(c.nodes) - 1; i >= 0; i-- {
		nd := c.nodes[i]
		if nd != leader && nd != busy && roles[nd.name] == havenv1.RaftRole_RAFT_ROLE_NONE {
			return nd
		}
	}
	return nil
}

// snapshotFigures is the size of the leader's newest snapshot and the mean
// time of its snapshots (capture to compaction), from raft's metrics.
func snapshotFigures(t *testing.T, leader *node) (int64, time.Duration) {
	dirs, _ := filepath.Glob(filepath.Join(leader.cfg.DataDir, "raft", "snapshots", "*", "state.bin"))
	var size int64
	var newest time.Time
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.ModTime().After(newest) {
			newest, size = fi.ModTime(), fi.Size()
		}
	}
	sum, _ := metric(t, leader, "haven_raft_snapshot_take_seconds_sum")
	count, _ := metric(t, leader, "haven_raft_snapshot_take_seconds_count")
	if count == 0 {
		return size, 0
	}
	return size, time.Duration(sum / count * float64(time.Second))
}

// profile saves a 30 s CPU profile of n's agent to path.
func profile(t *testing.T, n *node, path string) {
	pprofGet(t, n, "profile?seconds=30", path)
}

// pprofGet saves n's /debug/pprof/what to path.
func pprofGet(t *testing.T, n *node, what, path string) {
	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Get(fmt.Sprintf("http://%s:%d/debug/pprof/%s", n.cfg.BindAddr, n.cfg.Ports.Metrics, what))
	if err != nil {
		t.Logf("profile of %s: %v", n.name, err)
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		t.Logf("profile of %s: %v", n.name, err)
	}
}

// killNodeScale SIGKILLs a follower holding groups and times until every
// group it held runs elsewhere; then restarts it.
func (c *cluster) killNodeScale(row *scaleRow, leader *node, names []string) (stopWatch func()) {
	t := c.t
	groups, err := groupStates(leader)
	if err != nil {
		t.Fatal(err)
	}
	victim := c.ownerOfSome(groups, leader)
	var displaced []string
	for _, g := range groups {
		if g.GetOwner() == victim.name {
			displaced = append(displaced, g.GetSpec().GetName())
		}
	}
	row.killDisplaced = len(displaced)
	// The leader's failover counters split the time in two: until it
	// committed the last displaced group's failover, and from there until
	// every one of them ran and reported it.
	// A scrape that fails is a poll that tells nothing: at 100 agents
	// the leader's page came later than the scrape's 5 s after the kill.
	failovers := func() (count, seconds float64, err error) {
		page, err := tryScrape(leader)
		if err != nil {
			return 0, 0, err
		}
		v := sumMetrics(t, page, []string{"haven_failover_duration_seconds_count", "haven_failover_duration_seconds_sum"})
		return v[0], v[1], nil
	}
	// What every agent does in the minute after a node kill (at 100
	// agents the load went past 100 and the leader stepped down): CPU
	// profiles from the kill on, heaps at the end.
	var profiled sync.WaitGroup
	var watched []profiledNode
	if *scaleProfiles != "" {
		watched = slices.DeleteFunc(c.profiled(leader, victim), func(p profiledNode) bool { return p.n == victim })
	}
	count0, sum0, err := failovers()
	if err != nil {
		t.Fatal(err)
	}
	checks0, err := leaseChecks(t, leader)
	if err != nil {
		t.Fatal(err)
	}
	// Both watches go on past the victim's restart: at 100 agents the
	// leader lost its lease after that, not during the failover.
	watch := c.watchLeadership(leader, fmt.Sprintf("N%d-kill", row.n))
	t.Cleanup(watch)
	t.Cleanup(c.sampleCPU(fmt.Sprintf("N%d kill", row.n), 120))
	t0 := time.Now()
	victim.kill()
	for _, p := range watched {
		profiled.Go(func() { profile(t, p.n, filepath.Join(*scaleProfiles, fmt.Sprintf("N%d-kill-%s.pprof", row.n, p.who))) })
	}
	defer func() {
		profiled.Wait()
		for _, p := range watched {
			pprofGet(t, p.n, "heap", filepath.Join(*scaleProfiles, fmt.Sprintf("N%d-kill-%s.heap", row.n, p.who)))
		}
	}()
	decided := "not seen (the leader changed?)"
	// Every 500 ms: a scrape of the leader every 50 ms was load on the
	// one process the failover waits for; the figures come from the logs.
	waitEvery(t, 2*time.Minute, 500*time.Millisecond, "the failovers committed", func() error {
		count, sum, err := failovers()
		if err != nil {
			return err
		}
		if count-count0 >= float64(row.killDisplaced) {
			decided = fmt.Sprintf("%s after, %.2f s after the victim's last grant on the mean",
				time.Since(t0).Round(time.Millisecond), (sum-sum0)/(count-count0))
			return nil
		}
		if st, err := leader.status(); err == nil && st.GetLeader() != leader.name {
			return nil // no longer the leader: its counters tell nothing more
		}
		return errNotYet
	})
	c.displacedOnline(leader, displaced, victim.name, 2*time.Minute)
	polled := time.Since(t0)
	// The answers above come late on a loaded machine (the metrics page
	// and the GetGroups queue behind everything else): the figures are
	// read where they happened, in the leader's log and the new owners'.
	committed := "not in its log"
	if at := logTime(t, leader, "group failed over", "from="+victim.name); !at.IsZero() {
		committed = at.Sub(t0).Round(time.Millisecond).String()
	}
	// The leader's own account of the time from the victim's last grant
	// to the commit: how late its look began, then the lock, the
	// decision and the commit.
	took := "not in its log"
	if line := logLine(t, leader, "node's groups failed over", "node="+victim.name); line != "" {
		took = strings.Join([]string{logField(line, "silent_for"), logField(line, "lock_wait"), logField(line, "decide"), logField(line, "commit")}, " / ")
	}
	t.Logf("scenario scale N=%d: the leader's failover of %s: silent for / lock wait / decision / commit: %s", row.n, victim.name, took)
	if checks, err := leaseChecks(t, leader); err == nil {
		d := checks.minus(checks0)
		t.Logf("scenario scale N=%d: the leader's lease checks from the kill on: %.0f, mean %.1f ms, %.0f over 1 s; renewals refused %.0f",
			row.n, d.count, 1000*d.sum/max(d.count, 1), d.count-d.within1s, d.refused)
	}
	ran, detail := c.ranElsewhere(displaced, victim.name, t0, victim.cfg.Lease.Duration)
	row.killRunning = ran.Sub(t0)
	t.Logf("scenario scale N=%d: after the commit: %s", row.n, detail)
	t.Logf("scenario scale N=%d: SIGKILL of %s, which held %d groups (%.1f %%): failovers committed %s after by the leader's log (its metrics: %s); all running elsewhere %s after by the agents' logs, %s by the API (failover_after %s)",
		row.n, victim.name, row.killDisplaced, 100*float64(row.killDisplaced)/float64(len(names)), committed, decided,
		row.killRunning.Round(time.Millisecond), polled.Round(time.Millisecond), victim.cfg.Lease.FailoverAfter)
	victim.start()
	return watch
}

// leaseCheckFigures are a leader's counters of its lease checks
// (haven_lease_verify_duration_seconds) and refused renewals: a grant
// waits for the check, so a slow one is every node's slow renewal.
type leaseCheckFigures struct{ count, sum, within1s, refused float64 }

func (a leaseCheckFigures) minus(b leaseCheckFigures) leaseCheckFigures {
	return leaseCheckFigures{a.count - b.count, a.sum - b.sum, a.within1s - b.within1s, a.refused - b.refused}
}

func leaseChecks(t *testing.T, n *node) (leaseCheckFigures, error) {
	page, err := tryScrape(n)
	if err != nil {
		return leaseCheckFigures{}, err
	}
	// A series not yet on the page (no renewal refused) is 0.
	v := func(name string) float64 { f, _ := series(t, page, name); return f }
	return leaseCheckFigures{
		count:    v("haven_lease_verify_duration_seconds_count"),
		sum:      v("haven_lease_verify_duration_seconds_sum"),
		within1s: v(`haven_lease_verify_duration_seconds_bucket{le="1.024"}`),
		refused:  v(`haven_lease_renewals_total{result="refused"}`),
	}, nil
}

// watchLeadership polls the leader's status every second until stop and
// logs when it stops answering as the leader. When it does, and
// -scale.profile is set, it saves the goroutines of every Raft member
// then and 20 s later (tag-member-when.goroutines): at 100 agents the
// leader lost its lease after a node kill and no leader was elected for
// minutes, and the logs could not say what the members were doing.
func (c *cluster) watchLeadership(leader *node, tag string) (stop func()) {
	t := c.t
	roles, err := raftRoles(leader)
	if err != nil {
		t.Logf("watch of the leadership: %v", err)
		return func() {}
	}
	var members []*node
	for _, nd := range c.nodes {
		if r := roles[nd.name]; r != havenv1.RaftRole_RAFT_ROLE_NONE && r != havenv1.RaftRole_RAFT_ROLE_UNSPECIFIED {
			members = append(members, nd)
		}
	}
	dump := func(when string) {
		if *scaleProfiles == "" {
			return
		}
		var wg sync.WaitGroup
		for _, nd := range members {
			if nd.running() {
				wg.Go(func() {
					pprofGet(t, nd, "goroutine?debug=2", filepath.Join(*scaleProfiles, fmt.Sprintf("%s-%s-%s.goroutines", tag, nd.name, when)))
				})
			}
		}
		wg.Wait()
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var lost time.Time
		later := false
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if !lost.IsZero() {
				if !later && time.Since(lost) > 20*time.Second {
					later = true
					dump("later")
				}
				continue
			}
			if st, err := leader.status(); err != nil || st.GetRaftState() != "Leader" {
				lost = time.Now()
				t.Logf("%s: %s no longer answers as the leader at %s (%v, state %q, leader %q)",
					tag, leader.name, lost.Format(time.StampMilli), err, st.GetRaftState(), st.GetLeader())
				dump("lost")
			}
		}
	})
	return sync.OnceFunc(func() { close(done); wg.Wait() })
}

// leaderFrom returns the leader as from, and then the node it names, say
// it is: the scale scenario's way to find the leader without asking every
// agent each second, which at 100 agents (a status call counts every
// group) saturated the machine some 30 s after the node kill, when
// killLeaderScale began to look for the leader that way.
func (c *cluster) leaderFrom(from *node, timeout time.Duration) *node {
	c.t.Helper()
	ask := from
	waitEvery(c.t, timeout, 500*time.Millisecond, "a node that says it leads", func() error {
		st, err := ask.status()
		switch {
		case err != nil:
			ask = from
			return err
		case st.GetRaftState() == "Leader":
			return nil
		case st.GetLeader() != "" && c.node(st.GetLeader()) != nil:
			ask = c.node(st.GetLeader())
		default:
			ask = from
		}
		return fmt.Errorf("%s does not lead (state %q, leader %q)", st.GetNode(), st.GetRaftState(), st.GetLeader())
	})
	return ask
}

// cpuByRole starts counting the agents' CPU; the function it returns says
// how many cores they used since, in all and by Raft role (the leader, the
// other members, the agents outside the configuration that follow the log
// by stream), with the busiest outsider: where a phase's CPU went.
func (c *cluster) cpuByRole(leader *node) func() string {
	roles, err := raftRoles(leader)
	if err != nil {
		return func() string { return "roles unknown: " + err.Error() }
	}
	t0 := time.Now()
	cpu0 := map[*node]time.Duration{}
	for _, nd := range c.nodes {
		if nd.running() {
			cpu0[nd] = procCPU(nd.proc.Process().Pid())
		}
	}
	return func() string {
		secs := time.Since(t0).Seconds()
		var all, members, outsiders, lead, top time.Duration
		var nMembers, nOutsiders int
		var busiest string
		for nd, was := range cpu0 {
			d := procCPU(nd.proc.Process().Pid()) - was
			if d < 0 {
				continue // restarted
			}
			all += d
			switch {
			case nd == leader:
				lead = d
			case roles[nd.name] == havenv1.RaftRole_RAFT_ROLE_NONE:
				outsiders += d
				nOutsiders++
				if d > top {
					top, busiest = d, nd.name
				}
			default:
				members += d
				nMembers++
			}
		}
		return fmt.Sprintf("%.2f cores over %s: leader %.2f, %d other members %.2f, %d outsiders %.2f (mean %.1f ms/s, busiest %s %.1f ms/s)",
			all.Seconds()/secs, time.Since(t0).Round(time.Second), lead.Seconds()/secs, nMembers, members.Seconds()/secs,
			nOutsiders, outsiders.Seconds()/secs, outsiders.Seconds()*1000/secs/float64(max(1, nOutsiders)), busiest, top.Seconds()*1000/secs)
	}
}

// sampleCPU logs, for each of the next seconds (at most seconds of them,
// or until stop), the CPU the agents used in all, the load average and
// the three busiest agents: what the machine did in the seconds after a
// fault, where the logs show only what each agent did.
func (c *cluster) sampleCPU(tag string, seconds int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		last := map[*node]time.Duration{}
		for _, nd := range c.nodes {
			if nd.running() {
				last[nd] = procCPU(nd.proc.Process().Pid())
			}
		}
		selfLast := procCPU(os.Getpid())
		prev := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 1; i <= seconds; i++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			now := time.Now()
			type use struct {
				name string
				d    time.Duration
			}
			var uses []use
			var sum time.Duration
			for _, nd := range c.nodes {
				if !nd.running() {
					continue
				}
				cur := procCPU(nd.proc.Process().Pid())
				if was, ok := last[nd]; ok && cur >= was { // a restart is a new process
					uses = append(uses, use{nd.name, cur - was})
					sum += cur - was
				}
				last[nd] = cur
			}
			slices.SortFunc(uses, func(a, b use) int { return int(b.d - a.d) })
			var top []string
			for _, u := range uses[:min(3, len(uses))] {
				top = append(top, fmt.Sprintf("%s %.2f", u.name, u.d.Seconds()/now.Sub(prev).Seconds()))
			}
			self := procCPU(os.Getpid())
			load, _ := os.ReadFile("/proc/loadavg")
			c.t.Logf("%s +%2ds: agents %.2f cores, this test %.2f, load %s, busiest %s", tag, i, sum.Seconds()/now.Sub(prev).Seconds(),
				(self-selfLast).Seconds()/now.Sub(prev).Seconds(), strings.Fields(string(load))[0], strings.Join(top, ", "))
			selfLast = self
			prev = now
		}
	})
	return sync.OnceFunc(func() { close(done); wg.Wait() })
}

// ranElsewhere returns when the last of names started on another node
// than from after t0, by the agents' logs ("vm started"): a guest's first
// execution record comes only at its first tick, up to 2 s later. It also
// says where the time after the commit went: the driver's "vm starting"
// line carries the end of the grant the start ran under, and that end
// less the lease is when the renewal that confirmed the new epoch was
// sent, which a node does at once when it applies the assignment.
func (c *cluster) ranElsewhere(names []string, from string, t0 time.Time, lease time.Duration) (time.Time, string) {
	want := map[string]bool{}
	for _, name := range names {
		want[name+"/vm"] = true
	}
	type start struct {
		node      string
		sent, ran time.Time
	}
	first := map[string]start{}
	for _, n := range c.nodes {
		if n.name == from {
			continue
		}
		data, err := os.ReadFile(n.proc.LogPath)
		if err != nil {
			continue
		}
		sent := map[string]time.Time{}
		for line := range strings.Lines(string(data)) {
			starting := strings.Contains(line, `msg="vm starting"`)
			if !starting && !strings.Contains(line, `msg="vm started"`) {
				continue
			}
			at, ok := lineTime(line)
			vm := logField(line, "vm")
			if !ok || !want[vm] || at.Before(t0) {
				continue
			}
			if starting {
				if end, err := time.Parse(time.RFC3339Nano, logField(line, "lease_end")); err == nil {
					sent[vm] = end.Add(-lease)
				}
				continue
			}
			if f, seen := first[vm]; !seen || at.Before(f.ran) {
				first[vm] = start{node: n.name, sent: sent[vm], ran: at}
			}
		}
	}
	var last start
	var sent, granted []time.Duration
	for vm := range want {
		f, ok := first[vm]
		if !ok {
			c.t.Fatalf("%s is online elsewhere but no agent logged its start", vm)
		}
		if f.ran.After(last.ran) {
			last = f
		}
		if !f.sent.IsZero() {
			sent = append(sent, f.sent.Sub(t0))
			granted = append(granted, f.ran.Sub(f.sent))
		}
	}
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	detail := "no grant times in the logs"
	if len(sent) > 0 {
		slices.Sort(sent)
		slices.Sort(granted)
		lastSent := "at a time not in its log"
		if !last.sent.IsZero() {
			lastSent = r(last.sent.Sub(t0)).String() + " after the kill"
		}
		detail = fmt.Sprintf("the confirming renewal sent %s after the kill (median; last %s), the start %s after it (median; longest %s); the last to start, on %s, sent it %s",
			r(sent[len(sent)/2]), r(sent[len(sent)-1]), r(granted[len(granted)/2]), r(granted[len(granted)-1]), last.node, lastSent)
	}
	return last.ran, detail
}

// logField reads one field of a line of an agent's log (log/slog's text).
func logField(line, key string) string {
	_, v, ok := strings.Cut(line, " "+key+"=")
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, " ")
	return strings.TrimSpace(v)
}

// displacedOnline waits until each of names is online on another node
// than from, asking via for the groups not yet so, one by one. A complete
// paged ListGroups of 10,000 groups every 50 ms (allOnline) kept the
// leader busy listing while it failed the groups over, and its answer
// came up to a second late.
func (c *cluster) displacedOnline(via *node, names []string, from string, timeout time.Duration) {
	t := c.t
	left := names
	waitEvery(t, timeout, 500*time.Millisecond, "displaced groups online elsewhere", func() error {
		var still []string
		var last error
		for _, name := range left {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := via.api().GetGroup(cctx, &havenv1.GetGroupRequest{Name: name})
			cancel()
			g := resp.GetGroup()
			switch {
			case err != nil:
				last = err
			case g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || g.GetOwner() == from:
				last = fmt.Errorf("group %s: %v owner %q epoch %d (%s)", name, g.GetState(), g.GetOwner(), g.GetEpoch(), g.GetStateReason())
			default:
				continue
			}
			still = append(still, name)
		}
		left = still
		if len(left) > 0 {
			return fmt.Errorf("%d groups not yet online elsewhere, as %w", len(left), last)
		}
		return nil
	})
}

// killLeaderScale SIGKILLs the leader and times until a new leader grants
// leases; it then finds the longest gap in the execution of every group
// that did not need a failover (those of the other nodes).
func (c *cluster) killLeaderScale(row *scaleRow, was *node, names []string, stopWatch func()) {
	t := c.t
	leader := c.leaderFrom(was, time.Minute)
	stopWatch() // the leader about to be killed is the one it watches
	groups, err := groupStates(leader)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	leader.kill()
	var next *node
	// One agent's status a poll, in turn: asking every agent each poll
	// (a status call counts every group) kept 100 agents busy answering
	// while they elected a leader.
	asked := 0
	waitEvery(t, 2*time.Minute, 250*time.Millisecond, "a new leader granting leases", func() error {
		if next == nil {
			nd := c.nodes[asked%len(c.nodes)]
			asked++
			if nd == leader || !nd.running() {
				return errNotYet
			}
			st, err := nd.status()
			if err != nil || st.GetLeader() == "" || st.GetLeader() == leader.name {
				return errNotYet
			}
			next = c.node(st.GetLeader())
		}
		// A page that does not come is a poll that tells nothing.
		page, err := tryScrape(next)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(page, "\n") {
			if v, ok := strings.CutPrefix(line, `haven_lease_renewals_total{result="granted"} `); ok {
				if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 {
					return nil
				}
			}
		}
		return fmt.Errorf("%s leads but has granted nothing", next.name)
	})
	row.leaderGrants = time.Since(t0)
	// Every group runs again (the old leader's own by failover), then the
	// execution logs show how long the others stood still.
	c.allOnlineEvery(next, names, 2*time.Minute, time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != leader.name })
	// A gap ends with a tick: wait until every other group ticked after
	// all were online, so that no gap is still open when it is measured.
	online := time.Now()
	waitFor(t, time.Minute, "a tick of every group after the leader change", func() error {
		for _, name := range names {
			if groups[name].GetOwner() == leader.name {
				continue
			}
			recs := c.execRecords(name)
			if len(recs) == 0 || !recs[len(recs)-1].Wall.After(online) {
				return fmt.Errorf("%s has not ticked since %s", name, online.Format(time.StampMilli))
			}
		}
		return nil
	})
	for _, name := range names {
		if groups[name].GetOwner() == leader.name {
			continue
		}
		var last time.Time
		for _, r := range c.execRecords(name) {
			if r.Wall.Before(t0.Add(-5 * time.Second)) {
				continue
			}
			if !last.IsZero() {
				row.leaderMaxGap = max(row.leaderMaxGap, r.Wall.Sub(last))
			}
			last = r.Wall
		}
	}
	fa := leader.cfg.Lease.FailoverAfter
	t.Logf("scenario scale N=%d: SIGKILL of the leader %s: %s leads and grants %s after; longest pause of a group on another node %s (failover_after %s, guest tick 2s)",
		row.n, leader.name, next.name, row.leaderGrants.Round(time.Millisecond), row.leaderMaxGap.Round(time.Millisecond), fa)
	if row.leaderMaxGap >= fa {
		t.Errorf("a group stood still %s across the leader change, not less than failover_after %s", row.leaderMaxGap, fa)
	}
	leader.start()
}
