//go:build linux

package testguest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vm is one QEMU running the test guest, killed by t.Cleanup.
type vm struct {
	t       *testing.T
	dir     string
	ctl     string // the control socket, for Send
	serial  *Serial
	qmp     *qmp
	exited  chan struct{} // closed when QEMU has exited
	waitErr error         // how it exited, set before exited is closed
}

// bootRAM is the guest's RAM: room for the kernel, the initramfs and the
// default Options.MemMiB (64), 192 MiB, and 8 KiB more, as the driver
// pads a TCG guest (tcgRAMPad in ../cmdline.go): on QEMU 7.2 a RAM size
// on the 256 KiB grid loses pages the guest writes during a live
// migration. Without the pad TestCounterCarriesOnAcrossMigration's
// target oopsed in 11 runs of 20 with the host's two cores busy.
const bootRAM = "196616K"

// boot starts QEMU with the guest on the driver's command line (q35, TCG,
// diskless) plus the watchdog, whose firing powers QEMU off, the control
// port and extra.
func boot(t *testing.T, o Options, extra ...string) *vm {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		Unavailable(t, "no qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	g := Build(t)
	// Not t.TempDir: a unix socket's path must fit in 108 bytes, and
	// t.TempDir's holds the test's name.
	dir, err := os.MkdirTemp("", "haven-testguest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	v := &vm{
		t:      t,
		dir:    dir,
		ctl:    filepath.Join(dir, "ctl"),
		serial: NewSerial(filepath.Join(dir, "serial")),
		exited: make(chan struct{}),
	}
	qmpPath := filepath.Join(dir, "qmp")
	args := []string{
		"-name", "testguest", "-machine", "pc-q35-7.2", "-accel", "tcg,tb-size=32",
		"-cpu", "qemu64", "-m", bootRAM, "-smp", "1", "-nodefaults", "-display", "none",
		"-no-reboot",
		"-serial", "file:" + v.serial.Path(),
		"-qmp", "unix:" + qmpPath + ",server=on,wait=off",
		"-device", "virtio-scsi-pci,id=scsi0",
		"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x10",
		"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
		"-device", "i6300esb", "-action", "watchdog=poweroff",
	}
	args = append(args, g.Args(o)...)
	args = append(args, ControlArgs(v.ctl)...)
	args = append(args, extra...)
	cmd := exec.Command(qemu, args...)
	stderr, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// Should the test binary die without running its cleanups (a
	// timeout), QEMU dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		v.waitErr = cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-v.exited
		v.serial.Close()
		if t.Failed() {
			v.dump()
		}
	})
	t.Logf("qemu %s", strings.Join(args, " "))
	v.qmp, err = dialQMP(qmpPath, v.exited)
	if err != nil {
		t.Fatalf("qmp: %v", err)
	}
	t.Cleanup(func() { v.qmp.conn.Close() })
	return v
}

// wait polls the serial log until cond holds, failing the test if QEMU
// exits first.
func (v *vm) wait(timeout time.Duration, what string, cond func(*Serial) bool) {
	v.t.Helper()
	v.serial.Wait(v.t, timeout, what, func(s *Serial) bool {
		select {
		case <-v.exited:
			v.t.Fatalf("QEMU exited (%v) while waiting for %s", v.waitErr, what)
		default:
		}
		return cond(s)
	})
}

// waitTicks waits for n more ticks than the last one read.
func (v *vm) waitTicks(timeout time.Duration, n uint64) Tick {
	v.t.Helper()
	from := v.serial.Last().N
	v.wait(timeout, fmt.Sprintf("%d ticks after tick %d", n, from), func(s *Serial) bool { return s.Last().N >= from+n })
	return v.serial.Last()
}

// waitMessage waits for a message that starts with prefix.
func (v *vm) waitMessage(timeout time.Duration, prefix string) Message {
	v.t.Helper()
	v.wait(timeout, "a message "+prefix, func(s *Serial) bool {
		_, ok := s.LastMessage(prefix)
		return ok
	})
	m, _ := v.serial.LastMessage(prefix)
	return m
}

func (v *vm) send(command string) {
	v.t.Helper()
	if err := Send(v.ctl, command); err != nil {
		v.t.Fatalf("send %q: %v", command, err)
	}
}

// crashMarks begin the report of a crash on the guest's console: the
// kernel's oops ("BUG: kernel NULL pointer dereference", "Oops: ...") and
// the Go runtime's ("fatal error: ...", "panic: ...").
var crashMarks = []string{"BUG: ", "Oops: ", "fatal error: ", "panic: "}

// dump logs the end of the serial log and QEMU's output.
func (v *vm) dump() {
	for _, name := range []string{"serial", "qemu.log"} {
		b, err := os.ReadFile(filepath.Join(v.dir, name))
		if err != nil {
			v.t.Logf("%s: %v", name, err)
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		// A crash in the guest, of its kernel (an oops) or of the Go
		// program (a goroutine dump), puts its reason first and a long
		// trace after it: the reason is what the end would hide.
		for i, l := range lines {
			if slices.ContainsFunc(crashMarks, func(m string) bool { return strings.Contains(l, m) }) {
				v.t.Logf("crash in %s:\n%s", name, strings.Join(lines[max(0, i-5):min(len(lines), i+25)], "\n"))
				break
			}
		}
		v.t.Logf("last lines of %s:\n%s", name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

// qmp is just enough of a QMP client for these tests: commands one at a
// time, and the events read meanwhile kept for later.
type qmp struct {
	conn   net.Conn
	dec    *json.Decoder
	events []qmpMessage
}

type qmpMessage struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// dialQMP connects once QEMU has created the socket (about 50 ms after
// it starts), reads the greeting and leaves capabilities negotiation.
func dialQMP(path string, exited <-chan struct{}) (*qmp, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			q := &qmp{conn: c, dec: json.NewDecoder(bufio.NewReader(c))}
			var greeting json.RawMessage
			if err := q.read(&greeting, deadline); err != nil {
				c.Close()
				return nil, fmt.Errorf("greeting: %v", err)
			}
			if _, err := q.execute("qmp_capabilities", nil); err != nil {
				c.Close()
				return nil, err
			}
			return q, nil
		}
		select {
		case <-exited:
			return nil, errors.New("QEMU exited")
		default:
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (q *qmp) read(v any, deadline time.Time) error {
	q.conn.SetReadDeadline(deadline)
	return q.dec.Decode(v)
}

func (q *qmp) execute(command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := q.conn.Write(b); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var m qmpMessage
		if err := q.read(&m, deadline); err != nil {
			return nil, fmt.Errorf("%s: %v", command, err)
		}
		switch {
		case m.Event != "":
			q.events = append(q.events, m)
		case m.Error != nil:
			return nil, fmt.Errorf("%s: %s: %s", command, m.Error.Class, m.Error.Desc)
		default:
			return m.Return, nil
		}
	}
}

// event returns the first event named name, read before or within
// timeout; QEMU's exit ends the wait with an error.
func (q *qmp) event(name string, timeout time.Duration) (qmpMessage, error) {
	deadline := time.Now().Add(timeout)
	for seen := 0; ; {
		for ; seen < len(q.events); seen++ {
			if q.events[seen].Event == name {
				return q.events[seen], nil
			}
		}
		var m qmpMessage
		if err := q.read(&m, deadline); err != nil {
			return qmpMessage{}, fmt.Errorf("no %s event: %v", name, err)
		}
		if m.Event != "" {
			q.events = append(q.events, m)
		}
	}
}
