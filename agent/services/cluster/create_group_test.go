package cluster

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func vmSpec(name string) *havenv1.GroupSpec {
	return &havenv1.GroupSpec{
		Name: name,
		Resources: []*havenv1.Resource{
			{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, Vm: &havenv1.VmSpec{Vcpus: 2, MemoryBytes: 1 << 30}},
		},
	}
}

func TestCreateGroup(t *testing.T) {
	f := newFixture()
	f.leader.group = &havenv1.Group{Spec: vmSpec("web"), Epoch: 1}
	resp, err := f.svc.CreateGroup(context.Background(), &havenv1.CreateGroupRequest{Spec: vmSpec("web")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetGroup() != f.leader.group {
		t.Errorf("response group %v, want the leader's", resp.GetGroup())
	}
	// The leader admits by the demand: it must see the defaults filled in,
	// not the zeros the operator left out.
	s := f.leader.spec
	if s.GetName() != "web" || s.GetCpuMillis() != 2000 || s.GetMemoryBytes() != 1<<30 ||
		s.GetPriority() != havenv1.Priority_PRIORITY_MEDIUM || s.GetFailback().GetMode() != havenv1.FailbackMode_FAILBACK_MODE_NEVER {
		t.Errorf("leader got spec %v: want it normalized (2000 mcpu, 1 GiB, medium, failback never)", s)
	}
}

func TestCreateGroupInvalid(t *testing.T) {
	noResources := vmSpec("web")
	noResources.Resources = nil
	badVM := vmSpec("web")
	badVM.Resources[0].Vm.Vcpus = 0
	badOwner := vmSpec("web")
	badOwner.PossibleOwners = []string{"N1"}
	for _, c := range []struct {
		spec *havenv1.GroupSpec
		msg  string
	}{
		{nil, "spec: is missing"},
		{vmSpec(""), "name: is empty"},
		{vmSpec("Web"), `name: "Web" must be`},
		{noResources, "resources: a group needs at least one resource"},
		{badVM, "vm.vcpus: 0 is outside 1..1024"},
		{badOwner, `possible_owners[0]: "N1"`},
	} {
		f := newFixture()
		_, err := f.svc.CreateGroup(context.Background(), &havenv1.CreateGroupRequest{Spec: c.spec})
		wantStatus(t, err, codes.InvalidArgument, c.msg)
		if len(f.leader.calls) != 0 {
			t.Errorf("invalid spec (%s) reached the leader", c.msg)
		}
	}
}

func TestCreateGroupRequestID(t *testing.T) {
	checkRequestID(t, func(f *fixture, id string) error {
		_, err := f.svc.CreateGroup(context.Background(), &havenv1.CreateGroupRequest{Spec: vmSpec("web"), RequestId: id})
		return err
	})
}

func TestCreateGroupLeaderErrors(t *testing.T) {
	checkLeaderErrors(t, func(f *fixture) error {
		_, err := f.svc.CreateGroup(context.Background(), &havenv1.CreateGroupRequest{Spec: vmSpec("web")})
		return err
	})
}
