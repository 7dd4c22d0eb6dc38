package cluster

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestDetachDisk(t *testing.T) {
	f := newFixture()
	f.leader.group = &havenv1.Group{Spec: &havenv1.GroupSpec{Name: "web"}}
	f.leader.change = &havenv1.DiskChange{Index: 9, Kind: havenv1.DiskChangeKind_DISK_CHANGE_KIND_DETACH}
	resp, err := f.svc.DetachDisk(context.Background(), &havenv1.DetachDiskRequest{Group: "web", Disk: "data"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetGroup() != f.leader.group || resp.GetChange() != f.leader.change {
		t.Errorf("response %v, want the leader's group and change", resp)
	}
	if f.leader.name != "web" || f.leader.diskName != "data" || !f.leader.waitHasDeadline {
		t.Errorf("leader asked to detach %q from %q (deadline %v), want data from web with a deadline", f.leader.diskName, f.leader.name, f.leader.waitHasDeadline)
	}
}

func TestDetachDiskInvalid(t *testing.T) {
	for _, c := range []struct {
		req *havenv1.DetachDiskRequest
		msg string
	}{
		{&havenv1.DetachDiskRequest{Disk: "data"}, "group: is empty"},
		{&havenv1.DetachDiskRequest{Group: "web"}, "disk: is empty"},
		{&havenv1.DetachDiskRequest{Group: "web", Disk: "../data"}, `disk: "../data" is not a valid resource name`},
	} {
		f := newFixture()
		_, err := f.svc.DetachDisk(context.Background(), c.req)
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.leader.calls) != 0 {
			t.Errorf("%v reached the leader", c.req)
		}
	}
}

func TestDetachDiskRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.DetachDisk(context.Background(), &havenv1.DetachDiskRequest{Group: "web", Disk: "data", RequestId: id})
		return err
	})
}

func TestDetachDiskLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.DetachDisk(context.Background(), &havenv1.DetachDiskRequest{Group: "web", Disk: "data"})
		return err
	})
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{&fsm.Error{Code: fsm.CodeNotFound, Msg: `group "web" has no disk "data"`}, codes.NotFound},
		{&fsm.Error{Code: fsm.CodeFailedPrecondition, Msg: `disk "disk0" is group "web"'s first disk, which its VMs boot from`}, codes.FailedPrecondition},
		{&fsm.Error{Code: fsm.CodeInvalidArgument, Msg: `resource "vm" of group "web" is no disk (vm)`}, codes.InvalidArgument},
	} {
		f := newFixture()
		f.leader.err = c.err
		_, err := f.svc.DetachDisk(context.Background(), &havenv1.DetachDiskRequest{Group: "web", Disk: "data"})
		wantStatus(t, err, c.code, c.err.Error())
	}
}
