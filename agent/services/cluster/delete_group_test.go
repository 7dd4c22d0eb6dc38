package cluster

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestDeleteGroup(t *testing.T) {
	f := newFixture()
	if _, err := f.svc.DeleteGroup(context.Background(), &havenv1.DeleteGroupRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if f.leader.name != "web" {
		t.Errorf("leader asked to delete %q, want web", f.leader.name)
	}
}

func TestDeleteGroupInvalid(t *testing.T) {
	f := newFixture()
	_, err := f.svc.DeleteGroup(context.Background(), &havenv1.DeleteGroupRequest{})
	wantStatus(t, err, codes.InvalidArgument, "name: is empty")
	_, err = f.svc.DeleteGroup(context.Background(), &havenv1.DeleteGroupRequest{Name: "web_1"})
	wantStatus(t, err, codes.InvalidArgument, `name: "web_1" is not a valid group name`)
	if len(f.leader.calls) != 0 {
		t.Errorf("invalid names reached the leader: %v", f.leader.calls)
	}
}

func TestDeleteGroupRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.DeleteGroup(context.Background(), &havenv1.DeleteGroupRequest{Name: "web", RequestId: id})
		return err
	})
}

func TestDeleteGroupLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.DeleteGroup(context.Background(), &havenv1.DeleteGroupRequest{Name: "web"})
		return err
	})
}
