package integration

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The move scenarios (make bench-moves): figures of live and quick moves
// of a large simulated VM between two agent processes on loopback.

var (
	benchMoves      = flag.Int("moves", 20, "moves per figure of the move scenarios (make bench-moves)")
	benchMoveMem    = flag.Int64("move.mem", 1<<30, "memory of the VM the move scenarios move, in bytes")
	benchMoveSettle = flag.Bool("move.settle", false, "before the next move, wait until the last one's source has discarded its paused copy (see moveBench.settle)")
	benchMoveDirty  = flag.String("move.dirty", "0,64,256,1024", "guest dirty rates of the live-move scenario, in MiB/s, comma-separated; RATE@LIMIT also caps the moves' bandwidth at LIMIT MiB/s")
)

// benchTick is the guest's tick in the move scenarios. A guest gap read
// from the execution log is late by up to one tick, since the source's
// pause falls anywhere between two ticks; 5 ms keeps that small and costs
// one VM 200 records a second.
const benchTick = 5 * time.Millisecond

// quickOverhead is what a quick move may add to writing and reading its
// state: the switchover's Raft commit, the grant and the activation.
const quickOverhead = 200 * time.Millisecond

// moveBench is a cluster of three agents whose sim guests dirty their
// whole memory at one rate, running one group whose VM has mem bytes, all
// of them written with data (FillVM), on one of the two followers. Its
// moves go back and forth between those two, so the leader's work is not
// on either end.
type moveBench struct {
	c      *cluster
	leader *node
	name   string
	mem    int64
	pair   [2]*node
	g      *havenv1.Group
}

func newMoveBench(t *testing.T, dirty, mem int64, opts ...option) *moveBench {
	t.Helper()
	c := newCluster(t, append([]option{func(cfg *agent.Config) {
		cfg.Sim.DirtyRate, cfg.Sim.WorkingSetBytes, cfg.Sim.Tick = dirty, mem, benchTick
	}}, opts...)...)
	c.startN(3)
	b := &moveBench{c: c, leader: c.leader(60 * time.Second), name: "bench", mem: mem}
	i := 0
	for _, n := range c.nodes {
		if n != b.leader {
			b.pair[i] = n
			i++
		}
	}
	spec := vmGroup(b.name)
	spec.Resources[2].Vm.MemoryBytes = mem
	spec.PossibleOwners = []string{b.pair[0].name, b.pair[1].name}
	if _, err := b.leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: b.name}); err != nil {
		t.Fatal(err)
	}
	b.g = c.allOnline(b.leader, []string{b.name}, 60*time.Second, anyOwner)[b.name]
	waitFor(t, 30*time.Second, "the guest ticking", func() error {
		return c.execRunning(b.g.GetOwner(), b.name, b.g.GetEpoch(), time.Time{})
	})
	owner := c.node(b.g.GetOwner())
	fctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := havenv1.NewNodeServiceClient(owner.conn).FillVM(fctx, &havenv1.FillVMRequest{Group: b.name, Vm: "vm"})
	if err != nil || resp.GetBytes() != mem {
		t.Fatalf("filling the guest's memory: %v, %v", resp, err)
	}
	return b
}

// other is the node of the pair the group is not on.
func (b *moveBench) other() *node {
	if b.pair[0].name == b.g.GetOwner() {
		return b.pair[1]
	}
	return b.pair[0]
}

// moveResult is one move as measured.
type moveResult struct {
	op        *havenv1.Operation
	completed bool
	// total is the operation's time from its start to its end in the FSM
	// (the target running and reported).
	total time.Duration
	// gap is the guest's: its last tick on the source to its first on the
	// target. parts split it at the source's log line of the pause's work
	// done (the last pages, the device state and the memory's checksum
	// sent), the leader's commit and the target's activation; they are
	// from log lines of millisecond resolution.
	gap   time.Duration
	parts [4]time.Duration
	// cpu is what the source's and the target's agent spent, from the
	// move's start to its end as the test saw it.
	cpu [2]time.Duration
}

// partNames name moveResult.parts.
var partNames = [4]string{"pause_to_sent", "sent_to_commit", "commit_to_activate", "activate_to_tick"}

// move moves the group to the other node of the pair and waits for the
// move's end: the group running on the target, or again on the source.
func (b *moveBench) move(kind havenv1.MoveKind, limit int64) moveResult {
	t := b.c.t
	t.Helper()
	from, to := b.c.node(b.g.GetOwner()), b.other()
	cpu0 := [2]time.Duration{cpuTime(t, from), cpuTime(t, to)}
	resp, err := b.leader.api().MoveGroup(ctx(t), &havenv1.MoveGroupRequest{Name: b.name, Target: to.name, Kind: kind, BandwidthLimit: limit})
	if err != nil {
		t.Fatalf("%s move of %s to %s: %v", kind, b.name, to.name, err)
	}
	op := b.c.waitMove(b.leader, resp.GetOperation().GetId(), 15*time.Minute)
	r := moveResult{op: op, total: op.GetFinishTime().AsTime().Sub(op.GetCreateTime().AsTime())}
	r.cpu = [2]time.Duration{cpuTime(t, from) - cpu0[0], cpuTime(t, to) - cpu0[1]}
	if op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED {
		b.logEnds(op.GetCreateTime().AsTime().Add(-2*time.Second), op.GetFinishTime().AsTime())
		// Rolled back: the source runs on, at its epoch.
		b.g = b.c.allOnline(b.leader, []string{b.name}, 60*time.Second, func(g *havenv1.Group) bool {
			return g.GetOwner() == from.name && g.GetEpoch() == op.GetSourceEpoch()
		})[b.name]
		finished := op.GetFinishTime().AsTime()
		waitFor(t, 30*time.Second, "the source running again", func() error {
			return b.c.execRunning(from.name, b.name, b.g.GetEpoch(), finished)
		})
		return r
	}
	r.completed = true
	after := b.c.allOnline(b.leader, []string{b.name}, 60*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() == to.name })[b.name]
	if after.GetEpoch() != op.GetTargetEpoch() {
		t.Fatalf("move %s: the group is at epoch %d on %s, the move's target epoch is %d", op.GetId(), after.GetEpoch(), to.name, op.GetTargetEpoch())
	}
	waitFor(t, 30*time.Second, "a tick on the target", func() error {
		return b.c.execRunning(to.name, b.name, after.GetEpoch(), time.Time{})
	})
	last, first := b.ticksAround(from.name, to.name, op.GetSourceEpoch(), after.GetEpoch())
	r.gap = b.c.guestGap(b.name, from.name, to.name, op.GetSourceEpoch(), after.GetEpoch())
	vm := b.name + "/vm"
	sent := logTime(t, from, "vm paused for switchover", "vm="+vm, fmt.Sprintf("epoch=%d", op.GetSourceEpoch()))
	var committed time.Time
	for _, n := range b.c.nodes {
		if at := logTime(t, n, "move committed", "operation="+op.GetId()); at.After(committed) {
			committed = at
		}
	}
	activated := logTime(t, to, "vm activated", "vm="+vm, fmt.Sprintf("epoch=%d", after.GetEpoch()))
	if !sent.IsZero() && !committed.IsZero() && !activated.IsZero() {
		r.parts = [4]time.Duration{sent.Sub(last), committed.Sub(sent), activated.Sub(committed), first.Sub(activated)}
	} else {
		t.Errorf("move %s: log lines missing: paused %v, committed %v, activated %v", op.GetId(), sent, committed, activated)
	}
	b.g = after
	if *benchMoveSettle {
		b.settle(from, op.GetSourceEpoch())
	}
	return r
}

// settle waits until from, a completed move's source, has discarded its
// paused copy. Killing 1 GiB takes 150-330 ms here (the memory is unmapped
// under the VM's lock); a move back to from may begin meanwhile, its
// incoming VM under the same id. The executor used to drop the old copy
// with Forget(id), naming no epoch, which discarded the new incoming VM;
// Forget takes the epoch now. -move.settle waits anyway, to measure moves
// that never overlap a kill.
func (b *moveBench) settle(from *node, epoch uint64) {
	t := b.c.t
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%s discarding its copy at epoch %d", from.name, epoch), func() error {
		if logTime(t, from, "vm stopped", "vm="+b.name+"/vm", fmt.Sprintf("epoch=%d", epoch)).IsZero() {
			return errNotYet
		}
		return nil
	})
}

// logEnds logs what each agent's log says between from and to about Raft
// leadership, moves and VMs, for a move that did not complete.
func (b *moveBench) logEnds(from, to time.Time) {
	t := b.c.t
	for _, n := range b.c.nodes {
		data, err := os.ReadFile(n.proc.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil || at.Before(from) || at.After(to) {
				continue
			}
			for _, s := range []string{"election", "candidate", "leader", "term", "heartbeat", "move", " vm", "sub=executor"} {
				if strings.Contains(line, s) {
					t.Logf("%s: %s", n.name, line)
					break
				}
			}
		}
	}
}

// ticksAround is the guest's last tick on from at fromEpoch and its first
// on to at toEpoch.
func (b *moveBench) ticksAround(from, to string, fromEpoch, toEpoch uint64) (last, first time.Time) {
	for _, r := range b.c.execRecords(b.name) {
		switch {
		case r.Node == from && r.Epoch == fromEpoch:
			last = r.Wall
		case r.Node == to && r.Epoch == toEpoch && first.IsZero():
			first = r.Wall
		}
	}
	return last, first
}

// logTime is the time of the last line of n's log with message msg and
// every field (key=value, as slog writes it); zero if there is none.
func logTime(t *testing.T, n *node, msg string, fields ...string) time.Time {
	t.Helper()
	at, _ := lineTime(logLine(t, n, msg, fields...))
	return at
}

// logLine is the last line of n's log with message msg and every one of
// fields ("key=value"), or "" when there is none.
func logLine(t *testing.T, n *node, msg string, fields ...string) string {
	t.Helper()
	data, err := os.ReadFile(n.proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, ` msg="`+msg+`"`) && allIn(line+" ", fields) {
			last = line
		}
	}
	return last
}

// lineTime reads the time of a line of an agent's log (log/slog's text).
func lineTime(line string) (time.Time, bool) {
	ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
	at, err := time.Parse(time.RFC3339Nano, ts)
	return at, err == nil
}

func allIn(line string, fields []string) bool {
	for _, f := range fields {
		if !strings.Contains(line, " "+f+" ") {
			return false
		}
	}
	return true
}

// cpuTime is the CPU time n's agent process has used so far, user and
// system, from /proc (in the kernel's USER_HZ, 100 a second).
func cpuTime(t *testing.T, n *node) time.Duration {
	t.Helper()
	pid := n.proc.Process().Pid()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command may hold spaces; the fields after it are fixed.
	_, rest, _ := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	var ticks int64
	for _, i := range []int{11, 12} { // utime and stime, fields 14 and 15
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// benchCase is one figure of the live-move scenario: a guest dirty rate
// and, optionally, a bandwidth cap on the moves, in bytes per second.
type benchCase struct{ dirty, limit int64 }

func (c benchCase) String() string {
	s := fmt.Sprintf("dirty=%dMiB/s", c.dirty>>20)
	if c.limit > 0 {
		s += fmt.Sprintf(" limit=%dMiB/s", c.limit>>20)
	}
	return s
}

func parseBenchCases(t *testing.T, s string) []benchCase {
	var out []benchCase
	for _, f := range strings.Split(s, ",") {
		rate, limit, capped := strings.Cut(strings.TrimSpace(f), "@")
		d, err := strconv.ParseInt(rate, 10, 64)
		var l int64
		if err == nil && capped {
			l, err = strconv.ParseInt(limit, 10, 64)
		}
		if err != nil || d < 0 || l < 0 {
			t.Fatalf("-move.dirty: %q is not RATE or RATE@LIMIT in MiB/s", f)
		}
		out = append(out, benchCase{dirty: d << 20, limit: l << 20})
	}
	return out
}

// TestScenarioMoveLive prints, for each guest dirty rate of -move.dirty,
// what -moves live moves of a -move.mem VM (1 GiB, every page holding
// data) between two agents cost: the move's total time, the guest's gap
// and its parts, bytes sent per byte of RAM, rounds, throttle and
// outcomes. In the case of no dirtying it first probes, before every
// move, what one stream between the same two agents carries (ProbeLink,
// the same amount in the same direction), and prints the median move
// against the time the probe's median rate needs for the RAM.
func TestScenarioMoveLive(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make bench-moves)")
	}
	binary(t, "haven")
	mem := *benchMoveMem
	for _, bc := range parseBenchCases(t, *benchMoveDirty) {
		t.Run(strings.ReplaceAll(bc.String(), "/", "p"), func(t *testing.T) {
			b := newMoveBench(t, bc.dirty, mem)
			var results []moveResult
			var probes []probeResult
			for i := 0; i < *benchMoves; i++ {
				if bc.dirty == 0 && bc.limit == 0 {
					probes = append(probes, b.probe(b.c.node(b.g.GetOwner()), b.other(), mem))
				}
				r := b.move(havenv1.MoveKind_MOVE_KIND_LIVE, bc.limit)
				t.Logf("move %d: %s %s -> %s, %s in %s, %d rounds, %d bytes, throttle %d %%, gap %s %v, %s",
					i, r.op.GetId(), r.op.GetSource(), r.op.GetTarget(), r.op.GetOutcome(), r.total, r.op.GetProgress().GetRound(),
					r.op.GetProgress().GetBytesSent(), r.op.GetProgress().GetThrottlePercent(), r.gap, r.parts, r.op.GetReason())
				results = append(results, r)
			}
			b.c.checkInvariants([]string{b.name})
			printMoves("move-live", bc.String(), mem, results)
			if len(probes) > 0 {
				printProbe(mem, probes, results)
			}
		})
	}
}

// probeResult is one link probe: its rate in bytes per second and the
// CPU time the sending and the receiving agent spent on it.
type probeResult struct {
	rate float64
	cpu  [2]time.Duration
}

// probe measures one stream from a to b carrying n bytes.
func (b *moveBench) probe(from, to *node, n int64) probeResult {
	t := b.c.t
	cpu0 := [2]time.Duration{cpuTime(t, from), cpuTime(t, to)}
	pctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := havenv1.NewNodeServiceClient(from.conn).ProbeLink(pctx, &havenv1.ProbeLinkRequest{Target: to.name, Bytes: n})
	if err != nil {
		t.Fatalf("probe %s -> %s: %v", from.name, to.name, err)
	}
	d := resp.GetDuration().AsDuration()
	r := probeResult{rate: float64(resp.GetBytes()) / d.Seconds(), cpu: [2]time.Duration{cpuTime(t, from) - cpu0[0], cpuTime(t, to) - cpu0[1]}}
	t.Logf("probe %s -> %s: %d bytes in %s, %.0f MB/s, CPU %v", from.name, to.name, resp.GetBytes(), d, r.rate/1e6, r.cpu)
	return r
}

// printMoves prints one figure's line: outcomes, and the times and
// counts of the moves that completed.
func printMoves(scenarioName, what string, mem int64, rs []moveResult) {
	live := scenarioName == "move-live"
	var total, gap []time.Duration
	var parts [4][]time.Duration
	var cpu [2][]time.Duration
	var sent, rate []float64
	var rounds, throttle []int
	outcomes := map[string]int{}
	for _, r := range rs {
		key := strings.TrimPrefix(r.op.GetOutcome().String(), "OPERATION_OUTCOME_")
		if !r.completed {
			key += ": " + r.op.GetReason()
		}
		outcomes[key]++
		if !r.completed {
			continue
		}
		total, gap = append(total, r.total), append(gap, r.gap)
		cpu[0], cpu[1] = append(cpu[0], r.cpu[0]), append(cpu[1], r.cpu[1])
		for i := range parts {
			parts[i] = append(parts[i], r.parts[i])
		}
		p := r.op.GetProgress()
		sent = append(sent, float64(p.GetBytesSent())/float64(mem))
		rate = append(rate, float64(p.GetRateBytesPerSec()))
		rounds = append(rounds, int(p.GetRound()))
		throttle = append(throttle, int(p.GetThrottlePercent()))
	}
	var outs []string
	for k, n := range outcomes {
		outs = append(outs, fmt.Sprintf("%dx %s", n, k))
	}
	slices.Sort(outs)
	line := fmt.Sprintf("scenario %s %s mem=%dMiB tick=%s moves=%d completed=%d", scenarioName, what, mem>>20, benchTick, len(rs), len(total))
	if len(total) > 0 {
		line += fmt.Sprintf(" total_median=%s total_p99=%s total_max=%s gap_median=%s gap_p99=%s gap_max=%s",
			toMS(median(total)), toMS(pct(total, 99)), toMS(slices.Max(total)), toMS(median(gap)), toMS(pct(gap, 99)), toMS(slices.Max(gap)))
		for i, name := range partNames {
			line += fmt.Sprintf(" %s_median=%s", name, toMS(median(parts[i])))
		}
		line += fmt.Sprintf(" sent_per_ram_median=%.3f (%.3f-%.3f)", medianF(sent), slices.Min(sent), slices.Max(sent))
		if live {
			line += fmt.Sprintf(" rounds_median=%d (%d-%d) throttle_median=%d%% (%d-%d%%) move_link_rate_median=%.0fMB/s",
				medianI(rounds), slices.Min(rounds), slices.Max(rounds),
				medianI(throttle), slices.Min(throttle), slices.Max(throttle), medianF(rate)/1e6)
		}
		line += fmt.Sprintf(" cpu_source_median=%s cpu_target_median=%s", toMS(median(cpu[0])), toMS(median(cpu[1])))
	}
	fmt.Println(line)
	how := ""
	if live && len(total) > 0 {
		throttled := 0
		for _, x := range throttle {
			if x > 0 {
				throttled++
			}
		}
		how = fmt.Sprintf(" (of the completed, %d converged by throttling the guest, up to %d %%)", throttled, slices.Max(throttle))
	}
	fmt.Printf("scenario %s %s outcomes: %s%s\n", scenarioName, what, strings.Join(outs, "; "), how)
}

// printProbe prints the link probe's line: its rate and CPU, and the
// median complete move against the time that rate needs for the RAM.
func printProbe(mem int64, probes []probeResult, rs []moveResult) {
	var total []time.Duration
	for _, r := range rs {
		if r.completed {
			total = append(total, r.total)
		}
	}
	var rates []float64
	var cpu [2][]time.Duration
	for _, p := range probes {
		rates = append(rates, p.rate)
		cpu[0], cpu[1] = append(cpu[0], p.cpu[0]), append(cpu[1], p.cpu[1])
	}
	rate := medianF(rates)
	ideal := time.Duration(float64(mem) / rate * float64(time.Second))
	line := fmt.Sprintf("scenario move-live link-probe bytes=%dMiB probes=%d stream_rate_median=%.0fMB/s (%.0f-%.0f) cpu_sender_median=%s cpu_receiver_median=%s ram_at_stream_rate=%s",
		mem>>20, len(probes), rate/1e6, slices.Min(rates)/1e6, slices.Max(rates)/1e6, toMS(median(cpu[0])), toMS(median(cpu[1])), toMS(ideal))
	if len(total) > 0 {
		line += fmt.Sprintf(" total_median_dirty0=%s ratio=%.2f (target <= 1.25)", toMS(median(total)), float64(median(total))/float64(ideal))
	}
	fmt.Println(line)
}

// TestScenarioMoveQuick prints what -moves quick moves of a -move.mem VM
// (1 GiB, every page holding data, a guest that dirties nothing) cost:
// the guest's gap from stop to run against RAM / write rate + RAM / read
// rate of the shared directory + 200 ms, both rates measured in the same
// run, before and after the moves, by writing and reading a file of the
// VM's size there (see diskRates).
func TestScenarioMoveQuick(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make bench-moves)")
	}
	binary(t, "haven")
	mem := *benchMoveMem
	b := newMoveBench(t, 0, mem)
	shared := filepath.Join(b.c.dir, "shared")
	var disk []diskFigures
	disk = append(disk, diskRates(t, shared, mem))
	var results []moveResult
	for i := 0; i < *benchMoves; i++ {
		r := b.move(havenv1.MoveKind_MOVE_KIND_QUICK, 0)
		t.Logf("move %d: %s %s -> %s, %s in %s, %d bytes, gap %s %v, %s",
			i, r.op.GetId(), r.op.GetSource(), r.op.GetTarget(), r.op.GetOutcome(), r.total,
			r.op.GetProgress().GetBytesSent(), r.gap, r.parts, r.op.GetReason())
		results = append(results, r)
	}
	disk = append(disk, diskRates(t, shared, mem))
	b.c.checkInvariants([]string{b.name})
	printMoves("move-quick", "dirty=0MiB/s", mem, results)
	var w, cold, hot float64
	for i, d := range disk {
		fmt.Printf("scenario move-quick shared-dir run=%d write_fsync=%.0fMB/s read_cold=%.0fMB/s (%.1f%% of the file resident before) read_cached=%.0fMB/s\n",
			i, d.write/1e6, d.cold/1e6, 100*d.resident, d.hot/1e6)
		w, cold, hot = w+d.write/float64(len(disk)), cold+d.cold/float64(len(disk)), hot+d.hot/float64(len(disk))
	}
	var gap []time.Duration
	for _, r := range results {
		if r.completed {
			gap = append(gap, r.gap)
		}
	}
	if len(gap) == 0 {
		t.Fatal("no quick move completed")
	}
	bound := func(read float64) time.Duration {
		return time.Duration((float64(mem)/w+float64(mem)/read)*float64(time.Second)) + quickOverhead
	}
	fmt.Printf("scenario move-quick stop_to_run_median=%s stop_to_run_p99=%s bound=%s (RAM/write %s + RAM/cold read %s + %s) ratio=%.2f; with the cached read rate bound=%s ratio=%.2f\n",
		toMS(median(gap)), toMS(pct(gap, 99)), toMS(bound(cold)),
		toMS(time.Duration(float64(mem)/w*float64(time.Second))), toMS(time.Duration(float64(mem)/cold*float64(time.Second))), quickOverhead,
		float64(median(gap))/float64(bound(cold)), toMS(bound(hot)), float64(median(gap))/float64(bound(hot)))
}

// diskFigures are the shared directory's rates, in bytes per second, and
// how much of the file was still in the page cache when the cold read
// began.
type diskFigures struct {
	write, cold, hot float64
	resident         float64
}

// diskRates writes a file of size bytes of data in dir and times it to
// the end of its fsync; then drops the file's pages from this machine's
// page cache and reads it, cold; then reads it again, from the cache. The
// pages are dropped by POSIX_FADV_DONTNEED on the synced (so clean) file,
// which needs no privilege and touches no other file, and mincore(2)
// says how many stayed. The disk is a virtual one: what the host caches
// beneath it is beyond reach, so a cold read may be the host's cache.
func diskRates(t *testing.T, dir string, size int64) diskFigures {
	t.Helper()
	path := filepath.Join(dir, ".bench-disk")
	defer os.Remove(path)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*131 + i>>9)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out diskFigures
	start := time.Now()
	for off := int64(0); off < size; off += int64(len(buf)) {
		buf[0], buf[1] = byte(off>>20), byte(off>>28) // no two MiB alike
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	out.write = float64(size) / time.Since(start).Seconds()

	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	out.resident = resident(t, f, size)
	out.cold = readRate(t, f, buf, size)
	out.hot = readRate(t, f, buf, size)
	return out
}

// resident is the fraction of f's pages in the page cache.
func resident(t *testing.T, f *os.File, size int64) float64 {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (size+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	in := 0
	for _, v := range vec {
		in += int(v & 1)
	}
	return float64(in) / float64(len(vec))
}

// readRate reads f from its start in pieces of buf's size.
func readRate(t *testing.T, f *os.File, buf []byte, size int64) float64 {
	t.Helper()
	start := time.Now()
	for off := int64(0); off < size; {
		n, err := f.ReadAt(buf, off)
		off += int64(n)
		if err != nil && off < size {
			t.Fatal(err)
		}
	}
	return float64(size) / time.Since(start).Seconds()
}

// pct is the p-th percentile by nearest rank: of 20 values, the 99th is
// the largest.
func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func medianF(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianI(xs []int) int {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func toMS(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
