package cluster

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func attachReq(mutate func(*havenv1.AttachDiskRequest)) *havenv1.AttachDiskRequest {
	req := &havenv1.AttachDiskRequest{Group: "web", Disk: &havenv1.Resource{Name: "data", Disk: &havenv1.DiskSpec{Path: "web/data.img", SizeBytes: 1 << 30}}}
	mutate(req)
	return req
}

func TestAttachDisk(t *testing.T) {
	f := newFixture()
	f.leader.group = &havenv1.Group{Spec: &havenv1.GroupSpec{Name: "web"}}
	f.leader.change = &havenv1.DiskChange{Index: 7, Outcome: havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.svc.AttachDisk(ctx, attachReq(func(*havenv1.AttachDiskRequest) {}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetGroup() != f.leader.group || resp.GetChange() != f.leader.change {
		t.Errorf("response %v, want the leader's group and change", resp)
	}
	if f.leader.name != "web" || f.leader.disk.GetName() != "data" || f.leader.disk.GetKind() != havenv1.ResourceKind_RESOURCE_KIND_DISK {
		t.Errorf("leader asked to attach %v to %q: want disk data, its kind filled in, to web", f.leader.disk, f.leader.name)
	}
	// The leader answers before the caller's deadline: pending, not
	// cut off.
	dl, _ := ctx.Deadline()
	if !f.leader.waitHasDeadline || !f.leader.waitDeadline.Before(dl.Add(-900*time.Millisecond)) {
		t.Errorf("the leader may wait until %v (set %v), want a second before the caller's %v", f.leader.waitDeadline, f.leader.waitHasDeadline, dl)
	}
	// Without a deadline, at most MaxDiskWait.
	f = newFixture()
	if _, err := f.svc.AttachDisk(context.Background(), attachReq(func(*havenv1.AttachDiskRequest) {})); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(f.leader.waitDeadline); !f.leader.waitHasDeadline || left > MaxDiskWait || left < MaxDiskWait-5*time.Second {
		t.Errorf("without a deadline the leader may wait %s, want %s", left, MaxDiskWait)
	}
}

func TestAttachDiskInvalid(t *testing.T) {
	for _, c := range []struct {
		mutate func(*havenv1.AttachDiskRequest)
		msg    string
	}{
		{func(r *havenv1.AttachDiskRequest) { r.Group = "" }, "group: is empty"},
		{func(r *havenv1.AttachDiskRequest) { r.Group = "Web" }, `group: "Web" is not a valid group name`},
		{func(r *havenv1.AttachDiskRequest) { r.Disk = nil }, "disk: is missing"},
		{func(r *havenv1.AttachDiskRequest) { r.Disk.Name = "" }, "disk.name: is empty"},
		{func(r *havenv1.AttachDiskRequest) { r.Disk.Kind = havenv1.ResourceKind_RESOURCE_KIND_IP }, "disk.kind: ip, want disk"},
		{func(r *havenv1.AttachDiskRequest) { r.Disk.Disk.Path = "/etc/shadow" }, `disk.path: "/etc/shadow" must be a clean relative path`},
		{func(r *havenv1.AttachDiskRequest) { r.Disk.Disk.Path = ".exec/web/vm.log" }, "execution logs"},
		{func(r *havenv1.AttachDiskRequest) { r.Disk.Disk.SizeBytes = 0 }, "disk.size_bytes: 0 is outside"},
		{func(r *havenv1.AttachDiskRequest) { r.Disk.Disk.Format = "vmdk" }, `disk.format: "vmdk" must be raw or qcow2`},
		{func(r *havenv1.AttachDiskRequest) { r.Disk.DependsOn = []string{"vm"} }, "depends on nothing"},
	} {
		f := newFixture()
		req := attachReq(c.mutate)
		_, err := f.svc.AttachDisk(context.Background(), req)
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.leader.calls) != 0 {
			t.Errorf("%v reached the leader", req)
		}
	}
}

func TestAttachDiskRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.AttachDisk(context.Background(), attachReq(func(r *havenv1.AttachDiskRequest) { r.RequestId = id }))
		return err
	})
}

func TestAttachDiskLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.AttachDisk(context.Background(), attachReq(func(*havenv1.AttachDiskRequest) {}))
		return err
	})
	// A change its owner could not apply: FailedPrecondition with the
	// owner's reason.
	f := newFixture()
	f.leader.err = &leader.DiskChangeFailedError{Group: "web", Change: &havenv1.DiskChange{
		Kind: havenv1.DiskChangeKind_DISK_CHANGE_KIND_ATTACH, Node: "n2", Reason: "disk web/data.img: bad header",
		Disk: &havenv1.Resource{Name: "data", Disk: &havenv1.DiskSpec{Path: "web/data.img"}}}}
	_, err := f.svc.AttachDisk(context.Background(), attachReq(func(*havenv1.AttachDiskRequest) {}))
	wantStatus(t, err, codes.FailedPrecondition, `group "web": the attach of disk data (web/data.img) failed on n2, and was undone: disk web/data.img: bad header`)
	// The FSM's refusals keep their codes.
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{&fsm.Error{Code: fsm.CodeAlreadyExists, Msg: `group "web" already has a resource "data"`}, codes.AlreadyExists},
		{&fsm.Error{Code: fsm.CodeAlreadyExists, Msg: `group "web": disk web/data.img belongs to group "db"`}, codes.AlreadyExists},
		{&fsm.Error{Code: fsm.CodeFailedPrecondition, Msg: `group "web": move mv-1 is in flight`}, codes.FailedPrecondition},
	} {
		f := newFixture()
		f.leader.err = c.err
		_, err := f.svc.AttachDisk(context.Background(), attachReq(func(*havenv1.AttachDiskRequest) {}))
		wantStatus(t, err, c.code, c.err.Error())
	}
}
