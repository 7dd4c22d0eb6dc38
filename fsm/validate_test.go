package fsm

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestValidateGroupSpec(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*havenv1.GroupSpec)
		want   string // substring of the error; empty means valid
	}{
		{"valid", func(*havenv1.GroupSpec) {}, ""},
		{"empty name", func(s *havenv1.GroupSpec) { s.Name = "" }, "name: is empty"},
		{"bad name", func(s *havenv1.GroupSpec) { s.Name = "Web_1" }, `name: "Web_1" must be`},
		{"no resources", func(s *havenv1.GroupSpec) { s.Resources = nil }, "at least one resource"},
		{"duplicate resource", func(s *havenv1.GroupSpec) { s.Resources[1].Name = "config" }, `resources[1].name: "config" is used twice`},
		{"unknown kind", func(s *havenv1.GroupSpec) { s.Resources[0].Kind = 42 }, `resource "config": kind: 42 is not a known resource kind`},
		{"missing kind", func(s *havenv1.GroupSpec) { s.Resources[0].Kind = 0 }, "kind: is missing"},
		{"spec of other kind", func(s *havenv1.GroupSpec) { s.Resources[0].Vm = &havenv1.VmSpec{Vcpus: 1} }, "vm: set on a resource of kind config"},
		{"self dependency", func(s *havenv1.GroupSpec) { s.Resources[0].DependsOn = []string{"config"} }, "depends on itself"},
		{"unknown dependency", func(s *havenv1.GroupSpec) { s.Resources[2].DependsOn = []string{"nic"} }, `"nic" is not a resource of this group`},
		{"cycle", func(s *havenv1.GroupSpec) { s.Resources[0].DependsOn = []string{"vm"} }, "dependency cycle config -> vm -> config"},
		{"long cycle", func(s *havenv1.GroupSpec) {
			s.Resources[0].DependsOn = []string{"disk0"}
			s.Resources[1].DependsOn = []string{"vm"}
		}, "dependency cycle config -> disk0 -> vm -> config"},
		{"negative memory", func(s *havenv1.GroupSpec) { s.Resources[2].Vm.MemoryBytes = -1 }, "vm.memory_bytes: -1 is outside"},
		{"absurd memory", func(s *havenv1.GroupSpec) { s.Resources[2].Vm.MemoryBytes = 1 << 62 }, "vm.memory_bytes"},
		{"zero vcpus", func(s *havenv1.GroupSpec) { s.Resources[2].Vm.Vcpus = 0 }, "vm.vcpus: 0 is outside"},
		{"vm without spec", func(s *havenv1.GroupSpec) { s.Resources[2].Vm = nil }, "a vm resource needs"},
		{"direct kernel boot", func(s *havenv1.GroupSpec) {
			s.Resources[2].Vm.Kernel, s.Resources[2].Vm.Initrd = "/var/lib/haven/vmlinuz", "/var/lib/haven/initrd.gz"
			s.Resources[2].Vm.Cmdline, s.Resources[2].Vm.Machine = "console=ttyS0 quiet", "pc-q35-7.2"
			s.Resources[1].Disk.Format = "qcow2"
		}, ""},
		{"relative kernel", func(s *havenv1.GroupSpec) { s.Resources[2].Vm.Kernel = "boot/vmlinuz" }, `vm.kernel: "boot/vmlinuz" must be a clean absolute path`},
		{"unclean initrd", func(s *havenv1.GroupSpec) {
			s.Resources[2].Vm.Kernel, s.Resources[2].Vm.Initrd = "/k", "/a/../initrd"
		}, "vm.initrd"},
		{"initrd without kernel", func(s *havenv1.GroupSpec) { s.Resources[2].Vm.Initrd = "/initrd" }, "needs a kernel"},
		{"cmdline with newline", func(s *havenv1.GroupSpec) {
			s.Resources[2].Vm.Kernel, s.Resources[2].Vm.Cmdline = "/k", "quiet\ninit=/bin/sh"
		}, "vm.cmdline"},
		{"bad machine", func(s *havenv1.GroupSpec) { s.Resources[2].Vm.Machine = "q35,accel=kvm" }, "vm.machine"},
		{"unknown disk format", func(s *havenv1.GroupSpec) { s.Resources[1].Disk.Format = "vmdk" }, `disk.format: "vmdk"`},
		{"negative cpu demand", func(s *havenv1.GroupSpec) { s.CpuMillis = -5 }, "cpu_millis: -5 is outside"},
		{"absurd disk", func(s *havenv1.GroupSpec) { s.Resources[1].Disk.SizeBytes = 1 << 62 }, "disk.size_bytes"},
		{"absolute disk path", func(s *havenv1.GroupSpec) { s.Resources[1].Disk.Path = "/etc/passwd" }, "disk.path"},
		{"escaping disk path", func(s *havenv1.GroupSpec) { s.Resources[1].Disk.Path = "../x.img" }, "disk.path"},
		{"disk among the execution logs", func(s *havenv1.GroupSpec) { s.Resources[1].Disk.Path = ".exec/web/vm.log" }, "execution logs"},
		{"one disk twice", func(s *havenv1.GroupSpec) {
			s.Resources = append(s.Resources, &havenv1.Resource{Name: "disk1", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: proto.Clone(s.Resources[1].Disk).(*havenv1.DiskSpec)})
		}, "also resource"},
		{"bad ip", func(s *havenv1.GroupSpec) {
			s.Resources = append(s.Resources, &havenv1.Resource{Name: "ip", Kind: havenv1.ResourceKind_RESOURCE_KIND_IP, Ip: &havenv1.IpSpec{Address: "10.0.0.300"}})
		}, `ip.address: "10.0.0.300"`},
		{"unknown priority", func(s *havenv1.GroupSpec) { s.Priority = 9 }, "priority: 9"},
		{"preferred not possible", func(s *havenv1.GroupSpec) {
			s.PossibleOwners = []string{"n1"}
			s.PreferredOwners = []string{"n2"}
		}, `preferred_owners: "n2" is not among possible_owners`},
		{"duplicate owner", func(s *havenv1.GroupSpec) { s.PossibleOwners = []string{"n1", "n1"} }, `possible_owners[1]: "n1" is listed twice`},
		{"anti-affinity", func(s *havenv1.GroupSpec) {
			s.AntiAffinity = []*havenv1.AntiAffinity{{Class: "sql", Hard: true, AcrossSites: true}, {Class: "web"}}
			s.PreferredSite = "room-a"
		}, ""},
		{"anti-affinity class empty", func(s *havenv1.GroupSpec) { s.AntiAffinity = []*havenv1.AntiAffinity{{Hard: true}} }, "anti_affinity[0].class: is empty"},
		{"anti-affinity class bad", func(s *havenv1.GroupSpec) { s.AntiAffinity = []*havenv1.AntiAffinity{{Class: "SQL"}} }, `anti_affinity[0].class: "SQL" must be`},
		{"anti-affinity class twice", func(s *havenv1.GroupSpec) {
			s.AntiAffinity = []*havenv1.AntiAffinity{{Class: "sql", Hard: true}, {Class: "sql"}}
		}, `anti_affinity[1].class: "sql" is listed twice`},
		{"anti-affinity too many", func(s *havenv1.GroupSpec) {
			for i := 0; i <= MaxClasses; i++ {
				s.AntiAffinity = append(s.AntiAffinity, &havenv1.AntiAffinity{Class: "c" + string(rune('a'+i))})
			}
		}, "anti_affinity: 17 entries, the limit is 16"},
		{"bad preferred site", func(s *havenv1.GroupSpec) { s.PreferredSite = "Room A" }, `preferred_site: "Room A" must be`},
		{"bad window", func(s *havenv1.GroupSpec) {
			s.Failback = &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_WINDOW, WindowStartHour: 25}
		}, "window hours must be 0-23"},
		{"negative restart period", func(s *havenv1.GroupSpec) {
			s.Restart = &havenv1.RestartPolicy{MaxRestarts: 3, Period: durationpb.New(-1)}
		}, "restart.period"},
		{"too many resources", func(s *havenv1.GroupSpec) {
			for i := 0; i <= MaxResources; i++ {
				s.Resources = append(s.Resources, &havenv1.Resource{Name: "c" + strings.Repeat("x", i%50) + string(rune('a'+i%26)), Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG})
			}
		}, "more than the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testSpec("web")
			tt.mutate(s)
			NormalizeGroupSpec(s)
			err := ValidateGroupSpec(s)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid spec refused: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("invalid spec accepted, want %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestNormalizeDerivesDemand(t *testing.T) {
	s := testSpec("web")
	NormalizeGroupSpec(s)
	if s.CpuMillis != 2000 || s.MemoryBytes != 1<<30 || s.Priority != havenv1.Priority_PRIORITY_MEDIUM || s.Failback.GetMode() != havenv1.FailbackMode_FAILBACK_MODE_NEVER {
		t.Fatalf("normalized: %v", s)
	}
	s.CpuMillis = 500
	NormalizeGroupSpec(s)
	if s.CpuMillis != 500 {
		t.Fatal("an explicit demand was overwritten")
	}
}

func TestValidateDiskResource(t *testing.T) {
	disk := func(mutate func(*havenv1.Resource)) *havenv1.Resource {
		r := &havenv1.Resource{Name: "data", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: "web/data.img", SizeBytes: 1 << 30}}
		mutate(r)
		return r
	}
	for _, c := range []struct {
		name string
		r    *havenv1.Resource
		want string
	}{
		{"valid", disk(func(*havenv1.Resource) {}), ""},
		{"kind left out", disk(func(r *havenv1.Resource) { r.Kind = 0 }), ""},
		{"qcow2", disk(func(r *havenv1.Resource) { r.Disk.Format = "qcow2" }), ""},
		{"missing", nil, "disk: is missing"},
		{"no name", disk(func(r *havenv1.Resource) { r.Name = "" }), "disk.name: is empty"},
		{"bad name", disk(func(r *havenv1.Resource) { r.Name = "Data" }), `disk.name: "Data" must be`},
		{"another kind", disk(func(r *havenv1.Resource) { r.Kind = havenv1.ResourceKind_RESOURCE_KIND_VM }), "disk.kind: vm, want disk"},
		{"dependencies", disk(func(r *havenv1.Resource) { r.DependsOn = []string{"config"} }), "depends on nothing"},
		{"no disk", disk(func(r *havenv1.Resource) { r.Disk = nil }), "needs a path and size_bytes"},
		{"absolute path", disk(func(r *havenv1.Resource) { r.Disk.Path = "/etc/passwd" }), `disk.path: "/etc/passwd" must be a clean relative path`},
		{"escaping path", disk(func(r *havenv1.Resource) { r.Disk.Path = "../x.img" }), "clean relative path"},
		{"unclean path", disk(func(r *havenv1.Resource) { r.Disk.Path = "web/./x.img" }), "clean relative path"},
		{"execution logs", disk(func(r *havenv1.Resource) { r.Disk.Path = ".exec/web/vm.log" }), "execution logs"},
		{"no size", disk(func(r *havenv1.Resource) { r.Disk.SizeBytes = 0 }), "disk.size_bytes: 0 is outside"},
		{"a vm spec", disk(func(r *havenv1.Resource) { r.Vm = &havenv1.VmSpec{Vcpus: 1} }), "vm: set on a resource of kind disk"},
		{"bad format", disk(func(r *havenv1.Resource) { r.Disk.Format = "vmdk" }), `disk.format: "vmdk" must be raw or qcow2`},
	} {
		err := ValidateDiskResource(c.r)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
