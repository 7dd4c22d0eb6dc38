package cluster

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestStartGroup(t *testing.T) {
	for _, node := range []string{"", "n3"} {
		f := newFixture()
		f.leader.group = &havenv1.Group{Spec: &havenv1.GroupSpec{Name: "web"}, State: havenv1.GroupState_GROUP_STATE_STARTING}
		resp, err := f.svc.StartGroup(context.Background(), &havenv1.StartGroupRequest{Name: "web", Node: node})
		if err != nil {
			t.Fatalf("start on %q: %v", node, err)
		}
		if f.leader.name != "web" || f.leader.onNode != node {
			t.Errorf("leader asked to start %q on %q, want web on %q", f.leader.name, f.leader.onNode, node)
		}
		if resp.GetGroup() != f.leader.group {
			t.Errorf("response group %v, want the leader's", resp.GetGroup())
		}
	}
}

func TestStartGroupInvalid(t *testing.T) {
	for _, c := range []struct {
		req *havenv1.StartGroupRequest
		msg string
	}{
		{&havenv1.StartGroupRequest{}, "name: is empty"},
		{&havenv1.StartGroupRequest{Name: "WEB"}, `name: "WEB" is not a valid group name`},
		{&havenv1.StartGroupRequest{Name: "web", Node: "n3.example"}, `node: "n3.example" is not a valid node name`},
	} {
		f := newFixture()
		_, err := f.svc.StartGroup(context.Background(), c.req)
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.leader.calls) != 0 {
			t.Errorf("%v reached the leader", c.req)
		}
	}
}

func TestStartGroupRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.StartGroup(context.Background(), &havenv1.StartGroupRequest{Name: "web", RequestId: id})
		return err
	})
}

func TestStartGroupLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.StartGroup(context.Background(), &havenv1.StartGroupRequest{Name: "web", Node: "n3"})
		return err
	})
}
