package executor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fakeDriver records what the executor asks of it.
type fakeDriver struct {
	mu       sync.Mutex
	vms      map[driver.VMID]driver.Status
	startErr error
	starts   int
	stopped  []string
}

func (d *fakeDriver) Capabilities() driver.Capabilities { return driver.Capabilities{} }
func (d *fakeDriver) Start(_ context.Context, spec driver.VMSpec, end time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts++
	if d.startErr != nil {
		return d.startErr
	}
	d.vms[spec.ID] = driver.Status{ID: spec.ID, Epoch: spec.Epoch, State: driver.StateRunning, LeaseEnd: end}
	return nil
}
func (d *fakeDriver) Stop(_ context.Context, id driver.VMID, epoch uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = append(d.stopped, id.Resource)
	st := d.vms[id]
	st.State = driver.StateStopped
	d.vms[id] = st
	return nil
}
func (d *fakeDriver) Kill(id driver.VMID, epoch uint64) error {
	return d.Stop(context.Background(), id, epoch)
}
func (d *fakeDriver) ExtendLease(driver.VMID, uint64, time.Time) error { return nil }
func (d *fakeDriver) Status(id driver.VMID) (driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.vms[id]
	if !ok {
		return st, driver.ErrNotFound
	}
	return st, nil
}
func (d *fakeDriver) List() []driver.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []driver.Status
	for _, st := range d.vms {
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y driver.Status) int { return strings.Compare(x.ID.String(), y.ID.String()) })
	return out
}
func (d *fakeDriver) Forget(id driver.VMID, epoch uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st, ok := d.vms[id]; ok && st.Epoch != epoch {
		return driver.ErrStaleEpoch
	}
	delete(d.vms, id)
	return nil
}
func (d *fakeDriver) Close() error { return nil }

// testExecutor is n1's executor over a fake driver; reports go to reports.
func testExecutor(l *fsmtest.Log, d *fakeDriver) (*Executor, *[]*havenv1.ReportGroupRequest) {
	var reports []*havenv1.ReportGroupRequest
	var mu sync.Mutex // a reconcile's reports go out at once
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(l.T), Report: func(_ context.Context, r *havenv1.ReportGroupRequest) error {
		mu.Lock()
		defer mu.Unlock()
		reports = append(reports, r)
		return nil
	}})
	return e, &reports
}

// A group is stopped in reverse dependency order: here the app VM
// ("a-app", first by name) depends on the database VM ("b-db"), so the app
// stops first.
func TestExecutorStopsInReverseDependencyOrder(t *testing.T) {
	l := fsmtest.New(t)
	spec := &havenv1.GroupSpec{Name: "shop", Resources: []*havenv1.Resource{
		{Name: "b-db", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 1 << 20}},
		{Name: "a-app", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"b-db"}, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 1 << 20}},
	}}
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: spec}}})
	g := l.FSM.Group("shop")
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "shop", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: "shop"}}})
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	for _, r := range []string{"a-app", "b-db"} {
		id := driver.VMID{Group: "shop", Resource: r}
		d.vms[id] = driver.Status{ID: id, Epoch: l.FSM.Group("shop").GetEpoch(), State: driver.StateRunning}
	}
	e, reports := testExecutor(l, d)
	e.reconcile(context.Background())
	if !slices.Equal(d.stopped, []string{"a-app", "b-db"}) {
		t.Fatalf("stopped %v, want a-app (which depends on b-db) first", d.stopped)
	}
	if len(*reports) != 1 || (*reports)[0].GetState() != havenv1.GroupState_GROUP_STATE_OFFLINE {
		t.Fatalf("reports %v, want one offline", *reports)
	}
}

// A VM that cannot start is retried a bounded number of times with
// backoff, then reported failed with the driver's reason; a start refused
// for a stale epoch (a disk claimed by a newer one) is reported at once.
func TestExecutorReportsFailedStarts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		attempts int
		reason   string
	}{
		{"keeps failing", errors.New("no such bridge br7"), startAttempts, "could not start on n1: no such bridge br7"},
		{"fenced by its disk", fmt.Errorf("claiming disk disk0: %w", driver.ErrStaleEpoch), 1, "fenced on n1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := fsmtest.New(t)
			l.Run(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup("web")}}})
			g := l.FSM.Group("web")
			l.Run(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
				Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
			d := &fakeDriver{vms: map[driver.VMID]driver.Status{}, startErr: tc.err}
			e, reports := testExecutor(l, d)
			// The executor's passes, as its loop makes them, until the
			// retries with their backoff are used up and it reports.
			waitfor.Cond(t, 10*time.Second, "a report of the failed start", func() bool {
				e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: l.FSM.Group("web").GetEpoch()}})
				e.reconcile(context.Background())
				return len(*reports) > 0
			})
			if len(*reports) != 1 {
				t.Fatalf("reports %v, want one", *reports)
			}
			r := (*reports)[0]
			if r.GetState() != havenv1.GroupState_GROUP_STATE_FAILED || !strings.Contains(r.GetReason(), tc.reason) || r.GetDesiredIndex() != l.FSM.Group("web").GetDesiredIndex() {
				t.Fatalf("report %v, want failed with %q", r, tc.reason)
			}
			if d.starts != tc.attempts {
				t.Fatalf("%d start attempts, want %d", d.starts, tc.attempts)
			}
		})
	}
}

// The executor re-reads the desired state right before it starts a VM: a
// stop applied after its pass read the state wins.
func TestExecutorRereadsDesiredBeforeStart(t *testing.T) {
	l := fsmtest.New(t)
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup("web")}}})
	g := l.FSM.Group("web")
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "web", ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}})
	g = l.FSM.Group("web") // what a pass read
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: "web"}}})
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	e, _ := testExecutor(l, d)
	e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: l.FSM.Group("web").GetEpoch()}})
	e.ensureRunning(context.Background(), g, nil)
	if d.starts != 0 {
		t.Fatalf("started a group stopped after the pass read it")
	}
}

// Step 5, the node's side: the executor starts a group only at an epoch
// a grant confirmed, and only while that grant's lease lasts. A grant
// that leaves a group out, or lists it at an older epoch, starts nothing;
// nor does a grant that has ended.
func TestExecutorOnlyRunsConfirmedEpochs(t *testing.T) {
	l := fsmtest.New(t)
	l.Create(fsmtest.VMGroup("web"))
	web := l.Assign("web", "n1")
	l.Create(fsmtest.VMGroup("db"))
	l.Assign("db", "n1")
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	e, _ := testExecutor(l, d)
	running := func() []string {
		var out []string
		for _, st := range d.List() {
			if st.State == driver.StateRunning {
				out = append(out, fmt.Sprintf("%s@%d", st.ID.Group, st.Epoch))
			}
		}
		return out
	}
	ctx := context.Background()

	e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: web.GetEpoch() - 1}})
	e.reconcile(ctx)
	if got := running(); len(got) != 0 {
		t.Fatalf("with web confirmed at an older epoch and db not at all: running %v", got)
	}
	e.Granted(time.Now().Add(-time.Millisecond), []*havenv1.GroupEpoch{{Name: "web", Epoch: web.GetEpoch()}})
	e.reconcile(ctx)
	if got := running(); len(got) != 0 {
		t.Fatalf("with a grant that has ended: running %v", got)
	}
	e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: web.GetEpoch()}})
	e.reconcile(ctx)
	if got := running(); !slices.Equal(got, []string{fmt.Sprintf("web@%d", web.GetEpoch())}) {
		t.Fatalf("with web confirmed at its epoch: running %v, want web only", got)
	}
}

// A VM the plan does not keep is killed: its group moved to another node
// or to another epoch.
func TestExecutorKillsWhatThePlanDoesNotKeep(t *testing.T) {
	l := fsmtest.New(t)
	web := l.StartOn("web", "n1")
	l.StartOn("db", "n2")
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	for _, st := range []driver.Status{
		{ID: driver.VMID{Group: "web", Resource: "vm"}, Epoch: web.GetEpoch(), State: driver.StateRunning},
		{ID: driver.VMID{Group: "db", Resource: "vm"}, Epoch: l.FSM.Group("db").GetEpoch(), State: driver.StateRunning},
		{ID: driver.VMID{Group: "gone", Resource: "vm"}, Epoch: 1, State: driver.StateFrozen},
	} {
		d.vms[st.ID] = st
	}
	e, _ := testExecutor(l, d)
	e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: web.GetEpoch()}})
	e.reconcile(context.Background())
	if !slices.Equal(d.stopped, []string{"vm", "vm"}) || len(d.vms) != 1 {
		t.Fatalf("stopped %v, left %v: want db and gone killed and forgotten", d.stopped, d.vms)
	}
	if _, ok := d.vms[driver.VMID{Group: "web", Resource: "vm"}]; !ok {
		t.Fatal("web, which n1 owns at this epoch, was killed")
	}
}

// An agent restarted under running VMs (qemu's outlive it) may replay an
// older state than the leader's: it kills none before its first grant,
// and never one the last grant confirms at its epoch; once a grant leaves
// a VM out, it goes.
func TestExecutorKeepsWhatTheGrantConfirms(t *testing.T) {
	l := fsmtest.New(t)
	l.StartOn("db", "n2") // the local state says n2 runs db
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	db := driver.VMID{Group: "db", Resource: "vm"}
	d.vms[db] = driver.Status{ID: db, Epoch: 7, State: driver.StateRunning}
	e, _ := testExecutor(l, d)
	ctx := context.Background()

	e.reconcile(ctx)
	if len(d.stopped) != 0 {
		t.Fatalf("before any grant: stopped %v, want nothing", d.stopped)
	}
	e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "db", Epoch: 7}})
	e.reconcile(ctx)
	if len(d.stopped) != 0 {
		t.Fatalf("with db@7 confirmed by the grant: stopped %v, want nothing", d.stopped)
	}
	e.Granted(time.Now().Add(time.Minute), nil)
	e.reconcile(ctx)
	if !slices.Equal(d.stopped, []string{"vm"}) || len(d.vms) != 0 {
		t.Fatalf("once the grant leaves db out: stopped %v, left %v; want db killed and forgotten", d.stopped, d.vms)
	}
}

// The reports of one reconcile are in flight together, so the leader
// commits them together: here each report waits until all three are sent.
// One after another, the first would wait for the others in vain.
func TestExecutorReportsAtOnce(t *testing.T) {
	l := fsmtest.New(t)
	var grant []*havenv1.GroupEpoch
	for _, name := range []string{"a", "b", "c"} {
		l.Create(fsmtest.VMGroup(name))
		grant = append(grant, &havenv1.GroupEpoch{Name: name, Epoch: l.Assign(name, "n1").GetEpoch()})
	}
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	var inFlight sync.WaitGroup
	inFlight.Add(len(grant))
	all := make(chan struct{})
	go func() { inFlight.Wait(); close(all) }()
	var mu sync.Mutex
	online := 0
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t), Report: func(_ context.Context, r *havenv1.ReportGroupRequest) error {
		inFlight.Done()
		select {
		case <-all:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("report of %s waited 5s for the others", r.GetName())
		}
		mu.Lock()
		defer mu.Unlock()
		if r.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE {
			online++
		}
		return nil
	}})
	e.Granted(time.Now().Add(time.Minute), grant)
	e.reconcile(context.Background()) // starts them
	e.reconcile(context.Background()) // sees them up: reports them online
	if online != len(grant) {
		t.Fatalf("%d groups reported online, want %d", online, len(grant))
	}
}

// A command about another node's group leaves this node's plan as it is:
// the executor does not look again for it. One that changes a group of
// this node, or assigns one to it, does.
func TestAppliedCommandsOfOtherNodesSkipped(t *testing.T) {
	l := fsmtest.New(t)
	for _, n := range []string{"n1", "n2"} {
		l.AddNode(fsmtest.Node(n, "a", 64000, 256<<30, nil))
	}
	l.StartOn("mine", "n1")
	e, _ := testExecutor(l, &fakeDriver{vms: map[driver.VMID]driver.Status{}})
	e.currentPlan()
	if !e.sameInputs() {
		t.Fatal("nothing applied, yet the inputs differ")
	}
	l.StartOn("theirs", "n2")
	if !e.sameInputs() {
		t.Error("a group started on n2 counts as a change for n1")
	}
	l.Stop("mine")
	if e.sameInputs() {
		t.Error("mine's stop is not a change for its owner")
	}
	e.currentPlan()
	l.Create(fsmtest.VMGroup("next"))
	l.Assign("next", "n1")
	if e.sameInputs() {
		t.Error("a group assigned to n1 is not a change for n1")
	}
}

// watchedDriver is a fakeDriver that counts its changes, as driver.Watched
// asks, and the executor's List calls.
type watchedDriver struct {
	*fakeDriver
	changes driver.ChangeCount
	lists   atomic.Uint64
}

func (d *watchedDriver) Changes() uint64          { return d.changes.Load() }
func (d *watchedDriver) Changed() <-chan struct{} { return d.changes.Changed() }
func (d *watchedDriver) List() []driver.Status {
	d.lists.Add(1)
	return d.fakeDriver.List()
}

// crash makes a VM crash on its own, as a guest would, and counts it as
// a change only if counted.
func (d *watchedDriver) crash(id driver.VMID, counted bool) {
	d.mu.Lock()
	st := d.vms[id]
	st.State, st.Reason = driver.StateCrashed, "test"
	d.vms[id] = st
	d.mu.Unlock()
	if counted {
		d.changes.Add(1)
	}
}

// An executor whose node runs everything as planned stops listing the
// driver's VMs ten times a second, and a change the driver counts wakes it
// at once: the crashed VM is restarted without waiting for the steady
// pass (an hour here).
func TestSteadyExecutorWakesOnDriverChanges(t *testing.T) {
	l := fsmtest.New(t)
	l.Create(fsmtest.VMGroup("web"))
	g := l.Assign("web", "n1")
	d := &watchedDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}}
	var mu sync.Mutex
	online := 0
	var listedAtReport uint64 // the reporting pass's list, and any before
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t), Report: func(_ context.Context, r *havenv1.ReportGroupRequest) error {
		mu.Lock()
		defer mu.Unlock()
		if r.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE {
			online++
			listedAtReport = d.lists.Load()
		}
		return nil
	}})
	e.steadyEvery = time.Hour
	e.Granted(time.Now().Add(time.Hour), []*havenv1.GroupEpoch{{Name: "web", Epoch: g.GetEpoch()}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitfor.Cond(t, 5*time.Second, "web reported online", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return online == 1
	})

	// The pass that sent the report was busy; the next one finds all
	// running and reported, and is the last until the steady pass.
	waitfor.Cond(t, 5*time.Second, "the pass after the report", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return d.lists.Load() > listedAtReport
	})

	// A crash the driver does not count goes unseen until the steady
	// pass; one it counts is seen at the next tick.
	id := driver.VMID{Group: "web", Resource: "vm"}
	if _, err := d.Status(id); err != nil {
		t.Fatalf("the VM of web: %v (have %v)", err, d.List())
	}
	lists := d.lists.Load()
	d.crash(id, false)
	// Deliberate: five ticks in which the steady executor must do nothing.
	time.Sleep(5 * passEvery)
	if n := d.lists.Load() - lists; n != 0 {
		t.Fatalf("a steady executor listed the VMs %d times in five ticks", n)
	}
	if st, _ := d.Status(id); st.State != driver.StateCrashed {
		t.Fatalf("an uncounted crash was seen: web's VM is %s", st.State)
	}
	d.crash(id, true)
	waitfor.Cond(t, 5*time.Second, "the crashed VM restarted", func() bool {
		st, err := d.Status(id)
		return err == nil && st.State == driver.StateRunning
	})
}

// lookDriver freezes a VM past its lease end only when it looks (List),
// and counts the freeze then, as QEMU's driver learns of its supervisor's
// freeze.
type lookDriver struct{ *watchedDriver }

func (d *lookDriver) ExtendLease(id driver.VMID, _ uint64, end time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.vms[id]
	st.LeaseEnd = end
	d.vms[id] = st
	return nil
}

func (d *lookDriver) List() []driver.Status {
	d.mu.Lock()
	for id, st := range d.vms {
		if st.State == driver.StateRunning && !time.Now().Before(st.LeaseEnd) {
			st.State = driver.StateFrozen
			d.vms[id] = st
			d.changes.Add(1)
		}
	}
	d.mu.Unlock()
	return d.watchedDriver.List()
}

// A steady executor looks at its VMs when the lease it ran under ends
// unrenewed: a freeze that the driver learns of only when it looks is
// seen then, not at the steady pass (an hour here).
func TestSteadyExecutorLooksAtLeaseEnd(t *testing.T) {
	l := fsmtest.New(t)
	l.Create(fsmtest.VMGroup("web"))
	g := l.Assign("web", "n1")
	d := &lookDriver{&watchedDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}}}
	freezes := make(chan Freeze, 4)
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t),
		Report:  func(context.Context, *havenv1.ReportGroupRequest) error { return nil },
		Freezes: func(f Freeze) { freezes <- f }})
	e.steadyEvery = time.Hour
	granted := time.Now()
	e.Granted(granted.Add(time.Second), []*havenv1.GroupEpoch{{Name: "web", Epoch: g.GetEpoch()}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case f := <-freezes:
		if f.Thawed || f.Cause != CauseLeaseExpired || time.Since(granted) < time.Second {
			t.Errorf("freeze %+v %s after the grant", f, time.Since(granted))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the freeze at the lease end was not seen")
	}
}
