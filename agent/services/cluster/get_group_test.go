package cluster

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestGetGroup(t *testing.T) {
	f := newFixture()
	web := &havenv1.Group{Spec: &havenv1.GroupSpec{Name: "web"}, Owner: "n3"}
	f.state.groups = []*havenv1.Group{{Spec: &havenv1.GroupSpec{Name: "db"}}, web}
	resp, err := f.svc.GetGroup(context.Background(), &havenv1.GetGroupRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetGroup() != web {
		t.Errorf("got %v, want web", resp.GetGroup())
	}

	_, err = f.svc.GetGroup(context.Background(), &havenv1.GetGroupRequest{Name: "mail"})
	wantStatus(t, err, codes.NotFound, `group "mail" not found`)
}

func TestGetGroupInvalid(t *testing.T) {
	f := newFixture()
	_, err := f.svc.GetGroup(context.Background(), &havenv1.GetGroupRequest{})
	wantStatus(t, err, codes.InvalidArgument, "name: is empty")
	_, err = f.svc.GetGroup(context.Background(), &havenv1.GetGroupRequest{Name: "Web", Consistent: true})
	wantStatus(t, err, codes.InvalidArgument, `name: "Web" is not a valid group name`)
	if f.raft.reads != 0 {
		t.Errorf("an invalid name cost a leadership check")
	}
}

func TestGetGroupReads(t *testing.T) {
	checkReads(t, func(f *fixture, consistent bool) (*havenv1.ReadMeta, error) {
		f.state.groups = []*havenv1.Group{{Spec: &havenv1.GroupSpec{Name: "web"}}}
		resp, err := f.svc.GetGroup(context.Background(), &havenv1.GetGroupRequest{Name: "web", Consistent: consistent})
		return resp.GetMeta(), err
	})
}
