// Package testguest is a real Linux guest for the QEMU driver's tests,
// one whose health can be seen from outside the VM.
//
// The guest is Debian's kernel and a small initramfs (busybox, a few
// kernel modules and the program in ./guest). Once booted it prints
// "haven-tick <n> <dirtied_mib>" on the serial console (ttyS0) every tick,
// feeds the i6300esb watchdog, writes its memory at a set rate so that a
// live migration has dirty pages to chase, reports its disks as they come
// and go, and takes commands ("hang", "dirty <mib_per_s>") on a second
// serial port (ttyS1). Tests read the console's log with Serial and send
// commands with Send: a counter that keeps increasing on the target of a
// migration proves the guest survived it; "hang" makes a guest that QEMU
// still runs but that no longer ticks nor feeds its watchdog.
//
// build.sh builds the guest from Debian packages; Build runs it once per
// test binary, into a directory shared by all test packages and runs.
//
// A QEMU command line for the guest needs, besides the driver's usual
// machine (q35; -accel tcg, as KVM does not boot Linux on the CI
// machines):
//
//	Guest.Args(opts)                 -kernel, -initrd, -append
//	-m 192                           at least Options.MemMiB + 128
//	-device i6300esb                 for the watchdog, with
//	-action watchdog=poweroff        (or reset, pause, ...) what it does
//	ControlArgs(path)                for Send
package testguest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Guest is a built guest: files for QEMU's -kernel and -initrd.
type Guest struct {
	// Kernel is the uncompressed vmlinux. QEMU boots it through its PVH
	// entry, which skips decompressing Debian's xz vmlinuz: that alone
	// takes half of the boot under TCG.
	Kernel string
	Initrd string
}

// Options are the guest's parameters, passed on the kernel command line.
// A zero field leaves the guest's default.
type Options struct {
	// MemMiB is the memory the guest allocates, fills at boot and then
	// dirties (default 64).
	MemMiB int
	// DirtyMiBPerSec is the rate at which it writes pages of that
	// memory (default 0: none after the fill). The "dirty" command
	// changes it.
	DirtyMiBPerSec int
	// TickMs is the period of the tick lines (default 100).
	TickMs int
	// WatchdogSec is the i6300esb timeout the guest sets (default 10):
	// the watchdog fires that long after the last tick.
	WatchdogSec int
	// Sequential dirties pages in address order; by default each pass
	// over the memory takes the pages in a new random order. Either way
	// every page is written once per pass.
	Sequential bool
}

// Append is the kernel command line (QEMU's -append) for the guest with
// these options. A kernel panic reboots the guest (panic=-1), which the
// counter starting again from 1 shows, or which ends QEMU with -no-reboot.
func (g Guest) Append(o Options) string {
	w := []string{"console=ttyS0", "quiet", "panic=-1"}
	param := func(name string, v int) {
		if v != 0 {
			w = append(w, "haven."+name+"="+strconv.Itoa(v))
		}
	}
	param("mem_mib", o.MemMiB)
	param("dirty_mib_per_s", o.DirtyMiBPerSec)
	param("tick_ms", o.TickMs)
	param("watchdog_s", o.WatchdogSec)
	if o.Sequential {
		w = append(w, "haven.dirty_pattern=seq")
	}
	return strings.Join(w, " ")
}

// Args are QEMU's -kernel, -initrd and -append arguments for the guest.
func (g Guest) Args(o Options) []string {
	return []string{"-kernel", g.Kernel, "-initrd", g.Initrd, "-append", g.Append(o)}
}

// DirEnv names the environment variable that sets where Build keeps the
// guest; by default the user's cache directory, haven/testguest.
const DirEnv = "HAVEN_TESTGUEST_DIR"

// errUnavailable marks a build that this machine cannot do (build.sh's
// exit status 3), as opposed to a broken one.
var errUnavailable = errors.New("cannot build the test guest here")

var built struct {
	once sync.Once
	g    Guest
	err  error
}

// Build returns the guest, built by build.sh if the cache does not hold
// it for the current kernel package and sources. It builds once per test
// binary; build.sh's lock serialises test packages run in parallel.
//
// Where the guest cannot be built (no Debian tools or package lists, no
// network, no Go) Build skips the test, or fails it when the environment
// variable CI is set or HAVEN_REQUIRE_LAB=1, so that CI cannot pass by
// skipping. Any other build failure fails the test.
func Build(t testing.TB) Guest {
	t.Helper()
	built.once.Do(func() {
		var out string
		built.g, out, built.err = build()
		if built.err == nil {
			t.Logf("test guest: %s", strings.TrimSpace(out))
		}
	})
	switch {
	case errors.Is(built.err, errUnavailable):
		Unavailable(t, built.err.Error())
	case built.err != nil:
		t.Fatalf("test guest: %v", built.err)
	}
	return built.g
}

// Unavailable skips t for a reason this machine lacks something, or
// fails it where skipping is forbidden (CI set, or HAVEN_REQUIRE_LAB=1).
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" || os.Getenv("HAVEN_REQUIRE_LAB") == "1" {
		t.Fatalf("%s; CI or HAVEN_REQUIRE_LAB=1 forbids skipping", why)
	}
	t.Skipf("%s; set CI or HAVEN_REQUIRE_LAB=1 to fail instead of skipping", why)
}

// Dir is where Build keeps the guest.
func Dir() (string, error) {
	if d := os.Getenv(DirEnv); d != "" {
		return d, nil
	}
	c, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set %s): %v", DirEnv, err)
	}
	return filepath.Join(c, "haven", "testguest"), nil
}

func build() (Guest, string, error) {
	dir, err := Dir()
	if err != nil {
		return Guest{}, "", err
	}
	// build.sh sits beside this file in the source tree, where go test
	// runs; a -trimpath build has no absolute path to find it by.
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "build.sh")
	if _, err := os.Stat(script); err != nil {
		return Guest{}, "", fmt.Errorf("build.sh not found beside the package source: %v", err)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		return Guest{}, "", fmt.Errorf("%w: no bash", errUnavailable)
	}
	out, err := exec.Command("bash", script, dir).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == 3:
		return Guest{}, string(out), fmt.Errorf("%w: %s", errUnavailable, strings.TrimSpace(string(out)))
	case err != nil:
		return Guest{}, string(out), fmt.Errorf("build.sh %s: %v\n%s", dir, err, out)
	}
	g := Guest{Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd.gz")}
	for _, f := range []string{g.Kernel, g.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return Guest{}, string(out), fmt.Errorf("build.sh succeeded but: %v", err)
		}
	}
	return g, string(out), nil
}
