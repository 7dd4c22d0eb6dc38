package fsm

import (
	"maps"
	"slices"
	"strings"
	"testing"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func diskRes(name, path string) *havenv1.Resource {
	return &havenv1.Resource{Name: name, Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: path, SizeBytes: 1 << 30}}
}

func (o *groupOps) attach(r *havenv1.Resource) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_AttachDisk{AttachDisk: &havenv1.AttachDiskCommand{
		Group: o.name, Disk: r, ExpectEpoch: o.g().GetEpoch()}}})
}

func (o *groupOps) detach(name string) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_DetachDisk{DetachDisk: &havenv1.DetachDiskCommand{
		Group: o.name, Disk: name, ExpectEpoch: o.g().GetEpoch()}}})
}

func (o *groupOps) endDisk(node string, epoch, index uint64, out havenv1.DiskChangeOutcome, reason string) *Result {
	return o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_EndDiskChange{EndDiskChange: &havenv1.EndDiskChangeCommand{
		Group: o.name, Index: index, Node: node, Epoch: epoch, Outcome: out, Reason: reason}}})
}

// online is web started on n1 and reported online there.
func online(t *testing.T) *groupOps {
	o := newGroupOps(t)
	ok(t, "start", o.start("n1"))
	g := o.g()
	ok(t, "online", o.report("n1", g.GetEpoch(), g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_ONLINE))
	return o
}

func (o *groupOps) resources() []string {
	var out []string
	for _, r := range o.g().GetSpec().GetResources() {
		out = append(out, r.GetName())
	}
	return out
}

func wantChange(t *testing.T, o *groupOps, kind havenv1.DiskChangeKind, out havenv1.DiskChangeOutcome, node string, reason string) *havenv1.DiskChange {
	t.Helper()
	dc := o.g().GetDiskChange()
	if dc.GetKind() != kind || dc.GetOutcome() != out || dc.GetNode() != node || !strings.Contains(dc.GetReason(), reason) {
		t.Fatalf("disk change %v; want %s %s on %q with a reason containing %q", dc, kind, out, node, reason)
	}
	return dc
}

// On a group that does not run, a change is recorded at once: the spec
// changes, the path is held or freed, and the VMs start with it.
func TestDiskChangeOfOfflineGroupIsRecorded(t *testing.T) {
	o := newGroupOps(t)
	ok(t, "attach", o.attach(diskRes("data", "web/data.img")))
	if got := o.resources(); !slices.Equal(got, []string{"config", "disk0", "vm", "data"}) {
		t.Fatalf("resources after attach: %v", got)
	}
	if deps := o.g().GetSpec().GetResources()[2].GetDependsOn(); !slices.Equal(deps, []string{"config", "disk0", "data"}) {
		t.Errorf("vm depends on %v, want config, disk0, data", deps)
	}
	wantChange(t, o, diskAttach, diskRecorded, "", "offline: its VMs start with the disk")
	if PendingDiskChange(o.g()) != nil {
		t.Fatal("a recorded change reads pending")
	}
	if o.f.st.disks["web/data.img"] != "web" {
		t.Fatalf("the attached path is not web's: %v", o.f.st.disks)
	}
	ok(t, "detach", o.detach("data"))
	if got := o.resources(); !slices.Equal(got, []string{"config", "disk0", "vm"}) {
		t.Fatalf("resources after detach: %v", got)
	}
	if deps := o.g().GetSpec().GetResources()[2].GetDependsOn(); !slices.Equal(deps, []string{"config", "disk0"}) {
		t.Errorf("vm depends on %v after the detach, want config, disk0", deps)
	}
	wantChange(t, o, diskDetach, diskRecorded, "", "its VMs start without the disk")
	if _, held := o.f.st.disks["web/data.img"]; held {
		t.Fatal("the detached path is still held")
	}
}

// On a running group the change is pending for its owner at its epoch;
// the owner's report ends it. An attach is in the spec from the start; a
// detached disk stays in it, its path held, until the owner let it go.
func TestDiskChangeOfRunningGroupWaitsForOwner(t *testing.T) {
	o := online(t)
	e := o.g().GetEpoch()
	r := o.attach(diskRes("data", "web/data.img"))
	ok(t, "attach", r)
	dc := wantChange(t, o, diskAttach, diskPending, "n1", "")
	if dc.GetEpoch() != e || dc.GetIndex() != r.Index || PendingDiskChange(o.g()) == nil {
		t.Fatalf("pending change %v: want index %d at epoch %d", dc, r.Index, e)
	}
	if !slices.Contains(o.resources(), "data") {
		t.Fatal("a pending attach is not in the spec")
	}
	refused(t, "a second change while one is pending", o.attach(diskRes("logs", "web/logs.img")))
	refused(t, "a move while a change is pending", o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation: &havenv1.Operation{Id: "op", Group: "web", Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Source: "n1", Target: "n2"}, ExpectEpoch: e, ExpectDesiredIndex: o.g().GetDesiredIndex()}}}))
	refused(t, "a report from another node", o.endDisk("n2", e, r.Index, diskApplied, ""))
	refused(t, "a report at another epoch", o.endDisk("n1", e-1, r.Index, diskApplied, ""))
	refused(t, "a report of another change", o.endDisk("n1", e, r.Index+1, diskApplied, ""))
	if res := o.endDisk("n1", e, r.Index, diskPending, ""); res.Err == nil || res.Err.Code != CodeInvalidArgument {
		t.Fatalf("a report of no outcome: %+v", res)
	}
	ok(t, "applied", o.endDisk("n1", e, r.Index, diskApplied, ""))
	wantChange(t, o, diskAttach, diskApplied, "n1", "applied on n1")
	ok(t, "applied again (a retried report)", o.endDisk("n1", e, r.Index, diskApplied, ""))
	refused(t, "failed after applied", o.endDisk("n1", e, r.Index, diskFailed, "late"))

	r = o.detach("data")
	ok(t, "detach", r)
	wantChange(t, o, diskDetach, diskPending, "n1", "")
	if !slices.Contains(o.resources(), "data") || o.f.st.disks["web/data.img"] != "web" {
		t.Fatal("a pending detach left the spec or freed the path before the VM let the disk go")
	}
	other := testSpec("db")
	other.Resources[1].Disk.Path = "web/data.img"
	if res := o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: other}}}); res.Err == nil || res.Err.Code != CodeAlreadyExists {
		t.Fatalf("another group on a disk being detached: %+v", res)
	}
	ok(t, "applied", o.endDisk("n1", e, r.Index, diskApplied, "detached from vm"))
	wantChange(t, o, diskDetach, diskApplied, "n1", "detached from vm")
	if slices.Contains(o.resources(), "data") {
		t.Fatal("an applied detach left the disk in the spec")
	}
	ok(t, "another group on the freed disk", o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: other}}}))
}

// A change the owner could not apply is undone.
func TestFailedDiskChangeIsUndone(t *testing.T) {
	o := online(t)
	e := o.g().GetEpoch()
	before := o.resources()
	r := o.attach(diskRes("data", "web/data.img"))
	ok(t, "attach", r)
	ok(t, "failed", o.endDisk("n1", e, r.Index, diskFailed, "not a disk image"))
	wantChange(t, o, diskAttach, diskFailed, "n1", "not a disk image")
	if got := o.resources(); !slices.Equal(got, before) {
		t.Fatalf("resources after a failed attach: %v, want %v", got, before)
	}
	if deps := o.g().GetSpec().GetResources()[2].GetDependsOn(); slices.Contains(deps, "data") {
		t.Errorf("vm still depends on the failed disk: %v", deps)
	}
	if _, held := o.f.st.disks["web/data.img"]; held {
		t.Fatal("a failed attach still holds its path")
	}

	ok(t, "attach again", o.attach(diskRes("data", "web/data.img")))
	ok(t, "applied", o.endDisk("n1", e, o.g().GetDiskChange().GetIndex(), diskApplied, ""))
	r = o.detach("data")
	ok(t, "detach", r)
	ok(t, "detach failed", o.endDisk("n1", e, r.Index, diskFailed, "the guest did not release it"))
	wantChange(t, o, diskDetach, diskFailed, "n1", "did not release")
	if !slices.Contains(o.resources(), "data") || o.f.st.disks["web/data.img"] != "web" {
		t.Fatal("a failed detach took the disk out of the spec")
	}
}

// A pending change whose VMs go away (stopped, failed over) is settled by
// the command that took them: an attach stays, a detach completes.
func TestPendingDiskChangeSettledWhenVMsGo(t *testing.T) {
	t.Run("attach, then failover", func(t *testing.T) {
		o := online(t)
		g := o.g()
		ok(t, "attach", o.attach(diskRes("data", "web/data.img")))
		ok(t, "failover", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n2", havenv1.GroupState_GROUP_STATE_STARTING))
		wantChange(t, o, diskAttach, diskRecorded, "n1", "not applied on n1")
		if !slices.Contains(o.resources(), "data") {
			t.Fatal("the attach left the spec at the failover")
		}
	})
	t.Run("detach, then failover", func(t *testing.T) {
		o := online(t)
		g := o.g()
		ok(t, "attach", o.attach(diskRes("data", "web/data.img")))
		ok(t, "applied", o.endDisk("n1", g.GetEpoch(), o.g().GetDiskChange().GetIndex(), diskApplied, ""))
		ok(t, "detach", o.detach("data"))
		ok(t, "failover", o.assign(g.GetEpoch(), g.GetDesiredIndex(), "n2", havenv1.GroupState_GROUP_STATE_STARTING))
		wantChange(t, o, diskDetach, diskRecorded, "n1", "start without the disk")
		if slices.Contains(o.resources(), "data") {
			t.Fatal("the detached disk is still in the spec after the failover")
		}
		if _, held := o.f.st.disks["web/data.img"]; held {
			t.Fatal("the detached disk's path is still held after the failover")
		}
	})
	t.Run("detach, then stop", func(t *testing.T) {
		o := online(t)
		g := o.g()
		ok(t, "attach", o.attach(diskRes("data", "web/data.img")))
		ok(t, "applied", o.endDisk("n1", g.GetEpoch(), o.g().GetDiskChange().GetIndex(), diskApplied, ""))
		ok(t, "detach", o.detach("data"))
		ok(t, "stop", o.stop())
		// Stopping: the VM still runs and may hold the disk.
		wantChange(t, o, diskDetach, diskPending, "n1", "")
		g = o.g()
		ok(t, "offline", o.report("n1", g.GetEpoch(), g.GetDesiredIndex(), havenv1.GroupState_GROUP_STATE_OFFLINE))
		wantChange(t, o, diskDetach, diskRecorded, "n1", "now offline")
		if slices.Contains(o.resources(), "data") {
			t.Fatal("the detached disk is still in the spec once offline")
		}
	})
	t.Run("detach while stopping", func(t *testing.T) {
		o := online(t)
		g := o.g()
		ok(t, "attach", o.attach(diskRes("data", "web/data.img")))
		ok(t, "applied", o.endDisk("n1", g.GetEpoch(), o.g().GetDiskChange().GetIndex(), diskApplied, ""))
		ok(t, "stop", o.stop())
		ok(t, "attach while stopping", o.attach(diskRes("logs", "web/logs.img")))
		wantChange(t, o, diskAttach, diskRecorded, "", "stopping")
		ok(t, "detach while stopping", o.detach("data"))
		wantChange(t, o, diskDetach, diskPending, "n1", "")
	})
}

func TestDiskChangeRefusals(t *testing.T) {
	o := online(t)
	g := o.g()
	code := func(what string, want Code, r *Result) {
		t.Helper()
		if r.Err == nil || r.Err.Code != want {
			t.Fatalf("%s: %+v, want %v", what, r.Err, want)
		}
	}
	code("attach under a resource's name", CodeAlreadyExists, o.attach(diskRes("vm", "web/x.img")))
	code("attach of the group's own disk's path", CodeAlreadyExists, o.attach(diskRes("again", "web/./disk0.img")))
	a2 := &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: testSpec("db")}}}
	ok(t, "create db", o.apply(t0, a2))
	r := o.attach(diskRes("theirs", "db/disk0.img"))
	code("attach of another group's disk", CodeAlreadyExists, r)
	if !strings.Contains(r.Err.Msg, `belongs to group "db"`) {
		t.Errorf("message %q does not name the holder", r.Err.Msg)
	}
	code("attach of no disk", CodeInvalidArgument, o.attach(&havenv1.Resource{Name: "x", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG}))
	code("detach of no resource", CodeNotFound, o.detach("nothing"))
	code("detach of a vm", CodeInvalidArgument, o.detach("vm"))
	r = o.detach("disk0")
	code("detach of the boot disk", CodeFailedPrecondition, r)
	if !strings.Contains(r.Err.Msg, "boot") {
		t.Errorf("message %q does not say why", r.Err.Msg)
	}
	code("attach to no group", CodeNotFound, o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_AttachDisk{AttachDisk: &havenv1.AttachDiskCommand{Group: "none", Disk: diskRes("d", "none/d.img")}}}))
	// Decided on a stale view: the group was started (or moved) since.
	code("attach at a stale epoch", CodeFailedPrecondition, o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_AttachDisk{AttachDisk: &havenv1.AttachDiskCommand{
		Group: "web", Disk: diskRes("data", "web/data.img"), ExpectEpoch: g.GetEpoch() - 1}}}))
	// While a move is in flight.
	ok(t, "node n2", o.apply(t0, &havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: &havenv1.Node{Name: "n2"}}}}))
	ok(t, "begin move", o.begin("op1", "n2"))
	code("attach during a move", CodeFailedPrecondition, o.attach(diskRes("data", "web/data.img")))
	if got := o.resources(); !slices.Equal(got, []string{"config", "disk0", "vm"}) {
		t.Fatalf("refusals changed the spec: %v", got)
	}
	if dc := o.g().GetDiskChange(); dc != nil {
		t.Fatalf("refusals recorded a change: %v", dc)
	}
}

// A pending change, and the paths of its disk, survive a snapshot.
func TestDiskChangeSnapshotRoundTrip(t *testing.T) {
	o := online(t)
	e := o.g().GetEpoch()
	ok(t, "attach", o.attach(diskRes("data", "web/data.img")))
	ok(t, "applied", o.endDisk("n1", e, o.g().GetDiskChange().GetIndex(), diskApplied, ""))
	r := o.detach("data")
	ok(t, "detach", r)
	f2 := roundTrip(t, o.f)
	if f2.st.disks["web/data.img"] != "web" {
		t.Fatalf("after restore the disk being detached is not held: %v", f2.st.disks)
	}
	o2 := &groupOps{applier: &applier{t: t, f: f2, index: o.index}, name: "web"}
	wantChange(t, o2, diskDetach, diskPending, "n1", "")
	ok(t, "applied after restore", o2.endDisk("n1", e, r.Index, diskApplied, ""))
	if _, held := f2.st.disks["web/data.img"]; held {
		t.Fatal("the detached path is held after restore and apply")
	}
}

// slots is each disk of the group with its slot, in the spec's order.
func (o *groupOps) slots() map[string]uint32 {
	out := map[string]uint32{}
	for _, r := range o.g().GetSpec().GetResources() {
		if d := r.GetDisk(); d != nil {
			out[r.GetName()] = d.GetSlot()
		}
	}
	return out
}

// Every disk of a group has its own slot on its VMs' bus, kept as long as
// it stays: a disk that enters takes the lowest free slot, whatever the
// request said; a group recorded before slots gets its disks' places in
// the spec, where its VMs had them.
func TestDiskSlots(t *testing.T) {
	o := newGroupOps(t)
	a, b := diskRes("a", "web/a.img"), diskRes("b", "web/b.img")
	b.Disk.Slot = 9 // ignored on input
	ok(t, "attach a", o.attach(a))
	ok(t, "attach b", o.attach(b))
	if got, want := o.slots(), map[string]uint32{"disk0": 0, "a": 1, "b": 2}; !maps.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
	if s := o.g().GetDiskChange().GetDisk().GetDisk().GetSlot(); s != 2 {
		t.Errorf("the change records slot %d for b, want 2", s)
	}
	ok(t, "detach a", o.detach("a"))
	ok(t, "attach c", o.attach(diskRes("c", "web/c.img")))
	if got, want := o.slots(), map[string]uint32{"disk0": 0, "b": 2, "c": 1}; !maps.Equal(got, want) {
		t.Fatalf("slots after a left and c came %v, want %v", got, want)
	}
	if got, want := o.slots(), roundTripOps(t, o).slots(); !maps.Equal(got, want) {
		t.Errorf("slots after a snapshot's restore %v, want %v", want, got)
	}

	// Before slots, every disk read slot 0, and its VMs had it at its
	// index among the spec's disks.
	for _, r := range o.f.st.groups["web"].GetSpec().GetResources() {
		if d := r.GetDisk(); d != nil {
			d.Slot = 0
		}
	}
	old := roundTripOps(t, o)
	if got, want := old.slots(), map[string]uint32{"disk0": 0, "b": 1, "c": 2}; !maps.Equal(got, want) {
		t.Fatalf("slots of a group recorded before slots, after restore: %v, want %v", got, want)
	}
	ok(t, "attach d", old.attach(diskRes("d", "web/d.img")))
	if got, want := old.slots(), map[string]uint32{"disk0": 0, "b": 1, "c": 2, "d": 3}; !maps.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
}

func roundTripOps(t *testing.T, o *groupOps) *groupOps {
	return &groupOps{applier: &applier{t: t, f: roundTrip(t, o.f), index: o.index}, name: o.name}
}
