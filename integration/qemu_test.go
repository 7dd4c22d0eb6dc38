package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu"
	"github.com/haven-ha/haven/driver/qemu/qmp"
	"github.com/haven-ha/haven/driver/qemu/testguest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// qemuCluster is a cluster whose agents run real VMs: QEMU under TCG,
// booting the test guest, which counts on its console.
type qemuCluster struct {
	*cluster
	guest testguest.Guest
	// data is the agents' data directories' parent: short, for the
	// VMs' unix sockets.
	data string
}

func newQemuCluster(t *testing.T, n int, opts ...option) *qemuCluster {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testguest.Unavailable(t, "qemu-system-x86_64 is not installed")
	}
	guest := testguest.Build(t)
	data, err := os.MkdirTemp("", "hq")
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the cluster's own cleanup, so it runs after the
	// agents are dead: the VMs outlive their agents, by design.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		runs, _ := filepath.Glob(filepath.Join(data, "*", "qemu"))
		for _, run := range runs {
			if err := qemu.Reap(ctx, run); err != nil {
				t.Error(err)
			}
		}
		os.RemoveAll(data)
	})
	c := newCluster(t, append(opts, func(cfg *agent.Config) {
		cfg.Driver = "qemu"
		cfg.DataDir = filepath.Join(data, cfg.Name)
		cfg.Qemu.Accel = "tcg"
		cfg.Qemu.StopTimeout = 2 * time.Second
	})...)
	c.startN(n)
	return &qemuCluster{cluster: c, guest: guest, data: data}
}

// group creates and starts a group of one VM booting the test guest, and
// returns it once it runs and its guest counts.
func (qc *qemuCluster) group(name string, opts testguest.Options, disks ...string) *havenv1.Group {
	qc.t.Helper()
	return qc.groupSized(name, 160<<20, opts, disks...)
}

// groupSized is group with a VM of memory bytes.
func (qc *qemuCluster) groupSized(name string, memory int64, opts testguest.Options, disks ...string) *havenv1.Group {
	t := qc.t
	t.Helper()
	leader := qc.leader(30 * time.Second)
	vm := &havenv1.Resource{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{
		Vcpus: 1, MemoryBytes: memory,
		Kernel: qc.guest.Kernel, Initrd: qc.guest.Initrd, Cmdline: qc.guest.Append(opts),
	}}
	spec := &havenv1.GroupSpec{
		Name:    name,
		Restart: &havenv1.RestartPolicy{MaxRestarts: 3, Period: durationpb.New(time.Minute)},
	}
	for _, d := range disks {
		spec.Resources = append(spec.Resources, qc.disk(name, d))
		vm.DependsOn = append(vm.DependsOn, d)
	}
	spec.Resources = append(spec.Resources, vm)
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	g := qc.allOnline(leader, []string{name}, 60*time.Second, anyOwner)[name]
	qc.console(g.GetOwner(), name).Wait(t, 90*time.Second, name+"'s guest counting", func(s *testguest.Serial) bool { return s.Last().N > 0 })
	return g
}

// disk makes a raw image of 1 MiB on the shared storage, group/name.img,
// and is the disk resource that names it.
func (qc *qemuCluster) disk(group, name string) *havenv1.Resource {
	p := filepath.Join(group, name+".img")
	full := filepath.Join(qc.dir, "shared", p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		qc.t.Fatal(err)
	}
	if err := os.WriteFile(full, make([]byte, 1<<20), 0o600); err != nil {
		qc.t.Fatal(err)
	}
	return &havenv1.Resource{Name: name, Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: p, SizeBytes: 1 << 20}}
}

// locked reports whether a QEMU holds the image's write lock: qemu-io
// opens it for writing, which the lock refuses.
func (qc *qemuCluster) locked(r *havenv1.Resource) bool {
	qc.t.Helper()
	if _, err := exec.LookPath("qemu-io"); err != nil {
		testguest.Unavailable(qc.t, "qemu-io is not installed (qemu-utils)")
	}
	return exec.Command("qemu-io", "-f", "raw", "-c", "read 0 512", filepath.Join(qc.dir, "shared", r.GetDisk().GetPath())).Run() != nil
}

func (qc *qemuCluster) runDir(node string) string { return filepath.Join(qc.data, node, "qemu") }

func vmID(group string) driver.VMID { return driver.VMID{Group: group, Resource: "vm"} }

// console reads the console log of group's VM on node.
func (qc *qemuCluster) console(node, group string) *testguest.Serial {
	s := testguest.NewSerial(qemu.ConsolePath(qc.runDir(node), vmID(group)))
	qc.t.Cleanup(func() { s.Close() })
	return s
}

// qemuPID is the pid of group's QEMU on node.
func (qc *qemuCluster) qemuPID(node, group string) int {
	qc.t.Helper()
	b, err := os.ReadFile(qemu.PIDPath(qc.runDir(node), vmID(group)))
	if err != nil {
		qc.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		qc.t.Fatal(err)
	}
	return pid
}

// procState is a process's state letter (R, S, T, Z...), "" if it is gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// runners watches every QEMU of the cluster that runs group's VM, every
// 10 ms, and remembers the most found executing (not stopped, not a
// zombie) at once: the invariant that a group never runs twice, seen from
// the processes themselves.
type runners struct {
	mu   sync.Mutex
	most int
	when time.Time
	pids []int
	stop chan struct{}
	done chan struct{}
}

func (qc *qemuCluster) watchRunners(group string) *runners {
	r := &runners{stop: make(chan struct{}), done: make(chan struct{})}
	name := []byte("guest=" + group + "/vm,")
	// This cluster's QEMUs only: their sockets are under its data
	// directory (other tests on the machine may run a "web" too).
	mine := qc.data + "/"
	go func() {
		defer close(r.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-tick.C:
			}
			var live []int
			procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
			for _, p := range procs {
				b, err := os.ReadFile(p)
				// QEMU itself, not its supervisor, whose arguments end
				// with QEMU's.
				argv0, _, _ := strings.Cut(string(b), "\x00")
				if err != nil || !strings.Contains(filepath.Base(argv0), "qemu-system") || !strings.Contains(string(b), string(name)) || !strings.Contains(string(b), mine) {
					continue
				}
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
				if s := procState(pid); s != "" && s != "T" && s != "t" && s != "Z" {
					live = append(live, pid)
				}
			}
			r.mu.Lock()
			if len(live) > r.most {
				r.most, r.when, r.pids = len(live), time.Now(), live
			}
			r.mu.Unlock()
		}
	}()
	qc.t.Cleanup(r.end)
	return r
}

func (r *runners) end() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

// check fails t if two QEMUs of the group ever executed at once.
func (r *runners) check(t *testing.T) {
	t.Helper()
	r.end()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.most > 1 {
		t.Errorf("%d QEMUs of the group executing at once at %s: pids %v", r.most, r.when.Format(time.StampMilli), r.pids)
	}
}

// TestQemuFailover: the owner's agent is SIGKILLed with its VM running.
// Its QEMU, which outlives it under its supervisor, is frozen at the lease
// end, before the group starts on another node; the processes never show
// two QEMUs of the group executing. When the agent comes back it kills its
// old QEMU: the group runs elsewhere at a newer epoch.
func TestQemuFailover(t *testing.T) {
	qc := newQemuCluster(t, 3)
	g0 := qc.group("web", testguest.Options{MemMiB: 16, DirtyMiBPerSec: 4, TickMs: 20}, "root")
	owner := qc.node(g0.GetOwner())
	old := qc.qemuPID(owner.name, "web")
	watch := qc.watchRunners("web")

	owner.kill()
	killed := time.Now()
	leader := qc.leader(30 * time.Second)
	g := qc.allOnline(leader, []string{"web"}, 60*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != owner.name })["web"]
	if g.GetEpoch() <= g0.GetEpoch() {
		t.Fatalf("failed over at epoch %d, was %d", g.GetEpoch(), g0.GetEpoch())
	}
	// Frozen, the old QEMU still held the root image's lock, which the
	// new one needs: its supervisor killed it, with no agent to ask.
	if s := procState(old); s != "" && s != "Z" {
		t.Errorf("the old QEMU (pid %d) is in state %q after the failover, want it gone", old, s)
	}
	qc.console(g.GetOwner(), "web").Wait(t, 90*time.Second, "the guest counting on "+g.GetOwner(), func(s *testguest.Serial) bool { return s.Last().N > 0 })
	t.Logf("SIGKILL to the guest counting on %s: %s", g.GetOwner(), time.Since(killed).Round(time.Millisecond))
	b, err := os.ReadFile(filepath.Join(filepath.Dir(qemu.PIDPath(qc.runDir(owner.name), vmID("web"))), "qemu.log"))
	if err != nil || !strings.Contains(string(b), "frozen child killed") {
		t.Errorf("the old QEMU's supervisor did not kill it (log: %v):\n%s", err, b)
	}

	owner.start()
	waitFor(t, 30*time.Second, "the restarted agent to let go of its dead VM", func() error {
		_, err := os.Stat(qemu.PIDPath(qc.runDir(owner.name), vmID("web")))
		if err == nil {
			return errors.New("the VM's directory is still there")
		}
		return nil
	})
	watch.check(t)
}

// TestQemuAgentPaused: the owner's agent is SIGSTOPped past its lease.
// Its QEMU stops at the lease end, with no console output after it, and
// thaws when the agent wakes in time to renew: the same QEMU, its counter
// going on.
func TestQemuAgentPaused(t *testing.T) {
	qc := newQemuCluster(t, 3)
	g0 := qc.group("web", testguest.Options{MemMiB: 16, TickMs: 20})
	owner := qc.node(g0.GetOwner())
	pid := qc.qemuPID(owner.name, "web")
	con := qc.console(owner.name, "web")

	owner.pause()
	paused := time.Now()
	// The lease ends at most one lease after the last renewal, which was
	// before the pause.
	lease := owner.cfg.Lease.Duration
	waitFor(t, lease+time.Second, "QEMU stopped by its supervisor", func() error {
		if s := procState(pid); s != "T" {
			return fmt.Errorf("state %q", s)
		}
		return nil
	})
	if d := time.Since(paused); d > lease+200*time.Millisecond {
		t.Errorf("QEMU stopped %s after the agent, past its lease of %s", d, lease)
	}
	if err := con.Poll(); err != nil {
		t.Fatal(err)
	}
	frozenAt := con.Last()
	// Well under failover_after and the supervisor's kill of a frozen
	// QEMU (qemu.kill_frozen_after, here 1 s past the lease end): the
	// group stays, and must thaw.
	time.Sleep(400 * time.Millisecond) // the outage: the agent stays paused this long
	if err := con.Poll(); err != nil {
		t.Fatal(err)
	}
	if last := con.Last(); last.N != frozenAt.N {
		t.Errorf("the guest counted from %d to %d while its agent was paused past the lease", frozenAt.N, last.N)
	}
	owner.resume()
	con.Wait(t, 20*time.Second, "the guest counting again", func(s *testguest.Serial) bool { return s.Last().N > frozenAt.N })
	if err := con.Increasing(); err != nil {
		t.Errorf("the counter went back (the guest restarted): %v", err)
	}
	if qc.qemuPID(owner.name, "web") != pid {
		t.Error("a new QEMU runs: the VM was restarted, not thawed")
	}
}

// TestQemuAgentRestart: an agent killed and started again takes its VMs
// back: the same QEMU, the same epoch, the counter never reset.
func TestQemuAgentRestart(t *testing.T) {
	qc := newQemuCluster(t, 3)
	g0 := qc.group("web", testguest.Options{MemMiB: 16, TickMs: 20})
	owner := qc.node(g0.GetOwner())
	pid := qc.qemuPID(owner.name, "web")
	con := qc.console(owner.name, "web")

	owner.kill()
	owner.start()
	if err := con.Poll(); err != nil {
		t.Fatal(err)
	}
	before := con.Last().N
	con.Wait(t, 30*time.Second, "the guest counting on", func(s *testguest.Serial) bool { return s.Last().N > before+50 })
	if err := con.Increasing(); err != nil {
		t.Errorf("the counter went back (the guest restarted): %v", err)
	}
	if got := qc.qemuPID(owner.name, "web"); got != pid {
		t.Errorf("QEMU pid %d after the restart, was %d: the VM was restarted, not taken back", got, pid)
	}
	g := qc.allOnline(qc.leader(30*time.Second), []string{"web"}, 30*time.Second, anyOwner)["web"]
	if g.GetOwner() != owner.name || g.GetEpoch() != g0.GetEpoch() {
		t.Errorf("after the restart: %s@%d, want %s@%d", g.GetOwner(), g.GetEpoch(), owner.name, g0.GetEpoch())
	}
	if !logContains(owner, "vm taken back") {
		t.Errorf("%s's log does not say it took the VM back", owner.name)
	}
}

// TestQemuWatchdog: a guest that hangs while QEMU lives is caught by its
// i6300esb watchdog alone; the owner restarts it in place under the
// group's restart policy: a new QEMU, the guest counting from 1 again.
func TestQemuWatchdog(t *testing.T) {
	qc := newQemuCluster(t, 3)
	g0 := qc.group("web", testguest.Options{MemMiB: 16, TickMs: 20, WatchdogSec: 3})
	owner := qc.node(g0.GetOwner())
	pid := qc.qemuPID(owner.name, "web")
	if err := testguest.Send(qemu.ConsoleSocket(qc.runDir(owner.name), vmID("web")), "hang"); err != nil {
		t.Fatal(err)
	}
	hung := time.Now()
	waitFor(t, 60*time.Second, "a new QEMU for the group", func() error {
		b, err := os.ReadFile(qemu.PIDPath(qc.runDir(owner.name), vmID("web")))
		if err != nil {
			return err
		}
		if p, _ := strconv.Atoi(strings.TrimSpace(string(b))); p == pid || p == 0 {
			return errNotYet
		}
		return nil
	})
	if d := time.Since(hung); d < 3*time.Second {
		t.Errorf("restarted %s after the hang, before the watchdog's 3 s", d)
	}
	qc.console(owner.name, "web").Wait(t, 90*time.Second, "the restarted guest counting", func(s *testguest.Serial) bool { return s.Last().N > 0 })
	if procState(pid) != "" {
		t.Errorf("the hung guest's QEMU (pid %d) is still there", pid)
	}
	if !logContains(owner, "the guest's watchdog expired") {
		t.Errorf("%s's log does not name the watchdog", owner.name)
	}
	g := qc.allOnline(qc.leader(30*time.Second), []string{"web"}, 30*time.Second, anyOwner)["web"]
	if g.GetOwner() != owner.name || g.GetEpoch() != g0.GetEpoch() {
		t.Errorf("after the hang: %s@%d, want a restart in place on %s@%d", g.GetOwner(), g.GetEpoch(), owner.name, g0.GetEpoch())
	}
}

// TestQemuBadSpec: a VM that QEMU or the nodes cannot run (here its
// kernel is on no node) is refused at its start, with every node's
// reason, and nothing is tried: no QEMU started, no failure recorded.
func TestQemuBadSpec(t *testing.T) {
	qc := newQemuCluster(t, 3)
	leader := qc.leader(30 * time.Second)
	spec := &havenv1.GroupSpec{
		Name: "nokernel",
		Resources: []*havenv1.Resource{{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{
			Vcpus: 1, MemoryBytes: 128 << 20, Kernel: "/nonexistent/vmlinuz",
		}}},
	}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	_, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "nokernel"})
	want := []string{"no node can run it"}
	for _, n := range qc.nodes {
		want = append(want, n.name+": vm: boot.kernel: stat /nonexistent/vmlinuz: no such file or directory")
	}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("start: %v, want an error with %q", err, w)
		}
	}
	resp, err := leader.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: "nokernel"})
	if err != nil {
		t.Fatal(err)
	}
	if g := resp.GetGroup(); g.GetOwner() != "" || len(g.GetFailures()) != 0 {
		t.Errorf("the refused start left the group owned by %q with failures %v", g.GetOwner(), g.GetFailures())
	}
	for _, n := range qc.nodes {
		if runs, _ := filepath.Glob(filepath.Join(qc.runDir(n.name), "*", "qemu.pid")); len(runs) != 0 {
			t.Errorf("%s started a QEMU for a VM it cannot run: %v", n.name, runs)
		}
	}
}

// TestQemuKernelOnSomeNodes: a guest's kernel is on two nodes of three
// (two, so that the reserve of 1 holds: a group only one node can run
// would not survive that node's failure, and is refused). The node that
// lacks it says so, and the group starts on one that has it at once: no
// start is tried elsewhere, no failure recorded. The kernel path is
// node-local for real: /proc/self/cwd/... names a file under each agent's
// own working directory (each agent runs in its node's directory, and its
// supervisors and QEMUs inherit it), so one machine holds three nodes'
// views of "/proc/self/cwd/kern/vmlinuz", of which the first node's does
// not exist.
func TestQemuKernelOnSomeNodes(t *testing.T) {
	qc := newQemuCluster(t, 3)
	lacks := qc.nodes[0]
	for _, n := range qc.nodes[1:] {
		dir := filepath.Join(n.proc.Dir, "kern")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(qc.guest.Kernel, filepath.Join(dir, "vmlinuz")); err != nil {
			t.Fatal(err)
		}
	}
	const kernel = "/proc/self/cwd/kern/vmlinuz"
	leader := qc.leader(30 * time.Second)
	spec := &havenv1.GroupSpec{
		Name: "web",
		Resources: []*havenv1.Resource{{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{
			Vcpus: 1, MemoryBytes: 160 << 20,
			Kernel: kernel, Initrd: qc.guest.Initrd, Cmdline: qc.guest.Append(testguest.Options{MemMiB: 16, TickMs: 50}),
		}}},
	}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	// At once: the start waits for the nodes' checks of the new group.
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	g := qc.allOnline(leader, []string{"web"}, 60*time.Second, anyOwner)["web"]
	if g.GetOwner() == lacks.name || len(g.GetFailures()) != 0 {
		t.Errorf("web runs on %s with failures %v, want another node than %s and none", g.GetOwner(), g.GetFailures(), lacks.name)
	}
	qc.console(g.GetOwner(), "web").Wait(t, 90*time.Second, "the guest counting", func(s *testguest.Serial) bool { return s.Last().N > 0 })
	nodes, err := leader.api().ListNodes(ctx(t), &havenv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ni := range nodes.GetNodes() {
		n := ni.GetNode()
		var refused []string
		for _, r := range n.GetCannotRun() {
			refused = append(refused, r.GetGroup()+": "+r.GetReason())
		}
		var want []string
		if n.GetName() == lacks.name {
			want = []string{"web: vm: boot.kernel: stat " + kernel + ": no such file or directory"}
		}
		if !slices.Equal(refused, want) {
			t.Errorf("%s reports it cannot run %q, want %q", n.GetName(), refused, want)
		}
	}
	if runs, _ := filepath.Glob(filepath.Join(qc.runDir(lacks.name), "*", "qemu.pid")); len(runs) != 0 {
		t.Errorf("%s started a QEMU for a VM it cannot run: %v", lacks.name, runs)
	}
}

// TestQemuMoves: a running VM moves live, then quick, between agents,
// through the same operations as the sim's: its guest's counter goes on on
// the target from where the source stopped (one guest, never two:
// a second runner would repeat numbers, a reboot would start again at 1),
// and the old QEMU is gone. (The process watcher of the failover test does
// not apply: a move's target QEMU exists, paused, beside the source.)
// The cluster runs with TLS, so the live move's stream between the QEMUs
// is mutual TLS, and the quick move after it (from the QEMU that was the
// live move's target) writes its state file in the clear.
func TestQemuMoves(t *testing.T) {
	qc := newQemuCluster(t, 3, withTLS(newTestPKI(t, filepath.Join(t.TempDir(), "tls"), "qemu moves")))
	g := qc.group("web", testguest.Options{MemMiB: 32, DirtyMiBPerSec: 8, TickMs: 20})
	leader := qc.leader(30 * time.Second)
	for _, kind := range []havenv1.MoveKind{havenv1.MoveKind_MOVE_KIND_LIVE, havenv1.MoveKind_MOVE_KIND_QUICK} {
		from := g.GetOwner()
		var to string
		for _, n := range qc.nodes {
			if n.name != from {
				to = n.name
				break
			}
		}
		// Opened now: the source's directory goes once the move is done,
		// and an open log can still be read to its end.
		src := qc.console(from, "web")
		if err := src.Poll(); err != nil {
			t.Fatal(err)
		}
		oldPID := qc.qemuPID(from, "web")
		resp, err := leader.api().MoveGroup(ctx(t), &havenv1.MoveGroupRequest{Name: "web", Target: to, Kind: kind})
		if err != nil {
			t.Fatalf("%s move: %v", kind, err)
		}
		op := qc.waitMove(leader, resp.GetOperation().GetId(), 120*time.Second)
		if op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED {
			t.Fatalf("%s move ended %s (%s)", kind, op.GetOutcome(), op.GetReason())
		}
		after := qc.allOnline(leader, []string{"web"}, 30*time.Second, func(x *havenv1.Group) bool { return x.GetOwner() == to })["web"]
		if err := src.Poll(); err != nil {
			t.Fatal(err)
		}
		last := src.Last().N
		dst := qc.console(to, "web")
		dst.Wait(t, 30*time.Second, "the guest counting on "+to, func(s *testguest.Serial) bool { return s.First().N > 0 && s.Last().N > s.First().N })
		// The next one, or the one after: a line the guest was writing
		// at the pause is cut in two, its halves on each console, and the
		// reader skips both.
		if first := dst.First().N; first <= last || first > last+2 {
			t.Errorf("%s move: the source's last tick %d, the target's first %d: want the next one", kind, last, first)
		}
		waitFor(t, 30*time.Second, "the source's QEMU gone", func() error {
			if s := procState(oldPID); s != "" && s != "Z" {
				return fmt.Errorf("pid %d in state %s", oldPID, s)
			}
			return nil
		})
		t.Logf("%s move %s -> %s: epoch %d -> %d, source's last tick %d, target's first %d", kind, from, to, g.GetEpoch(), after.GetEpoch(), last, dst.First().N)
		g = after
	}
}

// A disk hot-added to a running VM goes with it on a live move, at the
// same place on its bus, and a detach on the new node lets go of the
// image: QEMU's image lock follows the disk, and the guest counts on.
func TestQemuDisks(t *testing.T) {
	qc := newQemuCluster(t, 2)
	g := qc.group("web", testguest.Options{MemMiB: 16, TickMs: 20}, "root")
	leader := qc.leader(30 * time.Second)
	data := qc.disk("web", "data")
	if qc.locked(data) {
		t.Fatal("the data image is locked before its attach: the lock proves nothing")
	}
	resp, err := leader.api().AttachDisk(ctx(t), &havenv1.AttachDiskRequest{Group: "web", Disk: data})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	if dc := resp.GetChange(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED || dc.GetNode() != g.GetOwner() {
		t.Fatalf("attach answered %v, want applied on %s", dc, g.GetOwner())
	}
	if !qc.locked(data) {
		t.Fatal("the data image is not locked once attached: QEMU did not open it")
	}
	guestSees(t, qc.console(g.GetOwner(), "web"), 2)

	var to string
	for _, n := range qc.nodes {
		if n.name != g.GetOwner() {
			to = n.name
		}
	}
	src := qc.console(g.GetOwner(), "web")
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	mv, err := leader.api().MoveGroup(ctx(t), &havenv1.MoveGroupRequest{Name: "web", Target: to, Kind: havenv1.MoveKind_MOVE_KIND_LIVE})
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	if op := qc.waitMove(leader, mv.GetOperation().GetId(), 120*time.Second); op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED {
		t.Fatalf("the move with the hot-added disk ended %s (%s)", op.GetOutcome(), op.GetReason())
	}
	g = qc.allOnline(leader, []string{"web"}, 30*time.Second, func(x *havenv1.Group) bool { return x.GetOwner() == to })["web"]
	for _, r := range g.GetSpec().GetResources() {
		if want := map[string]uint32{"root": 0, "data": 1}; r.GetDisk() != nil && r.GetDisk().GetSlot() != want[r.GetName()] {
			t.Errorf("disk %s at slot %d, want %d", r.GetName(), r.GetDisk().GetSlot(), want[r.GetName()])
		}
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	dst := qc.console(to, "web")
	dst.Wait(t, 30*time.Second, "the guest counting on "+to, func(s *testguest.Serial) bool { return s.First().N > 0 && s.Last().N > s.First().N })
	if first, last := dst.First().N, src.Last().N; first <= last || first > last+2 {
		t.Errorf("the source's last tick %d, the target's first %d: want the next one", last, first)
	}
	if !qc.locked(data) {
		t.Error("the data image is not locked after the move: the target's QEMU did not take it")
	}

	dresp, err := leader.api().DetachDisk(ctx(t), &havenv1.DetachDiskRequest{Group: "web", Disk: "data"})
	if err != nil {
		t.Fatalf("detach: %v", err)
	}
	if dc := dresp.GetChange(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED || dc.GetNode() != to {
		t.Fatalf("detach answered %v, want applied on %s", dc, to)
	}
	if qc.locked(data) {
		t.Error("the data image is still locked after the detach was answered")
	}
	guestSees(t, dst, 1)
	n := dst.Last().N
	dst.Wait(t, 10*time.Second, "the guest counting on after the detach", func(s *testguest.Serial) bool { return s.Last().N > n+10 })
}

// A disk image that another process holds (here a QEMU outside the
// cluster, as a VM started by hand would) fails the group's start on
// every node with the reason, and QEMU's image lock keeps the guest from
// ever writing it; once the image is free, an operator's start runs it.
func TestQemuHeldImage(t *testing.T) {
	qc := newQemuCluster(t, 2)
	leader := qc.leader(30 * time.Second)
	root := qc.disk("held", "root")
	monitor := filepath.Join(qc.dir, "holder.qmp")
	holder := exec.Command("qemu-system-x86_64", "-nodefaults", "-display", "none", "-S", "-accel", "tcg",
		"-blockdev", `{"driver":"raw","node-name":"d","file":{"driver":"file","filename":"`+filepath.Join(qc.dir, "shared", root.GetDisk().GetPath())+`"}}`,
		"-device", "virtio-scsi-pci,id=s", "-device", "scsi-hd,drive=d,bus=s.0",
		"-qmp", "unix:"+monitor+",server=on,wait=off")
	var holderOut bytes.Buffer
	holder.Stdout, holder.Stderr = &holderOut, &holderOut
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() { held <- holder.Wait() }()
	// Only that goroutine waits: a second Cmd.Wait blocks for ever on the
	// output copy the first one took (it hung the suite in CI).
	release := sync.OnceFunc(func() {
		holder.Process.Kill()
		<-held
	})
	t.Cleanup(release)
	// Wait for the holder's main loop, which runs only once its devices
	// are realized and the image opened and locked, before probing the
	// lock: the probe (qemu-io) opens the image read-write and takes the
	// locks itself, and one that ran while the holder started made the
	// holder's own open fail in CI. A holder that exits never locks: say
	// why at once (CI once waited the 30 s out with nothing to show).
	waitFor(t, 30*time.Second, "the holder to answer on its monitor", func() error {
		select {
		case err := <-held:
			held <- err // for the cleanup's receive
			t.Fatalf("the holder exited before it locked the image: %v: %s", err, holderOut.String())
		default:
		}
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		mon, err := qmp.Dial(dctx, monitor, nil)
		if err != nil {
			return err
		}
		defer mon.Close()
		return mon.Execute(dctx, "query-status", nil, nil)
	})
	if !qc.locked(root) {
		t.Fatalf("the holder runs but does not lock the image: %s", holderOut.String())
	}
	vm := &havenv1.Resource{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"root"}, Vm: &havenv1.VmSpec{
		Vcpus: 1, MemoryBytes: 160 << 20, Kernel: qc.guest.Kernel, Initrd: qc.guest.Initrd, Cmdline: qc.guest.Append(testguest.Options{MemMiB: 16, TickMs: 20}),
	}}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "held", Resources: []*havenv1.Resource{root, vm}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "held"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, "the group failed, saying why", func() error {
		resp, err := leader.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: "held"})
		if err != nil {
			return err
		}
		g := resp.GetGroup()
		if g.GetState() != havenv1.GroupState_GROUP_STATE_FAILED || g.GetOwner() != "" || !strings.Contains(g.GetStateReason(), "in use by another process") {
			return fmt.Errorf("%s on %q: %q", g.GetState(), g.GetOwner(), g.GetStateReason())
		}
		return nil
	})
	release()
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "held"}); err != nil {
		t.Fatal(err)
	}
	g := qc.allOnline(leader, []string{"held"}, 60*time.Second, anyOwner)["held"]
	qc.console(g.GetOwner(), "held").Wait(t, 90*time.Second, "the guest counting", func(s *testguest.Serial) bool { return s.Last().N > 0 })
}

// guestSees waits until the guest's last list of its disks has n of them.
func guestSees(t *testing.T, s *testguest.Serial, n int) {
	t.Helper()
	s.Wait(t, 30*time.Second, fmt.Sprintf("the guest to see %d disks", n), func(s *testguest.Serial) bool {
		m, ok := s.LastMessage("haven-disks")
		return ok && len(strings.Fields(m.Text))-1 == n
	})
}

// A drain of a qemu node moves its VMs live to the others: each guest
// counts on where it stopped, none is restarted, and the node ends empty.
func TestQemuDrain(t *testing.T) {
	qc := newQemuCluster(t, 3)
	leader := qc.leader(30 * time.Second)
	var node string
	for _, n := range qc.nodes {
		if n != leader {
			node = n.name
			break
		}
	}
	consoles := map[string]*testguest.Serial{}
	for _, name := range []string{"web", "db"} {
		g := qc.placedGroup(name, node, testguest.Options{MemMiB: 16, DirtyMiBPerSec: 4, TickMs: 20})
		// Opened now: the source's directory goes once the move is
		// done, and an open log can still be read to its end.
		consoles[name] = qc.console(g.GetOwner(), name)
		if err := consoles[name].Poll(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := leader.api().DrainNode(ctx(t), &havenv1.DrainNodeRequest{Node: node}); err != nil {
		t.Fatal(err)
	}
	after := qc.allOnline(leader, []string{"web", "db"}, 120*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != node && g.GetOperation() == "" })
	for name, g := range after {
		src := consoles[name]
		if err := src.Poll(); err != nil {
			t.Fatal(err)
		}
		dst := qc.console(g.GetOwner(), name)
		dst.Wait(t, 30*time.Second, name+" counting on "+g.GetOwner(), func(s *testguest.Serial) bool { return s.First().N > 0 && s.Last().N > s.First().N })
		if first, last := dst.First().N, src.Last().N; first <= last || first > last+2 {
			t.Errorf("%s: the source's last tick %d, the target's first %d: want the next one (a live move, not a restart)", name, last, first)
		}
	}
}

// placedGroup is group, started on node.
func (qc *qemuCluster) placedGroup(name, node string, opts testguest.Options) *havenv1.Group {
	t := qc.t
	t.Helper()
	leader := qc.leader(30 * time.Second)
	spec := &havenv1.GroupSpec{Name: name, Resources: []*havenv1.Resource{{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{
		Vcpus: 1, MemoryBytes: 160 << 20, Kernel: qc.guest.Kernel, Initrd: qc.guest.Initrd, Cmdline: qc.guest.Append(opts),
	}}}}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name, Node: node}); err != nil {
		t.Fatal(err)
	}
	g := qc.allOnline(leader, []string{name}, 60*time.Second, anyOwner)[name]
	qc.console(g.GetOwner(), name).Wait(t, 90*time.Second, name+"'s guest counting", func(s *testguest.Serial) bool { return s.Last().N > 0 })
	return g
}
