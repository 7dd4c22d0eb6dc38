package cluster

import (
	"context"
	"testing"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestListGroups(t *testing.T) {
	f := newFixture()
	f.state.groups = []*havenv1.Group{{Spec: &havenv1.GroupSpec{Name: "db"}}, {Spec: &havenv1.GroupSpec{Name: "web"}}}
	resp, err := f.svc.ListGroups(context.Background(), &havenv1.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range resp.GetGroups() {
		names = append(names, g.GetSpec().GetName())
	}
	if len(names) != 2 || names[0] != "db" || names[1] != "web" {
		t.Errorf("groups %v, want [db web]", names)
	}
}

func TestListGroupsReads(t *testing.T) {
	checkReads(t, func(f *fixture, consistent bool) (*havenv1.ReadMeta, error) {
		resp, err := f.svc.ListGroups(context.Background(), &havenv1.ListGroupsRequest{Consistent: consistent})
		return resp.GetMeta(), err
	})
}
