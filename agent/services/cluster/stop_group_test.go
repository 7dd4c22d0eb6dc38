package cluster

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestStopGroup(t *testing.T) {
	f := newFixture()
	f.leader.group = &havenv1.Group{Spec: &havenv1.GroupSpec{Name: "web"}, State: havenv1.GroupState_GROUP_STATE_STOPPING}
	resp, err := f.svc.StopGroup(context.Background(), &havenv1.StopGroupRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if f.leader.name != "web" || resp.GetGroup() != f.leader.group {
		t.Errorf("leader asked to stop %q, answered %v: want web and the leader's group", f.leader.name, resp.GetGroup())
	}
}

func TestStopGroupInvalid(t *testing.T) {
	f := newFixture()
	_, err := f.svc.StopGroup(context.Background(), &havenv1.StopGroupRequest{})
	wantStatus(t, err, codes.InvalidArgument, "name: is empty")
	_, err = f.svc.StopGroup(context.Background(), &havenv1.StopGroupRequest{Name: "web-"})
	wantStatus(t, err, codes.InvalidArgument, `name: "web-" is not a valid group name`)
	if len(f.leader.calls) != 0 {
		t.Errorf("invalid names reached the leader: %v", f.leader.calls)
	}
}

func TestStopGroupRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.StopGroup(context.Background(), &havenv1.StopGroupRequest{Name: "web", RequestId: id})
		return err
	})
}

func TestStopGroupLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.StopGroup(context.Background(), &havenv1.StopGroupRequest{Name: "web"})
		return err
	})
}
