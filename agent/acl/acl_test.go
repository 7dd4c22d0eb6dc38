package acl

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"

	_ "google.golang.org/grpc/health/grpc_health_v1"
	_ "google.golang.org/grpc/reflection/grpc_reflection_v1"
	_ "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// servedPackages are the proto packages whose services an agent serves:
// haven's own, health and reflection.
var servedPackages = []string{"haven.", "grpc.health.", "grpc.reflection."}

// TestEveryMethodHasARule walks every service in the registry of
// generated types and fails for a method nobody decided a rule for, so
// that a new RPC cannot go out needing nothing by accident (it would
// need admin, which is safe but rarely what was meant).
func TestEveryMethodHasARule(t *testing.T) {
	n := 0
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		served := false
		for _, p := range servedPackages {
			served = served || strings.HasPrefix(string(fd.Package()), p)
		}
		if !served {
			return true
		}
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				m := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(j).Name())
				n++
				r, known := Lookup(m)
				if !known {
					t.Errorf("%s has no rule: add it to methods (or services) in acl.go", m)
					continue
				}
				if !r.Open && !r.Node && !Allows(r.Role, r.Role) {
					t.Errorf("%s: rule %+v names no valid role", m, r)
				}
				// A method that changes something is audited.
				if r.Role >= Operate && !r.Audit {
					t.Errorf("%s: role %s but not audited", m, RoleName(r.Role))
				}
			}
		}
		return true
	})
	// ClusterService, NodeService, AclService, health and reflection.
	if n < 40 {
		t.Fatalf("walked %d methods: the registry is missing services", n)
	}
	// And the other way: no rule for a method that does not exist, a
	// typo that would leave the real method at the default.
	for m := range methods {
		svc, meth, _ := strings.Cut(strings.TrimPrefix(m, "/"), "/")
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
		if err != nil || d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(meth)) == nil {
			t.Errorf("rule for %s: no such method", m)
		}
	}
}

func TestRules(t *testing.T) {
	for _, c := range []struct {
		method string
		want   Rule
	}{
		{havenv1.ClusterService_ListGroups_FullMethodName, Rule{Role: Read}},
		{havenv1.ClusterService_WatchEvents_FullMethodName, Rule{Role: Read}},
		{havenv1.ClusterService_StopGroup_FullMethodName, Rule{Role: Operate, Audit: true}},
		{havenv1.ClusterService_DrainNode_FullMethodName, Rule{Role: Operate, OrNode: true, Audit: true}},
		{havenv1.ClusterService_AttachDisk_FullMethodName, Rule{Role: Operate, Audit: true}},
		{havenv1.ClusterService_DeleteGroup_FullMethodName, Rule{Role: Admin, Audit: true}},
		{havenv1.AclService_CreateToken_FullMethodName, Rule{Role: Admin, Audit: true}},
		{havenv1.AclService_Bootstrap_FullMethodName, Rule{Open: true, Audit: true}},
		{havenv1.NodeService_RenewLease_FullMethodName, Rule{Node: true}},
		{"/grpc.health.v1.Health/Check", Rule{Open: true}},
		{"/haven.v1.ClusterService/NoSuchMethod", Rule{Role: Admin, Audit: true}},
		{"garbage", Rule{Role: Admin, Audit: true}},
	} {
		if got, _ := Lookup(c.method); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.method, got, c.want)
		}
	}
}

func TestAllows(t *testing.T) {
	for _, c := range []struct {
		role, need havenv1.AclRole
		want       bool
	}{
		{Read, Read, true}, {Read, Operate, false}, {Read, Admin, false},
		{Operate, Read, true}, {Operate, Operate, true}, {Operate, Admin, false},
		{Admin, Read, true}, {Admin, Admin, true},
		{havenv1.AclRole_ACL_ROLE_UNSPECIFIED, Read, false},
		{havenv1.AclRole(99), Admin, false},
	} {
		if got := Allows(c.role, c.need); got != c.want {
			t.Errorf("Allows(%v, %v) = %t, want %t", c.role, c.need, got, c.want)
		}
	}
}

func TestNewToken(t *testing.T) {
	a, sa, err := NewToken(rand.Reader, "ops", Operate)
	if err != nil {
		t.Fatal(err)
	}
	b, sb, err := NewToken(rand.Reader, "ops", Operate)
	if err != nil {
		t.Fatal(err)
	}
	if sa == sb || a.GetAccessorId() == b.GetAccessorId() || len(sa) < 32 {
		t.Fatalf("secrets %q %q, accessors %s %s: want distinct, long", sa, sb, a.GetAccessorId(), b.GetAccessorId())
	}
	if !bytes.Equal(a.GetSecretHash(), Hash(sa)) || strings.Contains(a.String(), sa) {
		t.Errorf("token %v: want the secret's hash and not the secret", a)
	}
	if p := Public(a); p.GetSecretHash() != nil || a.GetSecretHash() == nil {
		t.Error("Public must drop the hash from a copy only")
	}
	if _, _, err := NewToken(bytes.NewReader(nil), "x", Read); err == nil {
		t.Error("a failing random source made a token")
	}
}

func TestBearer(t *testing.T) {
	for v, want := range map[string]string{"Bearer abc": "abc", "bearer  abc ": "abc", "Basic abc": "", "Bearer": "", "abc": "", "Bearer ": ""} {
		got, ok := Bearer(v)
		if got != want || ok != (want != "") {
			t.Errorf("Bearer(%q) = %q, %t; want %q", v, got, ok, want)
		}
	}
}

func TestSubject(t *testing.T) {
	got := Subject(&havenv1.MoveGroupRequest{Name: "web", Target: "n2", RequestId: "r1"})
	if len(got) != 2 || got["name"] != "web" || got["target"] != "n2" {
		t.Errorf("move: %v", got)
	}
	got = Subject(&havenv1.CreateGroupRequest{Spec: &havenv1.GroupSpec{Name: "db"}})
	if len(got) != 1 || got["spec.name"] != "db" {
		t.Errorf("create: %v", got)
	}
	// A gossip key is a secret: never audited.
	if got := Subject(&havenv1.InstallKeyRequest{Key: "c2VjcmV0"}); len(got) != 0 {
		t.Errorf("install key: %v", got)
	}
}

// TestLegs: a keyring call fans out to every agent with local_only set;
// those legs need a node, whatever token they carry.
func TestLegs(t *testing.T) {
	m := havenv1.KeyringService_InstallKey_FullMethodName
	if r := RuleFor(m, &havenv1.InstallKeyRequest{Key: "k"}); r != (Rule{Role: Admin, Audit: true}) {
		t.Errorf("install: %+v", r)
	}
	if r := RuleFor(m, &havenv1.InstallKeyRequest{Key: "k", LocalOnly: true}); r != (Rule{Node: true, Audit: true}) {
		t.Errorf("install leg: %+v", r)
	}
	if r := RuleFor(havenv1.KeyringService_ListKeys_FullMethodName, &havenv1.ListKeysRequest{LocalOnly: true}); r != (Rule{Node: true}) {
		t.Errorf("list leg: %+v", r)
	}
	if r := RuleFor(havenv1.ClusterService_StopGroup_FullMethodName, &havenv1.StopGroupRequest{Name: "web"}); r != (Rule{Role: Operate, Audit: true}) {
		t.Errorf("stop: %+v", r)
	}
	if Leg(nil) || Leg(&havenv1.ListKeysRequest{}) {
		t.Error("not legs")
	}
}
