package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/haven-ha/haven/driver"
)

// From QEMU 7.2's `-machine help`, shortened.
const machineHelp = `Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
pc-q35-7.1           Standard PC (Q35 + ICH9, 2009)
none                 empty machine
`

func TestMachines(t *testing.T) {
	m := parseMachines([]byte(machineHelp))
	for _, tc := range []struct{ name, want, err string }{
		{"q35", "pc-q35-7.2", ""},
		{"pc", "pc-i440fx-7.2", ""},
		{"pc-q35-7.1", "pc-q35-7.1", ""},
		{"microvm", "microvm", ""},
		{"pc-q35-9.9", "", `machine "pc-q35-9.9": this node's QEMU does not emulate it`},
		{"Supported", "", "does not emulate"},
	} {
		got, err := m.resolve(tc.name)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("resolve(%q) = %q, %v; want %q, %q", tc.name, got, err, tc.want, tc.err)
		}
	}
}

// The command line carries everything a move must rebuild identically,
// and nothing from outside the spec and the driver's configuration.
func TestCommand(t *testing.T) {
	cfg := Config{Binary: "qemu-system-x86_64", Accel: "tcg", CPU: "qemu64", SharedDir: "/shared"}
	spec := driver.VMSpec{
		ID: driver.VMID{Group: "web", Resource: "vm"}, Epoch: 3, VCPUs: 2, MemoryBytes: 256 << 20,
		Disks: []driver.DiskSpec{{Name: "d0", Path: "web/d0.qcow2", Format: "qcow2"}, {Name: "d1", Path: "web/d1.img", Slot: 1}},
		Boot:  driver.Boot{Kernel: "/boot/vmlinuz", Initrd: "/boot/initrd.gz", Cmdline: "console=ttyS0 quiet"},
	}
	args := command(cfg, spec, "pc-q35-7.2", "/run/haven/vm-1", false)
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-machine pc-q35-7.2", "-accel tcg", "-cpu qemu64", "-m 262152k", "-smp 2", "-nodefaults", "-no-shutdown",
		"-qmp unix:/run/haven/vm-1/qmp.sock,server=on,wait=off",
		"-chardev socket,id=console,path=/run/haven/vm-1/console.sock,server=on,wait=off,logfile=/run/haven/vm-1/console.log,logappend=on",
		"-device i6300esb,id=watchdog0", "-action watchdog=pause",
		`-blockdev {"driver":"qcow2","file":{"driver":"file","filename":"/shared/web/d0.qcow2"},"node-name":"drive-0"}`,
		`-blockdev {"driver":"raw","file":{"driver":"file","filename":"/shared/web/d1.img"},"node-name":"drive-1"}`,
		`"drive":"drive-1","driver":"scsi-hd","id":"disk-1","lun":1`,
		"-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
		"-kernel /boot/vmlinuz", "-initrd /boot/initrd.gz", "-append console=ttyS0 quiet",
		" -S",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	if slices.Contains(args, "-incoming") {
		t.Error("a VM started afresh waits for an incoming migration")
	}
	in := command(cfg, spec, "pc-q35-7.2", "/run/haven/vm-1", true)
	// Without -S the target would run the guest as soon as the state has
	// arrived, before the move is committed.
	if strings.Join(in[len(in)-2:], " ") != "-incoming defer" || !slices.Contains(in, "-S") {
		t.Errorf("an incoming VM's command line ends %v, want -S and -incoming defer", in[len(in)-3:])
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &Driver{cfg: Config{Node: "n1", SharedDir: dir, Machine: "q35"}, machines: parseMachines([]byte(machineHelp))}
	good := driver.VMSpec{ID: driver.VMID{Group: "web", Resource: "vm"}, Epoch: 1, VCPUs: 1, MemoryBytes: 128 << 20, Boot: driver.Boot{Kernel: kernel}}
	if m, err := d.check(good); err != nil || m != "pc-q35-7.2" {
		t.Fatalf("check(good) = %q, %v", m, err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*driver.VMSpec)
		want   string
	}{
		{"another node", func(s *driver.VMSpec) { s.Node = "n2" }, `node "n2"`},
		{"memory not in MiB", func(s *driver.VMSpec) { s.MemoryBytes += 4096 }, "whole number of MiB"},
		{"unknown machine", func(s *driver.VMSpec) { s.Machine = "pc-q35-1.0" }, "does not emulate"},
		{"missing kernel", func(s *driver.VMSpec) { s.Boot.Kernel = filepath.Join(dir, "none") }, "boot.kernel"},
		{"comma in initrd", func(s *driver.VMSpec) { s.Boot.Initrd = filepath.Join(dir, "a,b") }, "comma"},
		{"missing disk", func(s *driver.VMSpec) { s.Disks = []driver.DiskSpec{{Name: "d", Path: "web/none.img"}} }, "disks[0]"},
		{"bad format", func(s *driver.VMSpec) {
			s.Disks = []driver.DiskSpec{{Name: "d", Path: "vmlinuz", Format: "vmdk"}}
		}, "format"},
		{"negative vcpus", func(s *driver.VMSpec) { s.VCPUs = -1 }, "vcpus"},
	} {
		spec := good
		tc.mutate(&spec)
		if _, err := d.check(spec); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// CanRun refuses what Start would refuse before a process starts, as an
// ErrInvalidSpec naming the field, and sees a file appear.
func TestCanRun(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	d := &Driver{cfg: Config{Node: "n1", SharedDir: dir, Machine: "q35"}, machines: parseMachines([]byte(machineHelp))}
	// Another node's name is not the question: where to run is.
	spec := driver.VMSpec{ID: driver.VMID{Group: "web", Resource: "vm"}, Node: "n2", Epoch: 1, VCPUs: 1, MemoryBytes: 128 << 20, Boot: driver.Boot{Kernel: kernel}}
	err := d.CanRun(spec)
	if !errors.Is(err, driver.ErrInvalidSpec) || !strings.Contains(err.Error(), "boot.kernel") {
		t.Fatalf("CanRun without the kernel = %v, want ErrInvalidSpec naming boot.kernel", err)
	}
	if err := os.WriteFile(kernel, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.CanRun(spec); err != nil {
		t.Fatalf("CanRun with the kernel = %v", err)
	}
	spec.Machine = "pc-q35-1.0"
	if err := d.CanRun(spec); !errors.Is(err, driver.ErrInvalidSpec) || !strings.Contains(err.Error(), "does not emulate") {
		t.Fatalf("CanRun of an unknown machine = %v", err)
	}
}

func TestCheckRunDir(t *testing.T) {
	if err := checkRunDir("/var/lib/haven/qemu"); err != nil {
		t.Errorf("a usual run directory: %v", err)
	}
	for _, dir := range []string{"relative/qemu", "/a,b/qemu", "/" + strings.Repeat("x", 90)} {
		if err := checkRunDir(dir); err == nil {
			t.Errorf("checkRunDir(%q) accepted it", dir)
		}
	}
}

func TestRunState(t *testing.T) {
	for s, want := range map[string]driver.State{
		"running": driver.StateRunning, "paused": driver.StatePaused, "postmigrate": driver.StatePaused,
		"inmigrate": driver.StateIncoming, "watchdog": driver.StateCrashed, "guest-panicked": driver.StateCrashed,
		"shutdown": driver.StateCrashed, "something-new": driver.StateCrashed,
	} {
		if got, _ := runState(s); got != want {
			t.Errorf("runState(%q) = %s, want %s", s, got, want)
		}
	}
	if _, why := runState("watchdog"); !strings.Contains(why, "watchdog") {
		t.Errorf("runState(watchdog) says %q", why)
	}
}

// Under TCG the RAM is off QEMU's 64-page grid (tcgRAMPad says why);
// under KVM it is what the spec asks.
func TestMemArg(t *testing.T) {
	for _, tc := range []struct {
		accel string
		want  string
	}{
		{"tcg", "262152k"},
		{"tcg,tb-size=32", "262152k"},
		{"kvm", "256"},
	} {
		got := memArg(tc.accel, 256<<20)
		if got != tc.want {
			t.Errorf("memArg(%q, 256 MiB) = %s, want %s", tc.accel, got, tc.want)
		}
		if k, ok := strings.CutSuffix(got, "k"); ok {
			n, _ := strconv.ParseInt(k, 10, 64)
			if n<<10%(64*4096) == 0 || n<<10%8192 != 0 {
				t.Errorf("memArg(%q) = %s: on the 256 KiB grid, or off QEMU's 8 KiB rounding", tc.accel, got)
			}
		}
	}
}
