package main

import (
	"fmt"
	"strconv"
	"strings"
)

// params are what the kernel command line asks of the guest, as
// haven.<name>=<value> words (testguest.Options renders them).
type params struct {
	memMiB      int    // haven.mem_mib: memory to allocate and dirty
	dirtyMiBps  int    // haven.dirty_mib_per_s: pages written per second, in MiB
	tickMs      int    // haven.tick_ms: one tick line per tick_ms
	watchdogSec int    // haven.watchdog_s: the i6300esb timeout the guest sets
	pattern     string // haven.dirty_pattern: "random" or "seq"
}

func defaults() params {
	return params{memMiB: 64, tickMs: 100, watchdogSec: 10, pattern: "random"}
}

// parseCmdline reads the haven.* words of a kernel command line over the
// defaults. An unknown haven.* word is an error, so that a typo in a test
// fails at boot instead of silently testing the defaults.
func parseCmdline(cmdline string) (params, error) {
	p := defaults()
	for _, w := range strings.Fields(cmdline) {
		key, val, ok := strings.Cut(w, "=")
		name, isHaven := strings.CutPrefix(key, "haven.")
		if !isHaven {
			continue
		}
		if !ok {
			return p, fmt.Errorf("%s: no value", w)
		}
		if name == "dirty_pattern" {
			if val != "random" && val != "seq" {
				return p, fmt.Errorf("%s: want random or seq", w)
			}
			p.pattern = val
			continue
		}
		dst, least := p.intParam(name)
		if dst == nil {
			return p, fmt.Errorf("%s: unknown parameter", w)
		}
		n, err := strconv.Atoi(val)
		if err != nil || n < least {
			return p, fmt.Errorf("%s: want an integer of at least %d", w, least)
		}
		*dst = n
	}
	return p, nil
}

// intParam returns the field an integer parameter sets and its smallest
// allowed value, or nil for an unknown name.
func (p *params) intParam(name string) (*int, int) {
	switch name {
	case "mem_mib":
		return &p.memMiB, 1
	case "dirty_mib_per_s":
		return &p.dirtyMiBps, 0
	case "tick_ms":
		return &p.tickMs, 1
	case "watchdog_s":
		// The Linux i6300esb driver takes 1 to 2046 seconds.
		return &p.watchdogSec, 1
	}
	return nil, 0
}

func (p params) String() string {
	return fmt.Sprintf("mem_mib=%d dirty_mib_per_s=%d tick_ms=%d watchdog_s=%d dirty_pattern=%s",
		p.memMiB, p.dirtyMiBps, p.tickMs, p.watchdogSec, p.pattern)
}
