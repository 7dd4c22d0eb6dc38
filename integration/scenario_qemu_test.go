package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/haven-ha/haven/driver/qemu"
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

// TestScenarioQemuMoves prints the figures of moves of a real VM through
// the agents: a 256 MiB VM whose guest dirties 64 MiB at 20 MiB/s (the
// driver tests' movingGuest), moved live under haven's settings (no
// bandwidth cap, the 300 ms downtime target, one channel) and, in the same
// run, interleaved, under QEMU's defaults (128 MiB/s cap, 300 ms target,
// one channel; auto-converge, which the driver arms only past 100 % of
// the link, never triggers for this guest), under haven's settings with
// two channels (multifd), then quick. Per move: the
// operation's total time (leader's create to finish), the guest-seen
// downtime (its last tick on the source to its first on the target, the
// consoles read every 2 ms) and, for a live move, QEMU's own downtime
// (the source agent's log). Medians over -runs, and every value.
func TestScenarioQemuMoves(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make bench-qemu)")
	}
	qc := newQemuCluster(t, 3)
	g := qc.groupSized("web", 256<<20, testguest.Options{MemMiB: 64, DirtyMiBPerSec: 20, TickMs: 10, WatchdogSec: 60})
	leader := qc.leader(30 * time.Second)
	type figures struct {
		total, gap, qemu []time.Duration
		lost             int // moves after which the guest rebooted
	}
	settings := []struct {
		name string
		req  *havenv1.MoveGroupRequest
	}{
		{"haven", &havenv1.MoveGroupRequest{Kind: havenv1.MoveKind_MOVE_KIND_LIVE}},
		{"qemu-defaults", &havenv1.MoveGroupRequest{Kind: havenv1.MoveKind_MOVE_KIND_LIVE,
			BandwidthLimit: 128 << 20, DowntimeTarget: durationpb.New(300 * time.Millisecond), Channels: 1}},
		{"haven-2-channels", &havenv1.MoveGroupRequest{Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Channels: 2}},
		{"quick", &havenv1.MoveGroupRequest{Kind: havenv1.MoveKind_MOVE_KIND_QUICK}},
	}
	got := make([]figures, len(settings))
	for run := 0; run < *scenarioRuns; run++ {
		for i, s := range settings {
			from := g.GetOwner()
			to := ""
			for _, n := range qc.nodes {
				if n.name != from {
					to = n.name
					break
				}
			}
			oldPID := qc.qemuPID(from, "web")
			req := proto.Clone(s.req).(*havenv1.MoveGroupRequest)
			req.Name, req.Target = "web", to
			w := watchMove(qc, from, to)
			resp, err := leader.api().MoveGroup(ctx(t), req)
			if err != nil {
				t.Fatalf("%s move: %v", s.name, err)
			}
			op := qc.waitMove(leader, resp.GetOperation().GetId(), 5*time.Minute)
			if op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED {
				t.Fatalf("%s move ended %s (%s)", s.name, op.GetOutcome(), op.GetReason())
			}
			last, first := w.end(t)
			total := op.GetFinishTime().AsTime().Sub(op.GetCreateTime().AsTime())
			if first.N <= last.N || first.N > last.N+2 {
				// Counted, not fatal: the figure is how often it happens.
				got[i].lost++
				t.Logf("run %d %s %s->%s: total %s; the guest did not carry on: the source's last tick %d, the target's first %d (console %s)",
					run, s.name, from, to, total.Round(time.Millisecond), last.N, first.N, w.dst.Path())
				g = qc.allOnline(leader, []string{"web"}, 30*time.Second, func(x *havenv1.Group) bool { return x.GetOwner() == to })["web"]
				waitGone(t, qc, from, oldPID)
				continue
			}
			gap := first.Seen.Sub(last.Seen)
			got[i].total, got[i].gap = append(got[i].total, total), append(got[i].gap, gap)
			line := fmt.Sprintf("run %d %s %s->%s: total %s, guest-seen downtime %s", run, s.name, from, to, total.Round(time.Millisecond), gap.Round(time.Millisecond))
			if req.Kind == havenv1.MoveKind_MOVE_KIND_LIVE {
				d, ok := qemuDowntime(qc.node(from))
				if !ok {
					t.Fatalf("%s's log has no downtime of the move", from)
				}
				got[i].qemu = append(got[i].qemu, d)
				line += fmt.Sprintf(", QEMU's downtime %s", d)
			}
			t.Log(line)
			g = qc.allOnline(leader, []string{"web"}, 30*time.Second, func(x *havenv1.Group) bool { return x.GetOwner() == to })["web"]
			waitGone(t, qc, from, oldPID)
		}
	}
	for i, s := range settings {
		f := got[i]
		line := fmt.Sprintf("scenario qemu-move setting=%s runs=%d guest_lost=%d total_median=%s (all %v) guest_downtime_median=%s (all %v)",
			s.name, *scenarioRuns, f.lost, median(f.total).Round(time.Millisecond), roundMs(f.total), median(f.gap).Round(time.Millisecond), roundMs(f.gap))
		if len(f.qemu) > 0 {
			line += fmt.Sprintf(" qemu_downtime_median=%s (all %v)", median(f.qemu), f.qemu)
		}
		fmt.Println(line)
	}
}

// roundMs is ds in the order measured, each to the millisecond.
// waitGone waits until the source's QEMU and its directory are gone,
// so that the next move's console there is the new VM's.
func waitGone(t *testing.T, qc *qemuCluster, from string, pid int) {
	t.Helper()
	waitFor(t, 30*time.Second, "the source's QEMU and directory gone", func() error {
		if st := procState(pid); st != "" && st != "Z" {
			return fmt.Errorf("pid %d in state %s", pid, st)
		}
		if _, err := os.Stat(qemu.ConsolePath(qc.runDir(from), vmID("web"))); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("its console log is still there (%v)", err)
		}
		return nil
	})
}

func roundMs(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// moveWatch reads a moving guest's consoles, the source's and the
// target's, every 2 ms, so that the last tick on one and the first on
// the other are dated within that.
type moveWatch struct {
	src, dst *testguest.Serial
	stop     chan struct{}
	done     chan error
}

func watchMove(qc *qemuCluster, from, to string) *moveWatch {
	w := &moveWatch{src: qc.console(from, "web"), dst: qc.console(to, "web"), stop: make(chan struct{}), done: make(chan error, 1)}
	if err := w.src.Poll(); err != nil {
		qc.t.Fatal(err)
	}
	go func() {
		for {
			if err := w.src.Poll(); err != nil {
				w.done <- err
				return
			}
			if err := w.dst.Poll(); err != nil {
				w.done <- err
				return
			}
			select {
			case <-w.stop:
				w.done <- nil
				return
			case <-time.After(2 * time.Millisecond):
			}
			if w.dst.Ticks() > 0 {
				w.done <- nil
				return
			}
		}
	}()
	return w
}

// end waits for the target's first tick and returns the source's last
// tick and the target's first.
func (w *moveWatch) end(t *testing.T) (last, first testguest.Tick) {
	t.Helper()
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		close(w.stop)
		<-w.done
		t.Fatal("no tick on the target within 60s of the move's end")
	}
	return w.src.Last(), w.dst.First()
}

// qemuDowntime is the downtime QEMU reported for the last live move out
// of n, from n's log.
func qemuDowntime(n *node) (time.Duration, bool) {
	data, err := os.ReadFile(n.proc.LogPath)
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndex(data, []byte("vm migrated out, paused"))
	if i < 0 {
		return 0, false
	}
	line := data[i:]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	m := regexp.MustCompile(`downtime=(\S+)`).FindSubmatch(line)
	if m == nil {
		return 0, false
	}
	d, err := time.ParseDuration(string(m[1]))
	return d, err == nil
}
