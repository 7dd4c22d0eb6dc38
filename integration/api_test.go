package integration

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestInvalidRequestsRefused: every invalid request gets a precise status
// and message and changes nothing.
func TestInvalidRequestsRefused(t *testing.T) {
	c := newCluster(t)
	c.startN(1)
	n := c.leader(30 * time.Second)
	created, err := n.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup("web")})
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*havenv1.GroupSpec)) *havenv1.GroupSpec {
		s := vmGroup("x")
		f(s)
		return s
	}
	tests := []struct {
		name string
		spec *havenv1.GroupSpec
		code codes.Code
		msg  string
	}{
		{"no spec", nil, codes.InvalidArgument, "spec: is missing"},
		{"empty name", mod(func(s *havenv1.GroupSpec) { s.Name = "" }), codes.InvalidArgument, "name: is empty"},
		{"duplicate name", vmGroup("web"), codes.AlreadyExists, `group "web" already exists`},
		{"dependency cycle", mod(func(s *havenv1.GroupSpec) { s.Resources[0].DependsOn = []string{"vm"} }), codes.InvalidArgument, "dependency cycle config -> vm -> config"},
		{"unknown resource kind", mod(func(s *havenv1.GroupSpec) { s.Resources[0].Kind = 77 }), codes.InvalidArgument, "kind: 77 is not a known resource kind"},
		{"negative memory", mod(func(s *havenv1.GroupSpec) { s.Resources[2].Vm.MemoryBytes = -1 }), codes.InvalidArgument, "vm.memory_bytes: -1"},
		{"absurd memory", mod(func(s *havenv1.GroupSpec) { s.MemoryBytes = 1 << 60 }), codes.InvalidArgument, "memory_bytes"},
		{"duplicate resource", mod(func(s *havenv1.GroupSpec) { s.Resources[1].Name = "config" }), codes.InvalidArgument, `"config" is used twice`},
		{"another group's disk", mod(func(s *havenv1.GroupSpec) { s.Resources[1].Disk.Path = "web/disk0.img" }), codes.AlreadyExists, `disk web/disk0.img belongs to group "web"`},
		{"disk among the execution logs", mod(func(s *havenv1.GroupSpec) { s.Resources[1].Disk.Path = ".exec/web/vm.log" }), codes.InvalidArgument, "execution logs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := n.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: tt.spec})
			st, _ := status.FromError(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.msg) {
				t.Fatalf("got %v: %q, want %v containing %q", st.Code(), st.Message(), tt.code, tt.msg)
			}
		})
	}
	t.Run("oversized message", func(t *testing.T) {
		s := vmGroup("big")
		s.Labels = map[string]string{"blob": strings.Repeat("x", 2<<20)}
		_, err := n.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: s}, grpc.MaxCallSendMsgSize(8<<20))
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("got %v, want ResourceExhausted", err)
		}
	})
	for _, tt := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"get missing", func() error {
			_, err := n.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: "nope"})
			return err
		}, codes.NotFound, `group "nope" not found`},
		{"get empty name", func() error {
			_, err := n.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{})
			return err
		}, codes.InvalidArgument, "name: is empty"},
		{"delete missing", func() error {
			_, err := n.api().DeleteGroup(ctx(t), &havenv1.DeleteGroupRequest{Name: "nope"})
			return err
		}, codes.NotFound, `group "nope" not found`},
		{"delete bad name", func() error {
			_, err := n.api().DeleteGroup(ctx(t), &havenv1.DeleteGroupRequest{Name: "../x"})
			return err
		}, codes.InvalidArgument, "not a valid group name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, _ := status.FromError(tt.call())
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.msg) {
				t.Fatalf("got %v: %q, want %v containing %q", st.Code(), st.Message(), tt.code, tt.msg)
			}
		})
	}
	// Nothing changed: one group, and only refused commands (the duplicate
	// name, the missing delete) reached the log.
	groups, err := n.api().ListGroups(ctx(t), &havenv1.ListGroupsRequest{})
	if err != nil || len(groups.GetGroups()) != 1 {
		t.Fatalf("groups after refusals: %v %v", groups, err)
	}
	got, err := n.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: "web"})
	// The group as its creation left it: raft's applied index may lag the
	// state just read, so the group's own index is the reference.
	if err != nil || got.GetGroup().GetModifyIndex() != created.GetGroup().GetModifyIndex() {
		t.Fatalf("web changed: %v %v", got, err)
	}

	// A retried request id is applied once.
	req := &havenv1.CreateGroupRequest{Spec: vmGroup("once"), RequestId: "retry-1"}
	first, err := n.api().CreateGroup(ctx(t), proto.Clone(req).(*havenv1.CreateGroupRequest))
	if err != nil {
		t.Fatal(err)
	}
	again, err := n.api().CreateGroup(ctx(t), req)
	if err != nil {
		t.Fatalf("retry of an applied request must return its result, got %v", err)
	}
	if again.GetGroup().GetCreateIndex() != first.GetGroup().GetCreateIndex() {
		t.Fatalf("retry applied again: index %d then %d", first.GetGroup().GetCreateIndex(), again.GetGroup().GetCreateIndex())
	}
}

// TestGrpcurl drives the API with the real grpcurl: reflection lists the
// service, a CreateGroup works, and a cycle is InvalidArgument naming it.
func TestGrpcurl(t *testing.T) {
	c := newCluster(t)
	c.startN(1)
	n := c.leader(30 * time.Second)
	grpcurl := func(args ...string) (string, error) {
		cmd := exec.Command(binary(t, "grpcurl"), append([]string{"-plaintext", "-max-time", "10"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := grpcurl(n.grpcAddr(), "list")
	if err != nil || !strings.Contains(out, "haven.v1.ClusterService") || !strings.Contains(out, "grpc.health.v1.Health") {
		t.Fatalf("grpcurl list: %v\n%s", err, out)
	}
	out, err = grpcurl("-d", `{"spec":{"name":"web","resources":[{"name":"config","kind":"RESOURCE_KIND_CONFIG"},{"name":"vm","kind":"RESOURCE_KIND_VM","dependsOn":["config"],"vm":{"vcpus":2,"memoryBytes":"1073741824"}}]}}`,
		n.grpcAddr(), "haven.v1.ClusterService/CreateGroup")
	if err != nil {
		t.Fatalf("grpcurl CreateGroup: %v\n%s", err, out)
	}
	var created struct {
		Group struct {
			Spec struct {
				Name      string `json:"name"`
				CPUMillis string `json:"cpuMillis"`
			} `json:"spec"`
			State string `json:"state"`
		} `json:"group"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Group.Spec.Name != "web" || created.Group.Spec.CPUMillis != "2000" || created.Group.State != "GROUP_STATE_OFFLINE" {
		t.Fatalf("CreateGroup answer: %v\n%s", err, out)
	}
	out, err = grpcurl("-d", `{"spec":{"name":"loop","resources":[{"name":"a","kind":"RESOURCE_KIND_CONFIG","dependsOn":["b"]},{"name":"b","kind":"RESOURCE_KIND_CONFIG","dependsOn":["a"]}]}}`,
		n.grpcAddr(), "haven.v1.ClusterService/CreateGroup")
	if err == nil || !strings.Contains(out, "Code: InvalidArgument") || !strings.Contains(out, "dependency cycle a -> b -> a") {
		t.Fatalf("grpcurl cycle: %v\n%s", err, out)
	}
	out, err = grpcurl(n.grpcAddr(), "grpc.health.v1.Health/Check")
	if err != nil || !strings.Contains(out, "SERVING") {
		t.Fatalf("health: %v\n%s", err, out)
	}
}
