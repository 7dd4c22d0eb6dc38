package main

import "testing"

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    params
		err     bool
	}{
		{cmdline: "console=ttyS0 quiet", want: defaults()},
		{
			cmdline: "console=ttyS0 haven.mem_mib=32 haven.dirty_mib_per_s=20 haven.tick_ms=10 haven.watchdog_s=3 haven.dirty_pattern=seq panic=-1\n",
			want:    params{memMiB: 32, dirtyMiBps: 20, tickMs: 10, watchdogSec: 3, pattern: "seq"},
		},
		{cmdline: "haven.dirty_mib_per_s=0", want: defaults()},
		{cmdline: "haven.mem_mb=32", err: true},
		{cmdline: "haven.mem_mib", err: true},
		{cmdline: "haven.mem_mib=0", err: true},
		{cmdline: "haven.tick_ms=ten", err: true},
		{cmdline: "haven.dirty_mib_per_s=-1", err: true},
		{cmdline: "haven.dirty_pattern=stride", err: true},
	} {
		got, err := parseCmdline(tc.cmdline)
		if tc.err {
			if err == nil {
				t.Errorf("%q: no error", tc.cmdline)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %+v, %v; want %+v", tc.cmdline, got, err, tc.want)
		}
	}
}
