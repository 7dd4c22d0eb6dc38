package cluster

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestResumeNode(t *testing.T) {
	f := newFixture()
	f.leader.draining = true
	f.leader.node = &havenv1.Node{Name: "n3"}
	resp, err := f.svc.ResumeNode(context.Background(), &havenv1.ResumeNodeRequest{Node: "n3"})
	if err != nil {
		t.Fatal(err)
	}
	if f.leader.onNode != "n3" || f.leader.draining {
		t.Errorf("leader asked SetDrain(%q, %v), want (n3, false)", f.leader.onNode, f.leader.draining)
	}
	if resp.GetNode() != f.leader.node {
		t.Errorf("response node %v, want the leader's", resp.GetNode())
	}
}

func TestResumeNodeInvalid(t *testing.T) {
	f := newFixture()
	_, err := f.svc.ResumeNode(context.Background(), &havenv1.ResumeNodeRequest{Node: "n_3"})
	wantStatus(t, err, codes.InvalidArgument, `node: "n_3" is not a valid node name`)
	if len(f.leader.calls) != 0 {
		t.Errorf("an invalid name reached the leader: %v", f.leader.calls)
	}
}

func TestResumeNodeRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.ResumeNode(context.Background(), &havenv1.ResumeNodeRequest{Node: "n3", RequestId: id})
		return err
	})
}

func TestResumeNodeLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.ResumeNode(context.Background(), &havenv1.ResumeNodeRequest{Node: "n3"})
		return err
	})
}
