package fsm

import (
	"regexp"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// specSeeds are group specs as the API receives them: the tests' group,
// one with every policy set, an IP and a direct kernel boot, and a few
// that are refused.
func specSeeds(tb testing.TB) [][]byte {
	full := testSpec("db")
	full.Resources = append(full.Resources,
		&havenv1.Resource{Name: "addr", Kind: havenv1.ResourceKind_RESOURCE_KIND_IP, Ip: &havenv1.IpSpec{Address: "10.0.0.7"}, DependsOn: []string{"vm"}},
		&havenv1.Resource{Name: "conf", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG, Config: &havenv1.ConfigSpec{Settings: map[string]string{"k": "v"}}})
	full.Resources[2].Vm.Kernel, full.Resources[2].Vm.Initrd, full.Resources[2].Vm.Cmdline = "/var/lib/haven/vmlinuz", "/var/lib/haven/initrd.gz", "console=ttyS0"
	full.Priority = havenv1.Priority_PRIORITY_HIGH
	full.PossibleOwners, full.PreferredOwners = []string{"n1", "n2"}, []string{"n2"}
	full.PreferredSite = "a"
	full.NodeSelector = map[string]string{"rack": "r1"}
	full.Failback = &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_WINDOW, WindowStartHour: 22, WindowEndHour: 4}
	full.Restart = &havenv1.RestartPolicy{MaxRestarts: 3, Period: durationpb.New(RequestRetention)}
	full.AntiAffinity = []*havenv1.AntiAffinity{{Class: "dbs"}}
	full.Labels = map[string]string{"team": "ops"}
	cycle := testSpec("cyc")
	cycle.Resources[0].DependsOn = []string{"vm"}
	badDisk := testSpec("bad")
	badDisk.Resources[1].Disk.Path = "../etc/passwd"
	var out [][]byte
	for _, s := range []*havenv1.GroupSpec{testSpec("web"), full, cycle, badDisk, {}} {
		b, err := proto.Marshal(s)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// refusalField is the field a refusal names: after the group's and the
// resource's names, a field path up to the colon.
var refusalField = regexp.MustCompile(`^(?:group "(?:[^"\\]|\\.)*": )?(resource "(?:[^"\\]|\\.)*": )?([a-z_]+)[.\[:]`)

// FuzzValidateGroupSpec runs the API's checks of a group spec on
// arbitrary bytes decoded as one. They must not panic; a refusal names a
// field of the spec (or of the resource it names) that exists; an
// accepted spec is accepted by the FSM too, and keeps its invariants.
func FuzzValidateGroupSpec(f *testing.F) {
	for _, s := range specSeeds(f) {
		f.Add(s)
	}
	specFields := (&havenv1.GroupSpec{}).ProtoReflect().Descriptor().Fields()
	resFields := (&havenv1.Resource{}).ProtoReflect().Descriptor().Fields()
	f.Fuzz(func(t *testing.T, data []byte) {
		var spec havenv1.GroupSpec
		if proto.Unmarshal(data, &spec) != nil {
			return
		}
		NormalizeGroupSpec(&spec)
		err := ValidateGroupSpec(&spec)
		if err != nil {
			m := refusalField.FindStringSubmatch(err.Error())
			if m == nil {
				t.Fatalf("refusal names no field: %q", err)
			}
			fields := specFields
			if m[1] != "" {
				fields = resFields
			}
			if name := m[2]; name != "spec" && name != "resources" && fields.ByName(protoreflect.Name(name)) == nil {
				t.Fatalf("refusal names %q, not a field: %q", name, err)
			}
			return
		}
		fs := New()
		c := &havenv1.Command{Time: timestamppb.New(t0), Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: &spec}}}
		b, _ := Encode(c)
		r := fs.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: b}).(*Result)
		if r.Err != nil {
			t.Fatalf("a spec the API accepts is refused by the FSM: %v", r.Err)
		}
		if err := checkState(fs.st, 1); err != nil {
			t.Fatal(err)
		}
	})
}
