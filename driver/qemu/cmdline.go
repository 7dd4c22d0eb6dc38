package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/haven-ha/haven/driver"
)

// Files of one VM in its run directory. Unix socket paths are bounded
// (108 bytes on Linux), so the directory's name is short (vmDir) and so
// are these.
const (
	qmpSocket     = "qmp.sock"
	consoleSocket = "console.sock"
	consoleLog    = "console.log"
	pidFile       = "qemu.pid"
	// The supervisor's: its control socket, its log (with QEMU's stdout
	// and stderr), its pid.
	supervisorSocket = "sup.sock"
	supervisorLog    = "qemu.log"
	supervisorPID    = "sup.pid"
)

// maxSocketPath is sun_path's size less its terminating NUL.
const maxSocketPath = 107

// machines is what a QEMU binary can emulate: its machine types, with
// the aliases (q35) resolved to the versioned type they stand for. A VM
// runs on a versioned type, so that both ends of a move (or two releases
// of QEMU in one cluster) build the same machine.
type machines struct {
	known   map[string]bool
	aliases map[string]string // alias -> versioned type
}

var aliasRE = regexp.MustCompile(`\(alias of ([^)]+)\)`)

// probeMachines asks binary for its machine types (`-machine help`), which
// also proves the binary runs.
func probeMachines(ctx context.Context, binary string) (machines, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "-machine", "help").Output()
	if err != nil {
		return machines{}, fmt.Errorf("%s -machine help: %w", binary, err)
	}
	return parseMachines(out), nil
}

func parseMachines(out []byte) machines {
	m := machines{known: map[string]bool{}, aliases: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasSuffix(sc.Text(), ":") {
			continue // "Supported machines are:"
		}
		m.known[f[0]] = true
		if a := aliasRE.FindStringSubmatch(sc.Text()); a != nil {
			m.aliases[f[0]] = a[1]
		}
	}
	return m
}

// resolve names the versioned machine type for name ("" is the driver's
// default), or says that this QEMU cannot build it.
func (m machines) resolve(name string) (string, error) {
	if v, ok := m.aliases[name]; ok {
		return v, nil
	}
	if !m.known[name] {
		return "", fmt.Errorf("machine %q: this node's QEMU does not emulate it", name)
	}
	return name, nil
}

// vmDir is where a VM's sockets, console log and supervisor live: a short
// name derived from the VM's id (vm.json inside names it in full).
func vmDir(runDir string, id driver.VMID) string {
	return filepath.Join(runDir, shortName(id))
}

// ConsolePath is the log of a VM's console under a driver's run
// directory: everything the guest wrote on its serial port, kept after
// the VM stops (until the driver forgets it). ConsoleSocket is the
// console itself, for an operator to attach to (socat, nc -U).
func ConsolePath(runDir string, id driver.VMID) string {
	return filepath.Join(vmDir(runDir, id), consoleLog)
}

// ConsoleSocket is the socket of a VM's console (see ConsolePath).
func ConsoleSocket(runDir string, id driver.VMID) string {
	return filepath.Join(vmDir(runDir, id), consoleSocket)
}

// PIDPath is where QEMU writes its pid.
func PIDPath(runDir string, id driver.VMID) string {
	return filepath.Join(vmDir(runDir, id), pidFile)
}

// command builds the QEMU command line of spec, started paused (-S, and
// for a move's target waiting for the incoming migration): the driver
// connects to its QMP socket first and then runs it. Every part of the machine that a move
// must rebuild identically on the target (machine type, CPU model, RAM,
// devices with their ids and buses, the kernel) comes from spec and the
// driver's configuration alone.
func command(cfg Config, spec driver.VMSpec, machine, dir string, incoming bool) []string {
	args := []string{cfg.Binary,
		"-name", "guest=" + spec.ID.String() + ",debug-threads=on",
		"-machine", machine,
		"-accel", cfg.Accel,
		"-cpu", cfg.CPU,
		"-m", memArg(cfg.Accel, spec.MemoryBytes),
		"-smp", strconv.Itoa(max(spec.VCPUs, 1)),
		"-nodefaults", "-no-user-config", "-display", "none",
		// A guest that powers off leaves QEMU alive in state shutdown,
		// so the driver learns why it stopped.
		"-no-shutdown",
		// The console: a socket an operator (or a test) can attach to,
		// logged to a file that survives the VM.
		"-chardev", "socket,id=console,path=" + filepath.Join(dir, consoleSocket) + ",server=on,wait=off,logfile=" + filepath.Join(dir, consoleLog) + ",logappend=on",
		"-serial", "chardev:console",
		"-qmp", "unix:" + filepath.Join(dir, qmpSocket) + ",server=on,wait=off",
		"-pidfile", filepath.Join(dir, pidFile),
		// A hung guest stops feeding its watchdog; QEMU then pauses it
		// (state watchdog) and the driver reports it crashed, so the
		// group restarts under its policy.
		"-device", "i6300esb,id=watchdog0",
		"-action", "watchdog=pause",
		"-device", "virtio-scsi-pci,id=scsi0",
	}
	if strings.Contains(machine, "q35") {
		// Native PCIe hot-plug rather than ACPI's, which needs a guest
		// that answers (QEMU.md).
		args = append(args, "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off")
	}
	for _, d := range spec.Disks {
		args = append(args, "-blockdev", jsonArg(blockdevArgs(cfg.SharedDir, d)), "-device", jsonArg(deviceArgs(d)))
	}
	if b := spec.Boot; b.Kernel != "" {
		args = append(args, "-kernel", b.Kernel)
		if b.Initrd != "" {
			args = append(args, "-initrd", b.Initrd)
		}
		if b.Cmdline != "" {
			args = append(args, "-append", b.Cmdline)
		}
	}
	// -S always: a migration's target without it starts the guest by
	// itself once the state has arrived, before the move is committed,
	// which would make it a second runner beside the paused source. The
	// driver runs it with cont, from Activate, once its lease is armed.
	args = append(args, "-S")
	if incoming {
		args = append(args, "-incoming", "defer")
	}
	return args
}

func jsonArg(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings and ints always marshal
	}
	return string(b)
}

// check refuses, before any process starts, what QEMU would refuse or
// this node cannot run, and says which field.
func (d *Driver) check(spec driver.VMSpec) (machine string, err error) {
	if err := spec.Validate(); err != nil {
		return "", err
	}
	switch {
	case spec.Node != "" && spec.Node != d.cfg.Node:
		return "", fmt.Errorf("node %q: this driver runs node %q", spec.Node, d.cfg.Node)
	case spec.MemoryBytes%(1<<20) != 0:
		return "", fmt.Errorf("memory_bytes: %d is not a whole number of MiB", spec.MemoryBytes)
	}
	name := spec.Machine
	if name == "" {
		name = d.cfg.Machine
	}
	if machine, err = d.machines.resolve(name); err != nil {
		return "", err
	}
	for _, f := range []struct{ name, path string }{{"kernel", spec.Boot.Kernel}, {"initrd", spec.Boot.Initrd}} {
		if f.path == "" {
			continue
		}
		if strings.Contains(f.path, ",") {
			return "", fmt.Errorf("boot.%s %q: QEMU's option syntax cannot take a comma", f.name, f.path)
		}
		if _, err := os.Stat(f.path); err != nil {
			return "", fmt.Errorf("boot.%s: %w", f.name, err)
		}
	}
	if err := d.checkDisks(spec.Disks); err != nil {
		return "", err
	}
	return machine, nil
}

// errRunDir says why a run directory cannot hold a VM's sockets.
func checkRunDir(runDir string) error {
	if !filepath.IsAbs(runDir) {
		return fmt.Errorf("run_dir %q: must be absolute", runDir)
	}
	if strings.Contains(runDir, ",") {
		return fmt.Errorf("run_dir %q: QEMU's option syntax cannot take a comma", runDir)
	}
	longest := filepath.Join(vmDir(runDir, driver.VMID{Group: "g", Resource: "r"}), consoleSocket)
	if len(longest) > maxSocketPath {
		return fmt.Errorf("run_dir %q: too long for a unix socket path (%d bytes of %d with a VM's socket)", runDir, len(longest), maxSocketPath)
	}
	return nil
}

var errClosed = errors.New("qemu driver closed")

// lastWords is what QEMU said before it exited: the end of the
// supervisor's log without the supervisor's own lines (slog's, which
// begin "time="), which QEMU's stderr shares.
func lastWords(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	var said []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "time=") {
			said = append(said, l)
		}
	}
	out := strings.Join(said, "\n")
	const keep = 600
	if len(out) > keep {
		out = out[len(out)-keep:]
	}
	if out == "" {
		return "(nothing on its stderr)"
	}
	return out
}

// exitError is a QEMU's exit as an error, with its last words; one that
// could not lock a disk image says so first.
func exitError(exit fmt.Stringer, words string) error {
	err := fmt.Errorf("qemu exited (%s): %s", exit, words)
	if m := heldRE.FindStringSubmatch(words); m != nil {
		return imageHeld(m[1], err)
	}
	return err
}

var heldRE = regexp.MustCompile(`Failed to get "write" lock\s+Is another process using the image \[([^\]]+)\]`)

// tcgRAMPad is what memArg adds to a guest's RAM under TCG.
//
// QEMU before 9.0 (Debian 12 has 7.2) loses pages that a live migration
// must send again when the guest runs under TCG: its migration thread
// reads and clears the RAM's dirty bitmap 64 pages at a time where a
// RAM block starts and ends on such a boundary, and on that path forgets
// to make the vCPUs' TLB entries trap writes again (QEMU commit 03bfc2188f,
// "physmem: Fix migration dirty bitmap coherency with TCG memory
// access"). A page the guest writes through a TLB entry it already had
// is then never marked dirty, and the target gets an old copy of it: a
// guest that oopses or reboots after the move (seen as a call through a
// stale hrtimer in the timer interrupt), every time with post-copy, now
// and then with pre-copy. A RAM size off that 256 KiB grid (QEMU rounds
// it to 8 KiB) sends the whole block through the page-by-page path,
// which resets the TLB entries. KVM tracks dirty pages itself, so only
// TCG gets the pad; on every QEMU version alike, as both ends of a move
// must build the same RAM.
const tcgRAMPad = 8 << 10

// padTCGRAM is false only in tests that show what happens without it.
var padTCGRAM = true

// memArg is QEMU's -m for a guest of memBytes (whole MiB) under accel.
func memArg(accel string, memBytes int64) string {
	mib := memBytes >> 20
	if !padTCGRAM || !usesTCG(accel) {
		return strconv.FormatInt(mib, 10)
	}
	return strconv.FormatInt((mib<<20+tcgRAMPad)>>10, 10) + "k"
}

// usesTCG says whether accel (QEMU's -accel, "tcg,tb-size=32") is TCG.
func usesTCG(accel string) bool {
	name, _, _ := strings.Cut(accel, ",")
	return name == "tcg"
}
