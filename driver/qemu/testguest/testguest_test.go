package testguest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestAppend(t *testing.T) {
	var g Guest
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{}, "console=ttyS0 quiet panic=-1"},
		{
			Options{MemMiB: 64, DirtyMiBPerSec: 20, TickMs: 10, WatchdogSec: 5, Sequential: true},
			"console=ttyS0 quiet panic=-1 haven.mem_mib=64 haven.dirty_mib_per_s=20 haven.tick_ms=10 haven.watchdog_s=5 haven.dirty_pattern=seq",
		},
	} {
		if got := g.Append(tc.o); got != tc.want {
			t.Errorf("Append(%+v) = %q; want %q", tc.o, got, tc.want)
		}
	}
}

func TestControlArgsEscapeCommas(t *testing.T) {
	got := strings.Join(ControlArgs("/tmp/a,b/ctl"), " ")
	want := "-chardev socket,id=havenctl,path=/tmp/a,,b/ctl,server=on,wait=off -device isa-serial,chardev=havenctl,index=1"
	if got != want {
		t.Errorf("got %q; want %q", got, want)
	}
}

func TestSerialReadsTheGuestsLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial")
	s := NewSerial(path)
	defer s.Close()
	poll := func() {
		t.Helper()
		if err := s.Poll(); err != nil {
			t.Fatal(err)
		}
	}
	poll() // QEMU has not created the file yet
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(data string) {
		t.Helper()
		if _, err := f.WriteString(data); err != nil {
			t.Fatal(err)
		}
	}

	// The console turns "\n" into "\r\n"; the kernel prints too.
	write("[    3.1] Run /init as init process\r\nhaven-ready mem_mib=32\r\nhaven-tick 1 0\r\nhaven-ti")
	poll()
	if s.Ticks() != 1 || s.Last().N != 1 {
		t.Fatalf("after a tick and half a line: %d ticks, last %+v", s.Ticks(), s.Last())
	}
	write("ck 2 3\r\nhaven-tick 3[    9.9] sd 0:0:0:1: Attached\r\nhaven-cmd hang\r\n")
	poll()
	if last := s.Last(); s.Ticks() != 2 || last.N != 2 || last.DirtiedMiB != 3 {
		t.Fatalf("want the line completed and the cut one skipped: %d ticks, last %+v", s.Ticks(), last)
	}
	if m, ok := s.LastMessage("haven-cmd"); !ok || m.Text != "haven-cmd hang" || m.AfterTick != 2 {
		t.Errorf("LastMessage(haven-cmd) = %+v, %v", m, ok)
	}
	if ms := s.Messages("haven-"); len(ms) != 2 || ms[0].Text != "haven-ready mem_mib=32" || ms[0].AfterTick != 0 {
		t.Errorf("Messages(haven-) = %+v", ms)
	}
	if err := s.Increasing(); err != nil {
		t.Error(err)
	}

	write("haven-tick 5 4\nhaven-tick 1 0\n")
	poll()
	if err := s.Increasing(); err == nil {
		t.Error("a counter back at 1: no error")
	}
	if s.First().N != 1 || s.Last().N != 1 || s.Ticks() != 4 {
		t.Errorf("first %+v, last %+v, %d ticks", s.First(), s.Last(), s.Ticks())
	}
}

// A second build with nothing changed does nothing (and is quick).
func TestBuildIsUpToDateTheSecondTime(t *testing.T) {
	g := Build(t)
	before, err := os.Stat(g.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(g.Initrd)
	out, err := exec.Command("bash", "build.sh", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "is up to date") {
		t.Errorf("build.sh built again:\n%s", out)
	}
	after, err := os.Stat(g.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("initrd.gz rewritten")
	}
}

// Where build.sh cannot build (here: no Go), Build skips rather than
// fails, unless CI forbids it.
func TestBuildIsUnavailableWithoutGo(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	t.Setenv("GO", "/nonexistent/go")
	t.Setenv(DirEnv, t.TempDir())
	if _, out, err := build(); !errors.Is(err, errUnavailable) {
		t.Errorf("build without Go: %v, want errUnavailable\n%s", err, out)
	}
}
