package executor

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// checkDriver is a fakeDriver that can tell which kernels this node has.
type checkDriver struct {
	*fakeDriver
	mu      sync.Mutex
	kernels map[string]bool
	asked   int
}

func (d *checkDriver) CanRun(spec driver.VMSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked++
	if k := spec.Boot.Kernel; k != "" && !d.kernels[k] {
		return fmt.Errorf("%w: boot.kernel: stat %s: no such file or directory", driver.ErrInvalidSpec, k)
	}
	return nil
}

func (d *checkDriver) add(kernel string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kernels[kernel] = true
}

// kernelGroups creates n groups whose kernel the node has (g00 on) and
// db, whose kernel it lacks.
func kernelGroups(l *fsmtest.Log, n int) {
	for i := range n {
		l.Create(kernelGroup(fmt.Sprintf("g%02d", i), "/boot/a"))
	}
	l.Create(kernelGroup("db", "/boot/b"))
}

// checkingExecutor is n1's executor over st, checking every minute, whose
// reports the leader records at once; sent, if not nil, gets each report.
func checkingExecutor(t *testing.T, l *fsmtest.Log, st State, drv driver.Hypervisor, sent *[]*havenv1.ReportChecksRequest) *Executor {
	return New(Config{Node: "n1", State: st, Driver: drv, Logger: logtest.New(t), CheckEvery: time.Minute,
		ReportChecks: func(_ context.Context, r *havenv1.ReportChecksRequest) error {
			if sent != nil {
				*sent = append(*sent, r)
			}
			record(l, r)
			return nil
		}})
}

// record commits a node's report as the leader does.
func record(l *fsmtest.Log, r *havenv1.ReportChecksRequest) {
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_SetNodeChecks{SetNodeChecks: &havenv1.SetNodeChecksCommand{
		Name: r.GetNode(), CheckedIndex: r.GetCheckedIndex(), CannotRun: r.GetCannotRun()}}})
}

func kernelGroup(name, kernel string) *havenv1.GroupSpec {
	spec := fsmtest.VMGroup(name)
	spec.Resources[1].Vm.Kernel = kernel
	return spec
}

// The node reports what its driver cannot run, once, as the leader
// records it; again when a new group appears (so that a start can wait for
// the check) or a file appears (within CheckEvery); never for a group
// another node must run.
func TestChecksReported(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	d := &checkDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, kernels: map[string]bool{"/boot/a": true}}
	var sent []*havenv1.ReportChecksRequest
	const every = time.Minute
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t), CheckEvery: every,
		ReportChecks: func(_ context.Context, r *havenv1.ReportChecksRequest) error {
			sent = append(sent, r)
			record(l, r)
			return nil
		}})
	web := l.Create(kernelGroup("web", "/boot/a"))
	db := l.Create(kernelGroup("db", "/boot/b"))
	other := kernelGroup("pinned", "/boot/c")
	other.PossibleOwners = []string{"n2"}
	l.Create(other)
	var cs checkState
	now := time.Now()
	e.checkPass(context.Background(), &cs, now)
	if len(sent) != 1 {
		t.Fatalf("sent %d reports, want 1", len(sent))
	}
	want := "vm: boot.kernel: stat /boot/b: no such file or directory"
	if r := sent[0].GetCannotRun(); len(r) != 1 || r[0].GetGroup() != "db" || r[0].GetCreateIndex() != db.GetCreateIndex() || r[0].GetReason() != want {
		t.Fatalf("reported %v, want db: %q", r, want)
	}
	if got := l.FSM.Node("n1").GetCheckedIndex(); got < web.GetCreateIndex() || got < db.GetCreateIndex() {
		t.Fatalf("checked index %d is before the groups' creation", got)
	}
	// Nothing changed but the record: no report, no driver asked.
	asked := d.asked
	e.checkPass(context.Background(), &cs, now.Add(time.Second))
	if len(sent) != 1 || d.asked != asked {
		t.Fatalf("an unchanged state sent %d reports and asked the driver %d times", len(sent)-1, d.asked-asked)
	}
	// A new group: checked, and reported although it runs here, so that a
	// start of it knows this node has looked.
	fresh := l.Create(kernelGroup("app", "/boot/a"))
	e.checkPass(context.Background(), &cs, now.Add(2*time.Second))
	if len(sent) != 2 || sent[1].GetCheckedIndex() < fresh.GetCreateIndex() || len(sent[1].GetCannotRun()) != 1 {
		t.Fatalf("after a new group: %v", sent)
	}
	// The kernel appears: seen on the next full check, not before.
	d.add("/boot/b")
	e.checkPass(context.Background(), &cs, now.Add(3*time.Second))
	if len(sent) != 2 {
		t.Fatalf("the file was looked for again before CheckEvery: %v", sent[2:])
	}
	e.checkPass(context.Background(), &cs, now.Add(every+time.Second))
	if len(sent) != 3 || len(sent[2].GetCannotRun()) != 0 || len(l.FSM.Node("n1").GetCannotRun()) != 0 {
		t.Fatalf("after the kernel appeared: %v", sent[2:])
	}
}

// A report the leader did not take is sent again on the next pass.
func TestChecksRetried(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	d := &checkDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, kernels: map[string]bool{}}
	fail := true
	var sent int
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t),
		ReportChecks: func(_ context.Context, r *havenv1.ReportChecksRequest) error {
			sent++
			if fail {
				return fmt.Errorf("no leader")
			}
			record(l, r)
			return nil
		}})
	l.Create(kernelGroup("web", "/boot/a"))
	var cs checkState
	now := time.Now()
	e.checkPass(context.Background(), &cs, now)
	fail = false
	e.checkPass(context.Background(), &cs, now.Add(time.Second))
	if sent != 2 || len(l.FSM.Node("n1").GetCannotRun()) != 1 {
		t.Fatalf("sent %d, recorded %v", sent, l.FSM.Node("n1").GetCannotRun())
	}
}

// everyGroup counts the reads of every group of the cluster.
type everyGroup struct {
	*fsm.FSM
	reads int
}

func (s *everyGroup) Groups() []*havenv1.Group {
	s.reads++
	return s.FSM.Groups()
}

// Between full passes a pass reads the groups changed since the last one
// only, not every group, yet a new group is reported and a refused group
// that was deleted leaves the report at once.
func TestChecksBetweenFullPassesReadChangesOnly(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	d := &checkDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, kernels: map[string]bool{"/boot/a": true}}
	var sent []*havenv1.ReportChecksRequest
	st := &everyGroup{FSM: l.FSM}
	e := checkingExecutor(t, l, st, d, &sent)
	const n = 50
	kernelGroups(l, n)
	var cs checkState
	now := time.Now()
	e.checkPass(context.Background(), &cs, now)
	if d.asked != n+1 || len(sent) != 1 || len(sent[0].GetCannotRun()) != 1 {
		t.Fatalf("first pass: asked %d, sent %v", d.asked, sent)
	}

	fresh := l.Create(kernelGroup("app", "/boot/a"))
	l.Stop("g07") // a change, though not of its spec
	asked := d.asked
	e.checkPass(context.Background(), &cs, now.Add(time.Second))
	if d.asked-asked > 1 || st.reads != 1 {
		t.Errorf("a pass after one new group asked the driver %d times and read every group %d times", d.asked-asked, st.reads-1)
	}
	if len(sent) != 2 || sent[1].GetCheckedIndex() < fresh.GetCreateIndex() || len(sent[1].GetCannotRun()) != 1 {
		t.Fatalf("after a new group: %v", sent)
	}

	l.Run(&havenv1.Command{Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: "db"}}})
	e.checkPass(context.Background(), &cs, now.Add(2*time.Second))
	if len(sent) != 3 || len(sent[2].GetCannotRun()) != 0 || len(l.FSM.Node("n1").GetCannotRun()) != 0 {
		t.Fatalf("after the refused group was deleted: %v", sent[2:])
	}
	if st.reads != 1 {
		t.Errorf("passes between full ones read every group %d times", st.reads-1)
	}
}

// BenchmarkFullCheckPass is one pass that checks every group again, as
// every node runs one each CheckEvery: 10,000 groups, none refused, the
// report already on record.
func BenchmarkFullCheckPass(b *testing.B) {
	l := fsmtest.New(b)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	for i := range 10000 {
		l.Create(fsmtest.VMGroup(fmt.Sprintf("g%05d", i)))
	}
	e := New(Config{Node: "n1", State: l.FSM, Driver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, Logger: logtest.New(b), CheckEvery: time.Minute,
		ReportChecks: func(_ context.Context, r *havenv1.ReportChecksRequest) error {
			record(l, r)
			return nil
		}})
	var cs checkState
	now := time.Now()
	e.checkPass(context.Background(), &cs, now)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		now = now.Add(time.Minute)
		e.checkPass(context.Background(), &cs, now)
	}
}

// specOnlyDriver is a checkDriver whose verdicts depend on the spec alone.
type specOnlyDriver struct{ *checkDriver }

func (specOnlyDriver) ChecksSpecOnly() bool { return true }

// A driver whose verdicts depend on the spec alone is asked once per
// spec: the full pass keeps its verdicts, refusals included, and asks
// only of a spec that changed. A driver that reads the host is asked of
// every spec again on each full pass.
func TestFullPassAsksASpecOnlyDriverNothingAgain(t *testing.T) {
	for _, specOnly := range []bool{true, false} {
		l := fsmtest.New(t)
		l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
		cd := &checkDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, kernels: map[string]bool{"/boot/a": true}}
		var drv driver.Hypervisor = cd
		if specOnly {
			drv = specOnlyDriver{cd}
		}
		e := checkingExecutor(t, l, l.FSM, drv, nil)
		const n = 20
		kernelGroups(l, n)
		var cs checkState
		now := time.Now()
		e.checkPass(context.Background(), &cs, now)
		asked := cd.asked
		e.checkPass(context.Background(), &cs, now.Add(time.Minute)) // a full pass
		again := cd.asked - asked
		switch {
		case specOnly && again != 0:
			t.Errorf("spec-only driver: the full pass asked %d times again, want 0", again)
		case !specOnly && again != n+1:
			t.Errorf("host-reading driver: the full pass asked %d times again, want %d", again, n+1)
		}
		if got := l.FSM.Node("n1").GetCannotRun(); len(got) != 1 || got[0].GetGroup() != "db" {
			t.Errorf("spec-only %v: after the full pass the node's refusals are %v, want db's", specOnly, got)
		}
	}
}

// Each command on a group copies its record, spec included. A verdict
// follows the copy it was last matched to, so a spec that did not change
// is compared by pointer on the next pass, not field by field.
func TestVerdictFollowsTheSpecsCopy(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	cd := &checkDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, kernels: map[string]bool{"/boot/a": true}}
	e := checkingExecutor(t, l, l.FSM, specOnlyDriver{cd}, nil)
	kernelGroups(l, 3)
	var cs checkState
	now := time.Now()
	e.checkPass(context.Background(), &cs, now)
	first := l.FSM.Group("g00").GetSpec()
	l.Assign("g00", "n1")
	l.Report("g00", havenv1.GroupState_GROUP_STATE_ONLINE)
	if l.FSM.Group("g00").GetSpec() == first {
		t.Fatal("the FSM kept the spec's pointer across commands; this test shows nothing")
	}
	for i := range 2 {
		e.checkPass(context.Background(), &cs, now.Add(time.Duration(i+1)*time.Minute))
		if got, want := cs.byGroup["g00"].spec, l.FSM.Group("g00").GetSpec(); got != want {
			t.Fatalf("pass %d: the verdict stands for an older copy of g00's spec", i+1)
		}
	}
	if cd.asked != 4 {
		t.Errorf("the driver was asked %d times, want once per group (4)", cd.asked)
	}
}

// BenchmarkFullCheckPassStarted is the full pass as the sim's nodes run
// it: 10,000 groups started (each record copied since its creation) and a
// driver whose verdicts depend on the spec alone.
func BenchmarkFullCheckPassStarted(b *testing.B) {
	l := fsmtest.New(b)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	cd := &checkDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, kernels: map[string]bool{"/boot/a": true}}
	e := New(Config{Node: "n1", State: l.FSM, Driver: specOnlyDriver{cd}, Logger: logtest.New(b), CheckEvery: time.Minute,
		ReportChecks: func(_ context.Context, r *havenv1.ReportChecksRequest) error {
			record(l, r)
			return nil
		}})
	for i := range 10000 {
		l.Create(kernelGroup(fmt.Sprintf("g%05d", i), "/boot/a"))
	}
	var cs checkState
	now := time.Now()
	e.checkPass(context.Background(), &cs, now)
	for i := range 10000 {
		l.Assign(fmt.Sprintf("g%05d", i), "n1")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		now = now.Add(time.Minute)
		e.checkPass(context.Background(), &cs, now)
	}
}
