package cluster

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func group(name, owner string, state havenv1.GroupState) *havenv1.Group {
	return &havenv1.Group{Spec: &havenv1.GroupSpec{Name: name}, Owner: owner, State: state}
}

func TestDrainNode(t *testing.T) {
	f := newFixture()
	f.leader.node = &havenv1.Node{Name: "n3", Draining: true}
	f.state.groups = []*havenv1.Group{
		group("web", "n3", havenv1.GroupState_GROUP_STATE_ONLINE),
		group("db", "n3", havenv1.GroupState_GROUP_STATE_STARTING),
		group("cache", "n3", havenv1.GroupState_GROUP_STATE_STOPPING),
		group("old", "n3", havenv1.GroupState_GROUP_STATE_OFFLINE),
		group("bad", "n3", havenv1.GroupState_GROUP_STATE_FAILED),
		group("mail", "n2", havenv1.GroupState_GROUP_STATE_ONLINE),
	}
	resp, err := f.svc.DrainNode(context.Background(), &havenv1.DrainNodeRequest{Node: "n3"})
	if err != nil {
		t.Fatal(err)
	}
	if f.leader.onNode != "n3" || !f.leader.draining {
		t.Errorf("leader asked SetDrain(%q, %v), want (n3, true)", f.leader.onNode, f.leader.draining)
	}
	if resp.GetNode() != f.leader.node {
		t.Errorf("response node %v, want the leader's", resp.GetNode())
	}
	// The operator waits for these to move before taking the node down:
	// every group that still runs there, nothing that does not.
	if want := []string{"web", "db", "cache"}; !slices.Equal(resp.GetGroups(), want) {
		t.Errorf("groups to move %v, want %v", resp.GetGroups(), want)
	}
}

func TestDrainNodeInvalid(t *testing.T) {
	f := newFixture()
	for _, node := range []string{"", "N3", "n3.example"} {
		_, err := f.svc.DrainNode(context.Background(), &havenv1.DrainNodeRequest{Node: node})
		wantStatus(t, err, codes.InvalidArgument, "node: ", "is not a valid node name")
	}
	if len(f.leader.calls) != 0 {
		t.Errorf("invalid names reached the leader: %v", f.leader.calls)
	}
}

func TestDrainNodeRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.DrainNode(context.Background(), &havenv1.DrainNodeRequest{Node: "n3", RequestId: id})
		return err
	})
}

func TestDrainNodeLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.DrainNode(context.Background(), &havenv1.DrainNodeRequest{Node: "n3"})
		return err
	})
}
