package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestStandardGroupSpec(t *testing.T) {
	o := defaultVMOptions()
	o.vcpus = 2
	o.memoryBytes = 4 << 30
	o.diskBytes = 20 << 30
	o.priority = havenv1.Priority_PRIORITY_HIGH
	o.preferred = []string{"a1", "a2"}
	o.possible = []string{"a1", "a2", "b1"}
	o.antiAffinity = []*havenv1.AntiAffinity{{Class: "sql", Hard: true}}
	o.site = "room-a"
	o.labels = map[string]string{"tier": "db"}
	o.kernel, o.initrd, o.cmdline, o.machine = "/srv/vmlinuz", "/srv/initrd.gz", "console=ttyS0", "pc-q35-7.2"
	got := standardGroupSpec("web", o)
	want := &havenv1.GroupSpec{
		Name: "web",
		Resources: []*havenv1.Resource{
			{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG, Config: &havenv1.ConfigSpec{}},
			{Name: "disk0", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: "web/disk0.img", SizeBytes: 20 << 30}},
			{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config", "disk0"}, Vm: &havenv1.VmSpec{
				Vcpus: 2, MemoryBytes: 4 << 30, Kernel: "/srv/vmlinuz", Initrd: "/srv/initrd.gz", Cmdline: "console=ttyS0", Machine: "pc-q35-7.2"}},
		},
		Priority:        havenv1.Priority_PRIORITY_HIGH,
		PreferredOwners: []string{"a1", "a2"},
		PossibleOwners:  []string{"a1", "a2", "b1"},
		AntiAffinity:    []*havenv1.AntiAffinity{{Class: "sql", Hard: true}},
		PreferredSite:   "room-a",
		Labels:          map[string]string{"tier": "db"},
	}
	if !proto.Equal(got, want) {
		t.Errorf("standardGroupSpec:\n got %v\nwant %v", got, want)
	}
}

func TestStandardGroupSpecDefaultsAndNoDisk(t *testing.T) {
	got := standardGroupSpec("demo", defaultVMOptions())
	if n := len(got.GetResources()); n != 3 {
		t.Fatalf("default group has %d resources, want 3", n)
	}
	vm := got.GetResources()[2]
	if vm.GetVm().GetVcpus() != 1 || vm.GetVm().GetMemoryBytes() != 512<<20 {
		t.Errorf("default vm = %v, want 1 vCPU and 512MiB", vm.GetVm())
	}
	if d := got.GetResources()[1].GetDisk(); d.GetSizeBytes() != 1<<30 || d.GetPath() != "demo/disk0.img" {
		t.Errorf("default disk = %v, want demo/disk0.img of 1GiB", d)
	}
	if got.GetPriority() != havenv1.Priority_PRIORITY_MEDIUM {
		t.Errorf("default priority = %v", got.GetPriority())
	}

	o := defaultVMOptions()
	o.diskBytes = 0
	got = standardGroupSpec("nodisk", o)
	var names []string
	for _, r := range got.GetResources() {
		names = append(names, r.GetName())
	}
	if strings.Join(names, ",") != "config,vm" {
		t.Errorf("--disk-size 0 gives resources %v, want config,vm", names)
	}
	if deps := got.GetResources()[1].GetDependsOn(); len(deps) != 1 || deps[0] != "config" {
		t.Errorf("vm without disk depends on %v, want [config]", deps)
	}
}

func TestParsePriority(t *testing.T) {
	for in, want := range map[string]havenv1.Priority{
		"high":                   havenv1.Priority_PRIORITY_HIGH,
		"Medium":                 havenv1.Priority_PRIORITY_MEDIUM,
		"low":                    havenv1.Priority_PRIORITY_LOW,
		"no-auto-start":          havenv1.Priority_PRIORITY_NO_AUTO_START,
		"PRIORITY_NO_AUTO_START": havenv1.Priority_PRIORITY_NO_AUTO_START,
	} {
		if got, err := parsePriority(in); err != nil || got != want {
			t.Errorf("parsePriority(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parsePriority("urgent"); err == nil {
		t.Error("parsePriority(urgent) succeeded")
	}
}

func TestParseLabels(t *testing.T) {
	got, err := parseLabels([]string{"tier=web", "empty=", "eq=a=b"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"tier": "web", "empty": "", "eq": "a=b"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("label %q = %q, want %q", k, got[k], v)
		}
	}
	for _, bad := range [][]string{{"novalue"}, {"=v"}, {"a=1", "a=2"}} {
		if _, err := parseLabels(bad); err == nil {
			t.Errorf("parseLabels(%q) succeeded", bad)
		}
	}
}

// wantSpec is what both specYAML and specJSON describe.
var wantSpec = &havenv1.GroupSpec{
	Name:     "db",
	Priority: havenv1.Priority_PRIORITY_HIGH,
	Resources: []*havenv1.Resource{
		{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG, Config: &havenv1.ConfigSpec{Settings: map[string]string{"machine": "q35"}}},
		{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config"}, Vm: &havenv1.VmSpec{Vcpus: 2, MemoryBytes: 2 << 30}},
	},
	PreferredOwners: []string{"a1"},
	Restart:         &havenv1.RestartPolicy{MaxRestarts: 3, Period: durationpb.New(10 * time.Minute)},
	Labels:          map[string]string{"tier": "db"},
}

const specYAML = `# a database VM
name: db
priority: PRIORITY_HIGH
resources:
  - name: config
    kind: RESOURCE_KIND_CONFIG
    config:
      settings: {machine: q35}
  - name: vm
    kind: RESOURCE_KIND_VM
    depends_on: [config]       # the .proto name works as well as dependsOn
    vm:
      vcpus: 2
      memoryBytes: 2147483648
preferredOwners: [a1]
restart: {maxRestarts: 3, period: 600s}
labels:
  tier: db
`

const specJSON = `{
  "name": "db",
  "priority": "PRIORITY_HIGH",
  "resources": [
    {"name": "config", "kind": "RESOURCE_KIND_CONFIG", "config": {"settings": {"machine": "q35"}}},
    {"name": "vm", "kind": "RESOURCE_KIND_VM", "dependsOn": ["config"],
     "vm": {"vcpus": 2, "memoryBytes": "2147483648"}}
  ],
  "preferredOwners": ["a1"],
  "restart": {"maxRestarts": 3, "period": "600s"},
  "labels": {"tier": "db"}
}`

func TestParseSpecFile(t *testing.T) {
	for name, data := range map[string]string{"db.yaml": specYAML, "db.json": specJSON} {
		got, err := parseSpecFile(name, []byte(data))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !proto.Equal(got, wantSpec) {
			t.Errorf("%s:\n got %v\nwant %v", name, got, wantSpec)
		}
	}
}

func TestParseSpecFileErrors(t *testing.T) {
	tests := []struct {
		name, file, data string
		want             []string // substrings of the error
	}{{
		name: "yaml typo in a nested message names the field, its line and path",
		file: "db.yaml",
		data: strings.Replace(specYAML, "vcpus: 2", "vcpu: 2", 1),
		want: []string{"db.yaml", "line 13", `unknown field "vcpu"`, "resources[1].vm", "haven.v1.VmSpec"},
	}, {
		name: "yaml typo at the top",
		file: "db.yaml",
		data: strings.Replace(specYAML, "priority:", "priorty:", 1),
		want: []string{"line 3", `unknown field "priorty"`, "haven.v1.GroupSpec"},
	}, {
		name: "yaml typo inside restart",
		file: "db.yaml",
		data: strings.Replace(specYAML, "maxRestarts", "maxRestart", 1),
		want: []string{`unknown field "maxRestart"`, "restart"},
	}, {
		name: "json typo",
		file: "db.json",
		data: strings.Replace(specJSON, `"vcpus"`, `"vcpu"`, 1),
		want: []string{"db.json", "line 7:", `unknown field "vcpu"`},
	}, {
		name: "yaml wrong enum value",
		file: "db.yaml",
		data: strings.Replace(specYAML, "PRIORITY_HIGH", "high", 1),
		want: []string{"enum field priority", `"high"`},
	}, {
		name: "yaml wrong type has no misleading position",
		file: "db.yaml",
		data: strings.Replace(specYAML, "memoryBytes: 2147483648", "memoryBytes: 2G", 1),
		want: []string{"memoryBytes", `"2G"`},
	}, {
		name: "two documents",
		file: "db.yaml",
		data: specYAML + "---\nname: other\n",
		want: []string{"more than one YAML document"},
	}, {
		name: "not a mapping",
		file: "db.yaml",
		data: "- a\n- b\n",
		want: []string{"must be a mapping"},
	}, {
		name: "empty",
		file: "stdin",
		data: "  \n",
		want: []string{"stdin", "empty"},
	}, {
		name: "bad yaml",
		file: "db.yaml",
		data: "name: [unclosed\n",
		want: []string{"db.yaml", "yaml"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseSpecFile(tt.file, []byte(tt.data))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "proto:") || strings.Contains(err.Error(), "\u00a0") {
				t.Errorf("error %q carries protojson's prefix", err)
			}
			if tt.file == "db.yaml" && strings.Contains(err.Error(), "(line 1:") {
				t.Errorf("error %q points into the intermediate JSON", err)
			}
		})
	}
}

func TestParseSpecFileYAMLMerge(t *testing.T) {
	data := `
name: m
resources:
  - &vm
    name: vm
    kind: RESOURCE_KIND_VM
    vm: {vcpus: 1, memoryBytes: 1048576}
  - <<: *vm
    name: vm2
`
	got, err := parseSpecFile("m.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if r := got.GetResources(); len(r) != 2 || r[1].GetName() != "vm2" || r[1].GetVm().GetVcpus() != 1 {
		t.Errorf("merge key not applied: %v", got)
	}
	bad := strings.Replace(data, "vcpus", "vcpu", 1)
	if _, err := parseSpecFile("m.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), `"vcpu"`) {
		t.Errorf("typo under an anchor: err = %v", err)
	}
}
