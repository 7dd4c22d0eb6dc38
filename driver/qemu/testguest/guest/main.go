//go:build linux

// Command haven-guest is the test guest's workload, started by the
// initramfs's /init (../init) once the kernel modules are loaded. It
// exists so that tests of the QEMU driver have a guest whose health they
// can see from outside: it prints a counter on the serial console (ttyS0),
// feeds the i6300esb watchdog, dirties memory at a set rate for live
// migrations to chase, and takes commands on a second serial port (ttyS1)
// or on the console that make it misbehave on demand.
//
// Everything it prints is one line starting with "haven-":
//
//	haven-ready <params>            once, when the memory is filled
//	haven-tick <n> <dirtied_mib>    every tick_ms; n is 1, 2, 3, ...
//	haven-disks <name>...           at start and whenever /sys/block changes
//	haven-cmd <command>             a command was carried out
//	haven-note <text>               something missing that tests may not need
//	haven-error <text>              a command or the setup failed
//	haven-exit <status>             (from /init) this program ended; the
//	                                guest powers off
//
// The commands, one per line on ttyS1 or the console (ttyS0):
//
//	hang                 stop ticking, feeding the watchdog, dirtying,
//	                     watching disks and reading commands, as a hung
//	                     guest would; no tick follows "haven-cmd hang"
//	dirty <mib_per_s>    dirty memory at this rate from now on
package main

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fatal(err)
	}
	p, err := parseCmdline(string(cmdline))
	if err != nil {
		fatal(err)
	}
	buf, err := syscall.Mmap(-1, 0, p.memMiB<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		fatal(fmt.Errorf("allocate %d MiB: %v", p.memMiB, err))
	}
	g := &guest{out: os.Stdout, stop: make(chan struct{})}
	g.mem = newMemory(buf, p.pattern == "random", p.dirtyMiBps)

	wd, timeout, err := openWatchdog(p.watchdogSec)
	switch {
	case wd == nil:
		g.printf("haven-note no watchdog: %v", err)
	case err != nil:
		// Running, with a timeout not asked for: fed all the same.
		g.printf("haven-error watchdog: %v", err)
	}
	p.watchdogSec = timeout // what haven-ready reports: 0 without a watchdog
	// Commands come on the console too: the haven qemu driver gives a
	// VM one serial port, its console, as a socket.
	var ctls []*os.File
	for _, tty := range []string{"/dev/ttyS1", "/dev/ttyS0"} {
		ctl, err := openControl(tty)
		if err != nil {
			g.printf("haven-note no control on %s: %v", tty, err)
			continue
		}
		ctls = append(ctls, ctl)
	}

	g.printf("haven-ready %v", p)
	go g.mem.run(g.stop)
	go g.watchDisks()
	go g.tick(time.Duration(p.tickMs)*time.Millisecond, wd)
	for _, ctl := range ctls {
		go g.serve(ctl)
	}
	select {} // PID 1's child: exiting would power the guest off
}

// guest is the running workload.
type guest struct {
	mem *memory

	// mu orders the lines on the console and makes hang atomic with the
	// output: once "haven-cmd hang" is printed no tick line follows.
	mu   sync.Mutex
	out  *os.File
	hung bool
	stop chan struct{} // closed by hang: stops the dirtier and disk watcher
}

// printf writes one line in a single write, so that it reaches the serial
// log whole.
func (g *guest) printf(format string, args ...any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.printLocked(format, args...)
}

func (g *guest) printLocked(format string, args ...any) {
	fmt.Fprintf(g.out, format+"\n", args...)
}

// tick prints the counter and feeds the watchdog, both from one loop: a
// guest too stuck to tick is too stuck to feed, as on a real hang.
func (g *guest) tick(every time.Duration, wd *os.File) {
	t := time.NewTicker(every)
	defer t.Stop()
	for n := uint64(1); ; n++ {
		<-t.C
		g.mu.Lock()
		if g.hung {
			g.mu.Unlock()
			return
		}
		g.printLocked("haven-tick %d %d", n, g.mem.dirtiedMiB())
		if wd != nil {
			if err := unix.IoctlWatchdogKeepalive(int(wd.Fd())); err != nil {
				g.printLocked("haven-error feed watchdog: %v", err)
			}
		}
		g.mu.Unlock()
	}
}

// serve carries out the commands read from the control serial port.
func (g *guest) serve(ctl *os.File) {
	sc := bufio.NewScanner(ctl)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		g.mu.Lock()
		hung := g.hung
		g.mu.Unlock()
		switch {
		case hung || len(f) == 0:
			// A hung guest takes no more commands. It still reads them,
			// which keeps a goroutine in a system call: with all of them
			// blocked, Go would end the program as deadlocked.
		case f[0] == "hang" && len(f) == 1:
			g.mu.Lock()
			if !g.hung { // the other control port may have hung it
				g.hung = true
				close(g.stop)
				g.printLocked("haven-cmd hang")
			}
			g.mu.Unlock()
		case f[0] == "dirty" && len(f) == 2:
			rate, err := strconv.Atoi(f[1])
			if err != nil || rate < 0 {
				g.printf("haven-error dirty %q: want MiB per second", f[1])
				continue
			}
			g.mem.rate.Store(int64(rate))
			g.printf("haven-cmd dirty %d", rate)
		default:
			g.printf("haven-error unknown command %q", sc.Text())
		}
	}
	g.printf("haven-error control serial: %v", sc.Err())
}

// watchDisks reports the block devices whenever they change, so that a
// test sees a hot-added or removed disk arrive in the guest.
func (g *guest) watchDisks() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var last []string
	for first := true; ; first = false {
		disks, err := blockDevices()
		if err != nil {
			g.printf("haven-error list disks: %v", err)
			return
		}
		if first || !slices.Equal(disks, last) {
			g.printf("haven-disks %s", strings.Join(disks, " "))
			last = disks
		}
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
	}
}

// blockDevices lists /sys/block (sorted) without the loop and ram devices
// the kernel makes on its own.
func blockDevices() ([]string, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); !strings.HasPrefix(n, "loop") && !strings.HasPrefix(n, "ram") {
			out = append(out, n)
		}
	}
	return out, nil
}

// openWatchdog opens /dev/watchdog, which starts the watchdog, sets its
// timeout and returns the timeout the driver took. The file is never
// closed: closing it would let the driver stop the watchdog.
func openWatchdog(timeoutSec int) (*os.File, int, error) {
	wd, err := os.OpenFile("/dev/watchdog", os.O_WRONLY, 0)
	if err != nil {
		return nil, 0, err
	}
	fd := int(wd.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.WDIOC_SETTIMEOUT, timeoutSec); err != nil {
		return wd, 0, fmt.Errorf("set timeout %d s: %v", timeoutSec, err)
	}
	got, err := unix.IoctlGetInt(fd, unix.WDIOC_GETTIMEOUT)
	if err != nil {
		return wd, 0, fmt.Errorf("get timeout: %v", err)
	}
	return wd, got, nil
}

// openControl opens the control serial port without echo: the commands
// come from a program, and an echo would only fill its socket.
func openControl(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		f.Close()
		return nil, err
	}
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ECHOE | unix.ECHOK | unix.ECHOCTL | unix.ECHOKE
	if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, tio); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// fatal reports why the guest cannot run; /init then powers it off, which
// a test sees as QEMU exiting.
func fatal(err error) {
	fmt.Printf("haven-error %v\n", err)
	os.Exit(1)
}
