package executor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// hotPlugDriver is a fakeDriver that hot-plugs: it keeps each VM's disks
// and records the calls.
type hotPlugDriver struct {
	*fakeDriver
	disks map[driver.VMID][]driver.DiskSpec
	// attachErr and detachErr answer every AttachDisk, DetachDisk.
	attachErr, detachErr error
	calls                []string
	noFlag               bool
}

func newHotPlugDriver() *hotPlugDriver {
	return &hotPlugDriver{fakeDriver: &fakeDriver{vms: map[driver.VMID]driver.Status{}}, disks: map[driver.VMID][]driver.DiskSpec{}}
}

func (d *hotPlugDriver) Capabilities() driver.Capabilities {
	return driver.Capabilities{HotPlugDisks: !d.noFlag}
}

func (d *hotPlugDriver) Start(ctx context.Context, spec driver.VMSpec, end time.Time) error {
	if err := d.fakeDriver.Start(ctx, spec, end); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.disks[spec.ID] = slices.Clone(spec.Disks)
	return nil
}

func (d *hotPlugDriver) AttachDisk(_ context.Context, id driver.VMID, epoch uint64, disk driver.DiskSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("attach %s %s@%d", disk.Name, id, epoch))
	if d.attachErr != nil {
		return d.attachErr
	}
	if st := d.vms[id]; st.Epoch != epoch {
		return driver.ErrStaleEpoch
	}
	if !slices.ContainsFunc(d.disks[id], func(x driver.DiskSpec) bool { return x.Name == disk.Name }) {
		d.disks[id] = append(d.disks[id], disk)
	}
	return nil
}

func (d *hotPlugDriver) DetachDisk(_ context.Context, id driver.VMID, epoch uint64, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("detach %s %s@%d", name, id, epoch))
	if d.detachErr != nil {
		return d.detachErr
	}
	d.disks[id] = slices.DeleteFunc(d.disks[id], func(x driver.DiskSpec) bool { return x.Name == name })
	return nil
}

func (d *hotPlugDriver) Disks(id driver.VMID) ([]driver.DiskSpec, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.vms[id]; !ok {
		return nil, driver.ErrNotFound
	}
	return slices.Clone(d.disks[id]), nil
}

func (d *hotPlugDriver) diskNames(id driver.VMID) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, dk := range d.disks[id] {
		out = append(out, dk.Name)
	}
	return out
}

func (d *hotPlugDriver) takeCalls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.calls
	d.calls = nil
	return c
}

var webVM = driver.VMID{Group: "web", Resource: "vm"}

// diskRig is n1's executor over a hot-plug driver, running web (a VM and
// its boot disk disk0) online at its epoch under a grant. The leader is
// played by the test: the executor's disk reports are applied to the FSM
// as the leader would apply them, and kept.
type diskRig struct {
	t       *testing.T
	l       *fsmtest.Log
	d       *hotPlugDriver
	e       *Executor
	mu      sync.Mutex
	reports []*havenv1.ReportDiskChangeRequest
}

func newDiskRig(t *testing.T, d *hotPlugDriver) *diskRig {
	l := fsmtest.New(t)
	spec := fsmtest.VMGroup("web")
	spec.Resources = append(spec.Resources, disk("disk0"))
	l.Create(spec)
	l.Assign("web", "n1")
	r := &diskRig{t: t, l: l, d: d}
	r.e = New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t),
		Report: func(context.Context, *havenv1.ReportGroupRequest) error { return nil },
		ReportDisk: func(_ context.Context, req *havenv1.ReportDiskChangeRequest) error {
			r.mu.Lock()
			r.reports = append(r.reports, req)
			r.mu.Unlock()
			res, err := l.Commit(&havenv1.Command{Cmd: &havenv1.Command_EndDiskChange{EndDiskChange: &havenv1.EndDiskChangeCommand{
				Group: req.GetGroup(), Index: req.GetIndex(), Node: req.GetNode(), Epoch: req.GetEpoch(), Outcome: req.GetOutcome(), Reason: req.GetReason()}}})
			if err == nil && res.Err != nil {
				err = res.Err
			}
			return err
		}})
	r.grant()
	r.e.reconcile(context.Background())
	l.Report("web", havenv1.GroupState_GROUP_STATE_ONLINE)
	if got := d.diskNames(webVM); !slices.Equal(got, []string{"disk0"}) {
		t.Fatalf("web started with disks %v, want disk0", got)
	}
	d.takeCalls()
	return r
}

func disk(name string) *havenv1.Resource {
	return &havenv1.Resource{Name: name, Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: "web/" + name + ".img", SizeBytes: 1 << 30}}
}

func (r *diskRig) grant() {
	r.e.Granted(time.Now().Add(time.Minute), []*havenv1.GroupEpoch{{Name: "web", Epoch: r.l.FSM.Group("web").GetEpoch()}})
}

func (r *diskRig) attach(name string) {
	r.t.Helper()
	r.l.Run(&havenv1.Command{Cmd: &havenv1.Command_AttachDisk{AttachDisk: &havenv1.AttachDiskCommand{Group: "web", Disk: disk(name), ExpectEpoch: r.l.FSM.Group("web").GetEpoch()}}})
}

func (r *diskRig) detach(name string) {
	r.t.Helper()
	r.l.Run(&havenv1.Command{Cmd: &havenv1.Command_DetachDisk{DetachDisk: &havenv1.DetachDiskCommand{Group: "web", Disk: name, ExpectEpoch: r.l.FSM.Group("web").GetEpoch()}}})
}

func (r *diskRig) lastReport() *havenv1.ReportDiskChangeRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reports) == 0 {
		return nil
	}
	return r.reports[len(r.reports)-1]
}

func (r *diskRig) change() *havenv1.DiskChange { return r.l.FSM.Group("web").GetDiskChange() }

// A pending attach is hot-plugged into the running VM at its epoch and
// reported applied; so is a pending detach, which then leaves the spec.
func TestExecutorHotPlugsPendingChanges(t *testing.T) {
	r := newDiskRig(t, newHotPlugDriver())
	epoch := r.l.FSM.Group("web").GetEpoch()
	ctx := context.Background()

	r.attach("data")
	r.e.reconcile(ctx)
	if calls := r.d.takeCalls(); !slices.Equal(calls, []string{fmt.Sprintf("attach data web/vm@%d", epoch)}) {
		t.Fatalf("driver calls %v, want one attach of data at epoch %d", calls, epoch)
	}
	if got := r.d.diskNames(webVM); !slices.Equal(got, []string{"disk0", "data"}) {
		t.Fatalf("vm disks %v, want disk0, data", got)
	}
	if dc := r.change(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED || dc.GetReason() != "hot-plugged into 1 vm(s)" {
		t.Fatalf("change %v, want applied", dc)
	}
	// Nothing more to do, and nothing reported twice.
	n := len(r.reports)
	r.e.reconcile(ctx)
	if calls := r.d.takeCalls(); len(calls) != 0 || len(r.reports) != n {
		t.Fatalf("a second pass: calls %v, %d more reports; want none", calls, len(r.reports)-n)
	}

	r.detach("data")
	r.e.reconcile(ctx)
	if calls := r.d.takeCalls(); !slices.Equal(calls, []string{fmt.Sprintf("detach data web/vm@%d", epoch)}) {
		t.Fatalf("driver calls %v, want one detach of data", calls)
	}
	if dc := r.change(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED {
		t.Fatalf("change %v, want applied", dc)
	}
	for _, res := range r.l.FSM.Group("web").GetSpec().GetResources() {
		if res.GetName() == "data" {
			t.Fatal("the detached disk is still in the spec")
		}
	}
}

// The executor also mends what no change is pending for: a VM that runs
// without a disk its spec names (the agent died between the commit and
// the hot-plug, and the change was settled meanwhile) gets it, and one
// with a disk the spec no longer names loses it.
func TestExecutorMendsDiskDifferences(t *testing.T) {
	d := newHotPlugDriver()
	r := newDiskRig(t, d)
	r.attach("data")
	// The change ends without this executor (a report from an earlier
	// incarnation of it): the VM lacks the disk.
	dc := r.change()
	r.l.Run(&havenv1.Command{Cmd: &havenv1.Command_EndDiskChange{EndDiskChange: &havenv1.EndDiskChangeCommand{
		Group: "web", Index: dc.GetIndex(), Node: "n1", Epoch: dc.GetEpoch(), Outcome: havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED}}})
	d.mu.Lock()
	d.disks[webVM] = append(d.disks[webVM], driver.DiskSpec{Name: "stray", Path: "web/stray.img"})
	d.mu.Unlock()
	r.e.reconcile(context.Background())
	if got := r.d.diskNames(webVM); !slices.Equal(got, []string{"disk0", "data"}) {
		t.Fatalf("vm disks %v, want disk0, data", got)
	}
	if rep := r.lastReport(); rep != nil {
		t.Fatalf("reported %v with no change pending", rep)
	}
}

// A refusal no retry mends is reported failed at once, with the driver's
// reason, and the FSM undoes the change; an attach that failed is taken
// back out of the VM first.
func TestExecutorReportsFailedHotPlug(t *testing.T) {
	d := newHotPlugDriver()
	r := newDiskRig(t, d)
	d.attachErr = fmt.Errorf("attach disk data: %w: not a sim disk", driver.ErrInvalidSpec)
	r.attach("data")
	r.e.reconcile(context.Background())
	rep := r.lastReport()
	if rep.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED || !strings.Contains(rep.GetReason(), "not a sim disk") {
		t.Fatalf("report %v, want failed with the driver's reason", rep)
	}
	if calls := d.takeCalls(); !slices.Contains(calls, fmt.Sprintf("detach data web/vm@%d", r.l.FSM.Group("web").GetEpoch())) {
		t.Errorf("calls %v: the failed disk was not taken back", calls)
	}
	if dc := r.change(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED || fsm.BootDisk(r.l.FSM.Group("web").GetSpec()) != "disk0" ||
		len(r.l.FSM.Group("web").GetSpec().GetResources()) != 3 {
		t.Fatalf("after the failure: change %v, spec %v", dc, r.l.FSM.Group("web").GetSpec())
	}
}

// Other failures are tried diskAttempts times, with backoff, then
// reported failed.
func TestExecutorRetriesHotPlug(t *testing.T) {
	d := newHotPlugDriver()
	r := newDiskRig(t, d)
	d.detachErr = errors.New("DEVICE_DELETED did not come")
	r.attach("data")
	r.e.reconcile(context.Background())
	r.detach("data")
	d.takeCalls()
	tries := 0
	waitfor.Cond(t, 10*time.Second, "a report of the failed detach", func() bool {
		r.grant()
		r.e.reconcile(context.Background())
		for _, c := range d.takeCalls() {
			if strings.HasPrefix(c, "detach data") {
				tries++
			}
		}
		return r.lastReport().GetOutcome() == havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED
	})
	if tries != diskAttempts {
		t.Errorf("%d tries, want %d", tries, diskAttempts)
	}
	if rep := r.lastReport(); !strings.Contains(rep.GetReason(), "DEVICE_DELETED did not come") {
		t.Errorf("report %v, want the driver's reason", rep)
	}
	// The disk stays in the spec, and in the VM.
	if got := d.diskNames(webVM); !slices.Equal(got, []string{"disk0", "data"}) {
		t.Errorf("vm disks %v after the failed detach, want disk0, data", got)
	}
}

// Nothing is hot-plugged into a VM whose epoch no grant confirms: the
// node may be cut off, and its VM frozen or about to be.
func TestExecutorHotPlugsOnlyUnderGrant(t *testing.T) {
	d := newHotPlugDriver()
	r := newDiskRig(t, d)
	r.attach("data")
	r.e.Granted(time.Now().Add(time.Minute), nil)
	r.e.ensureRunning(context.Background(), r.l.FSM.Group("web"), d.List())
	if calls := d.takeCalls(); len(calls) != 0 {
		t.Fatalf("calls %v without a grant, want none", calls)
	}
	r.grant()
	r.e.reconcile(context.Background())
	if got := d.diskNames(webVM); !slices.Equal(got, []string{"disk0", "data"}) {
		t.Fatalf("vm disks %v once granted, want disk0, data", got)
	}
}

// A change pending on a node whose driver cannot hot-plug is reported
// failed: the leader refuses such changes, but a node may have come back
// with another driver.
func TestExecutorWithoutHotPlug(t *testing.T) {
	d := newHotPlugDriver()
	d.noFlag = true
	r := newDiskRig(t, d)
	r.attach("data")
	r.e.reconcile(context.Background())
	if rep := r.lastReport(); rep.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED || !strings.Contains(rep.GetReason(), "cannot hot-plug") {
		t.Fatalf("report %v, want failed: cannot hot-plug", rep)
	}
	if calls := d.takeCalls(); len(calls) != 0 {
		t.Fatalf("calls %v to a driver that does not report hot-plug", calls)
	}
}

// A VM started while a detach is pending starts without the disk, and
// the change is then applied.
func TestExecutorStartsWithoutDiskBeingDetached(t *testing.T) {
	d := newHotPlugDriver()
	r := newDiskRig(t, d)
	r.attach("data")
	r.e.reconcile(context.Background())
	r.detach("data")
	d.mu.Lock()
	delete(d.vms, webVM) // the VM is gone (a crash this executor restarts)
	d.mu.Unlock()
	r.e.reconcile(context.Background())
	if got := d.diskNames(webVM); !slices.Equal(got, []string{"disk0"}) {
		t.Fatalf("restarted with disks %v, want disk0 only", got)
	}
	r.e.reconcile(context.Background())
	if dc := r.change(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED {
		t.Fatalf("change %v, want applied", dc)
	}
}
