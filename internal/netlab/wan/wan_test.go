//go:build linux

package wan

import (
	"testing"
	"time"
)

func TestParseKernelStats(t *testing.T) {
	// As nfnetlink_queue's seq_show prints them.
	in := "    1 2147483 42 2 64     3     4       99  1\n" +
		"65535  12345     0 2 64     0     0        7  1\n"
	got, err := parseKernelStats(in)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint16]kernelStats{1: {42, 3, 4}, 65535: {}}
	if len(got) != len(want) || got[1] != want[1] || got[65535] != want[65535] {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := parseKernelStats("1 2 3\n"); err == nil {
		t.Error("short line accepted")
	}
	if got, err := parseKernelStats(""); err != nil || len(got) != 0 {
		t.Errorf("empty: %v, %v", got, err)
	}
}

func TestDelayerStartFails(t *testing.T) {
	d, err := New(Config{NetNS: "/nonexistent/haven-netns", Links: []Link{{Queue: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context()); err == nil {
		t.Fatal("Start in a namespace that doesn't exist succeeded")
	}
	if err := d.Stop(); err == nil {
		t.Error("Stop after a failed Start reports no error")
	}
	select {
	case <-d.Done():
	default:
		t.Error("Done not closed after a failed Start")
	}
	if _, err := New(Config{Links: []Link{{Queue: 1, Delay: time.Millisecond, Jitter: 2 * time.Millisecond}}}); err == nil {
		t.Error("New accepted jitter above delay")
	}
}
