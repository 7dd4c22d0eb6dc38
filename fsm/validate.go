package fsm

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Limits on a group spec. They keep one group's record small and refuse
// sizes no hypervisor host has; they are checked at the API, never in Apply,
// so that tightening them cannot make replicas of different versions
// disagree about the log.
const (
	MaxResources     = 64
	MaxOwners        = 64
	MaxClasses       = 16
	MaxLabels        = 64
	MaxVCPUs         = 1024
	MaxCPUMillis     = 1024 * 1000
	MaxMemoryBytes   = 64 << 40 // 64 TiB
	MinVMMemoryBytes = 1 << 20  // 1 MiB
	MaxDiskBytes     = 1 << 50  // 1 PiB
	MaxRestarts      = 100
	MaxRestartPeriod = 24 * time.Hour
	maxLabelValue    = 256
	maxSettings      = 256
	maxPathLen       = 1024
)

// labelRE is what a node label key or value may be (agent/labels.go keeps
// node labels to the same form).
var labelRE = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)

// machineRE is what a machine type may be (QEMU's names: pc-q35-7.2,
// microvm, q35).
var machineRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether s can name a node, group, resource or class:
// a DNS label, so it is safe in paths, metrics and hostnames.
func ValidName(s string) bool { return nameRE.MatchString(s) }

func checkName(field, s string) error {
	if s == "" {
		return fmt.Errorf("%s: is empty", field)
	}
	if !ValidName(s) {
		return fmt.Errorf("%s: %q must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", field, s)
	}
	return nil
}

// NormalizeGroupSpec fills the defaults a spec leaves out: medium priority,
// never fail back, and a demand derived from the VM resources. It modifies
// spec; call it before ValidateGroupSpec.
func NormalizeGroupSpec(spec *havenv1.GroupSpec) {
	if spec.Priority == havenv1.Priority_PRIORITY_UNSPECIFIED {
		spec.Priority = havenv1.Priority_PRIORITY_MEDIUM
	}
	if spec.Failback == nil {
		spec.Failback = &havenv1.FailbackPolicy{}
	}
	if spec.Failback.Mode == havenv1.FailbackMode_FAILBACK_MODE_UNSPECIFIED {
		spec.Failback.Mode = havenv1.FailbackMode_FAILBACK_MODE_NEVER
	}
	var cpu, mem int64
	for _, r := range spec.GetResources() {
		if vm := r.GetVm(); vm != nil {
			cpu += int64(vm.GetVcpus()) * 1000
			mem += vm.GetMemoryBytes()
		}
	}
	if spec.CpuMillis == 0 {
		spec.CpuMillis = cpu
	}
	if spec.MemoryBytes == 0 {
		spec.MemoryBytes = mem
	}
}

// ValidateGroupSpec returns an error that names the first field that is
// wrong, prefixed with the group's name.
// ExecDir is the directory of the shared storage root that holds the sim
// driver's execution logs: no disk may live there.
const ExecDir = ".exec"

// ValidateNodeSelector checks a node_selector, wherever one is given.
func ValidateNodeSelector(sel map[string]string) error {
	if len(sel) > MaxLabels {
		return fmt.Errorf("node_selector: %d entries, the limit is %d", len(sel), MaxLabels)
	}
	for k, v := range sel {
		if !labelRE.MatchString(k) || !labelRE.MatchString(v) {
			return fmt.Errorf("node_selector: %q=%q: keys and values are 1-63 letters, digits, '.', '_', '/' or '-'", k, v)
		}
	}
	return nil
}

func ValidateGroupSpec(spec *havenv1.GroupSpec) error {
	if spec == nil {
		return fmt.Errorf("spec: is missing")
	}
	if err := checkName("name", spec.GetName()); err != nil {
		return err
	}
	if err := validateGroup(spec); err != nil {
		return fmt.Errorf("group %q: %w", spec.GetName(), err)
	}
	return nil
}

func validateGroup(spec *havenv1.GroupSpec) error {
	res := spec.GetResources()
	if len(res) == 0 {
		return fmt.Errorf("resources: a group needs at least one resource")
	}
	if len(res) > MaxResources {
		return fmt.Errorf("resources: %d is more than the limit of %d", len(res), MaxResources)
	}
	byName := make(map[string]*havenv1.Resource, len(res))
	for i, r := range res {
		if err := checkName(fmt.Sprintf("resources[%d].name", i), r.GetName()); err != nil {
			return err
		}
		if _, dup := byName[r.GetName()]; dup {
			return fmt.Errorf("resources[%d].name: %q is used twice", i, r.GetName())
		}
		byName[r.GetName()] = r
	}
	for _, r := range res {
		if err := validateResource(r, byName); err != nil {
			return fmt.Errorf("resource %q: %w", r.GetName(), err)
		}
	}
	disks := map[string]string{}
	for _, r := range res {
		if d := r.GetDisk(); d != nil {
			if other, dup := disks[d.GetPath()]; dup {
				return fmt.Errorf("resource %q: disk.path: %q is also resource %q's", r.GetName(), d.GetPath(), other)
			}
			disks[d.GetPath()] = r.GetName()
		}
	}
	if cycle := findCycle(res); cycle != nil {
		return fmt.Errorf("resources: dependency cycle %s", strings.Join(cycle, " -> "))
	}
	if c := spec.GetCpuMillis(); c < 0 || c > MaxCPUMillis {
		return fmt.Errorf("cpu_millis: %d is outside 0..%d", c, MaxCPUMillis)
	}
	if m := spec.GetMemoryBytes(); m < 0 || m > MaxMemoryBytes {
		return fmt.Errorf("memory_bytes: %d is outside 0..%d (64 TiB)", m, int64(MaxMemoryBytes))
	}
	if _, ok := havenv1.Priority_name[int32(spec.GetPriority())]; !ok {
		return fmt.Errorf("priority: %d is not a known priority", spec.GetPriority())
	}
	if err := checkNames("possible_owners", spec.GetPossibleOwners(), MaxOwners); err != nil {
		return err
	}
	if err := checkNames("preferred_owners", spec.GetPreferredOwners(), MaxOwners); err != nil {
		return err
	}
	if possible := spec.GetPossibleOwners(); len(possible) > 0 {
		for _, p := range spec.GetPreferredOwners() {
			if !contains(possible, p) {
				return fmt.Errorf("preferred_owners: %q is not among possible_owners", p)
			}
		}
	}
	if err := checkAntiAffinity(spec.GetAntiAffinity()); err != nil {
		return err
	}
	if s := spec.GetPreferredSite(); s != "" {
		if err := checkName("preferred_site", s); err != nil {
			return err
		}
	}
	if err := ValidateNodeSelector(spec.GetNodeSelector()); err != nil {
		return err
	}
	if fb := spec.GetFailback(); fb != nil {
		if _, ok := havenv1.FailbackMode_name[int32(fb.GetMode())]; !ok {
			return fmt.Errorf("failback.mode: %d is not a known mode", fb.GetMode())
		}
		if fb.GetWindowStartHour() > 23 || fb.GetWindowEndHour() > 23 {
			return fmt.Errorf("failback: window hours must be 0-23, got %d-%d", fb.GetWindowStartHour(), fb.GetWindowEndHour())
		}
		if fb.GetMode() == havenv1.FailbackMode_FAILBACK_MODE_WINDOW && fb.GetWindowStartHour() == fb.GetWindowEndHour() {
			return fmt.Errorf("failback: window %d-%d is empty", fb.GetWindowStartHour(), fb.GetWindowEndHour())
		}
	}
	if rp := spec.GetRestart(); rp != nil {
		if rp.GetMaxRestarts() > MaxRestarts {
			return fmt.Errorf("restart.max_restarts: %d is more than %d", rp.GetMaxRestarts(), MaxRestarts)
		}
		if p := rp.GetPeriod(); p != nil {
			if err := p.CheckValid(); err != nil {
				return fmt.Errorf("restart.period: %v", err)
			}
			if d := p.AsDuration(); d < 0 || d > MaxRestartPeriod {
				return fmt.Errorf("restart.period: %s is outside 0..%s", d, MaxRestartPeriod)
			}
		}
	}
	if len(spec.GetLabels()) > MaxLabels {
		return fmt.Errorf("labels: %d is more than %d", len(spec.GetLabels()), MaxLabels)
	}
	for k, v := range spec.GetLabels() {
		if k == "" || len(k) > 63 {
			return fmt.Errorf("labels: key %q must be 1-63 bytes", k)
		}
		if len(v) > maxLabelValue {
			return fmt.Errorf("labels[%s]: value is longer than %d bytes", k, maxLabelValue)
		}
	}
	return nil
}

// ValidateDiskResource checks a disk resource given on its own, as to
// AttachDisk: a name, kind disk (left out, it is taken as disk) and a disk
// as ValidateGroupSpec checks one; it depends on nothing. Whether it fits
// its group (a free name, the limits) is ValidateGroupSpec's question on
// the group with it (WithDisk).
func ValidateDiskResource(r *havenv1.Resource) error {
	if r == nil {
		return fmt.Errorf("disk: is missing")
	}
	if err := checkName("disk.name", r.GetName()); err != nil {
		return err
	}
	if k := r.GetKind(); k != havenv1.ResourceKind_RESOURCE_KIND_DISK && k != havenv1.ResourceKind_RESOURCE_KIND_UNSPECIFIED {
		return fmt.Errorf("disk.kind: %s, want disk", kindWord(k))
	}
	if len(r.GetDependsOn()) > 0 {
		return fmt.Errorf("disk.depends_on: a disk attached to a group depends on nothing (its VMs come to depend on it)")
	}
	d := proto.Clone(r).(*havenv1.Resource)
	d.Kind = havenv1.ResourceKind_RESOURCE_KIND_DISK
	if err := validateResource(d, nil); err != nil {
		return fmt.Errorf("disk %q: %w", r.GetName(), err)
	}
	return nil
}

func validateResource(r *havenv1.Resource, byName map[string]*havenv1.Resource) error {
	kind := r.GetKind()
	if kind == havenv1.ResourceKind_RESOURCE_KIND_UNSPECIFIED {
		return fmt.Errorf("kind: is missing (config, disk, vm or ip)")
	}
	if _, ok := havenv1.ResourceKind_name[int32(kind)]; !ok {
		return fmt.Errorf("kind: %d is not a known resource kind (config, disk, vm or ip)", kind)
	}
	specs := map[havenv1.ResourceKind]bool{
		havenv1.ResourceKind_RESOURCE_KIND_CONFIG: r.GetConfig() != nil,
		havenv1.ResourceKind_RESOURCE_KIND_DISK:   r.GetDisk() != nil,
		havenv1.ResourceKind_RESOURCE_KIND_VM:     r.GetVm() != nil,
		havenv1.ResourceKind_RESOURCE_KIND_IP:     r.GetIp() != nil,
	}
	for k, set := range specs {
		if set && k != kind {
			return fmt.Errorf("%s: set on a resource of kind %s", kindWord(k), kindWord(kind))
		}
	}
	seen := map[string]bool{}
	for _, d := range r.GetDependsOn() {
		switch {
		case d == r.GetName():
			return fmt.Errorf("depends_on: depends on itself")
		case byName[d] == nil:
			return fmt.Errorf("depends_on: %q is not a resource of this group", d)
		case seen[d]:
			return fmt.Errorf("depends_on: %q is listed twice", d)
		}
		seen[d] = true
	}
	switch kind {
	case havenv1.ResourceKind_RESOURCE_KIND_VM:
		vm := r.GetVm()
		if vm == nil {
			return fmt.Errorf("vm: a vm resource needs vcpus and memory_bytes")
		}
		if vm.GetVcpus() < 1 || vm.GetVcpus() > MaxVCPUs {
			return fmt.Errorf("vm.vcpus: %d is outside 1..%d", vm.GetVcpus(), MaxVCPUs)
		}
		if m := vm.GetMemoryBytes(); m < MinVMMemoryBytes || m > MaxMemoryBytes {
			return fmt.Errorf("vm.memory_bytes: %d is outside 1 MiB..64 TiB", m)
		}
		if err := validateBoot(vm); err != nil {
			return err
		}
	case havenv1.ResourceKind_RESOURCE_KIND_DISK:
		d := r.GetDisk()
		if d == nil {
			return fmt.Errorf("disk: a disk resource needs a path and size_bytes")
		}
		p := d.GetPath()
		if p == "" || len(p) > maxPathLen || path.IsAbs(p) || path.Clean(p) != p || strings.HasPrefix(p, "../") || p == ".." || strings.ContainsRune(p, 0) {
			return fmt.Errorf("disk.path: %q must be a clean relative path under the shared storage root", p)
		}
		if p == ExecDir || strings.HasPrefix(p, ExecDir+"/") {
			return fmt.Errorf("disk.path: %q is under %s, where the sim driver keeps execution logs", p, ExecDir)
		}
		if s := d.GetSizeBytes(); s < 1 || s > MaxDiskBytes {
			return fmt.Errorf("disk.size_bytes: %d is outside 1..%d (1 PiB)", s, int64(MaxDiskBytes))
		}
		if f := d.GetFormat(); f != "" && f != "raw" && f != "qcow2" {
			return fmt.Errorf("disk.format: %q must be raw or qcow2", f)
		}
	case havenv1.ResourceKind_RESOURCE_KIND_IP:
		ip := r.GetIp()
		if ip == nil {
			return fmt.Errorf("ip: an ip resource needs an address")
		}
		if _, err := netip.ParseAddr(ip.GetAddress()); err != nil {
			return fmt.Errorf("ip.address: %q is not an IP address", ip.GetAddress())
		}
	case havenv1.ResourceKind_RESOURCE_KIND_CONFIG:
		if len(r.GetConfig().GetSettings()) > maxSettings {
			return fmt.Errorf("config.settings: more than %d entries", maxSettings)
		}
	}
	return nil
}

func kindWord(k havenv1.ResourceKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "RESOURCE_KIND_"))
}

func checkNames(field string, names []string, limit int) error {
	if len(names) > limit {
		return fmt.Errorf("%s: %d entries, the limit is %d", field, len(names), limit)
	}
	seen := map[string]bool{}
	for i, n := range names {
		if err := checkName(fmt.Sprintf("%s[%d]", field, i), n); err != nil {
			return err
		}
		if seen[n] {
			return fmt.Errorf("%s[%d]: %q is listed twice", field, i, n)
		}
		seen[n] = true
	}
	return nil
}

// checkAntiAffinity: class names are names, and a class is listed once (a
// class both hard and soft would be a contradiction, and twice the same is a
// typo).
func checkAntiAffinity(aas []*havenv1.AntiAffinity) error {
	if len(aas) > MaxClasses {
		return fmt.Errorf("anti_affinity: %d entries, the limit is %d", len(aas), MaxClasses)
	}
	seen := map[string]bool{}
	for i, aa := range aas {
		if err := checkName(fmt.Sprintf("anti_affinity[%d].class", i), aa.GetClass()); err != nil {
			return err
		}
		if seen[aa.GetClass()] {
			return fmt.Errorf("anti_affinity[%d].class: %q is listed twice", i, aa.GetClass())
		}
		seen[aa.GetClass()] = true
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// findCycle returns a dependency cycle as a path that starts and ends at the
// same resource, or nil. Resources are visited in spec order so the reported
// cycle is stable.
func findCycle(res []*havenv1.Resource) []string {
	deps := make(map[string][]string, len(res))
	for _, r := range res {
		deps[r.GetName()] = r.GetDependsOn()
	}
	const (
		unvisited = iota
		onStack
		done
	)
	mark := map[string]int{}
	var stack []string
	var visit func(string) []string
	visit = func(n string) []string {
		mark[n] = onStack
		stack = append(stack, n)
		for _, d := range deps[n] {
			switch mark[d] {
			case onStack:
				for i, s := range stack {
					if s == d {
						return append(append([]string(nil), stack[i:]...), d)
					}
				}
			case unvisited:
				if c := visit(d); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		mark[n] = done
		return nil
	}
	for _, r := range res {
		if mark[r.GetName()] == unvisited {
			if c := visit(r.GetName()); c != nil {
				return c
			}
		}
	}
	return nil
}

// maxCmdline is Linux's own bound on a kernel command line (x86's
// COMMAND_LINE_SIZE).
const maxCmdline = 2048

// validateBoot checks a VM's direct kernel boot and machine type: paths
// that name the same file on every node, a command line the kernel
// accepts. Whether the files exist is the node's question, not the log's.
func validateBoot(vm *havenv1.VmSpec) error {
	for _, f := range []struct{ name, path string }{{"kernel", vm.GetKernel()}, {"initrd", vm.GetInitrd()}} {
		if p := f.path; p != "" && (len(p) > maxPathLen || !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsRune(p, 0)) {
			return fmt.Errorf("vm.%s: %q must be a clean absolute path", f.name, p)
		}
	}
	if vm.GetKernel() == "" && (vm.GetInitrd() != "" || vm.GetCmdline() != "") {
		return errors.New("vm.kernel: an initrd or a cmdline needs a kernel")
	}
	if c := vm.GetCmdline(); len(c) > maxCmdline || strings.ContainsAny(c, "\x00\n") {
		return fmt.Errorf("vm.cmdline: longer than %d bytes or with a NUL or newline", maxCmdline)
	}
	if m := vm.GetMachine(); m != "" && !machineRE.MatchString(m) {
		return fmt.Errorf("vm.machine: %q is not a machine type name", m)
	}
	return nil
}
