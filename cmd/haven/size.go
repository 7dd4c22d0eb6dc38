package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are powers of 1024 whatever the spelling: "512M", "512MB" and
// "512MiB" are the same size, as they are for QEMU's -m and Docker's
// --memory. Reading "MB" as 10^6 would give a VM a few percent less memory
// than its owner meant, with nothing to show for it.
var sizeUnits = map[string]int64{
	"":  1,
	"b": 1,
	"k": 1 << 10, "kb": 1 << 10, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "ti": 1 << 40, "tib": 1 << 40,
}

// parseSize reads a size in bytes: a plain number is bytes, a suffix
// (K, M, G, T with optional "i" and "B", any case) is a power of 1024.
// Fractions are allowed with a unit ("1.5G") and rounded down to a byte.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("size %q: empty", s)
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, fmt.Errorf("size %q: must start with a number, e.g. 512M, 4GiB or 1073741824", s)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, K, M, G or T; all are powers of 1024)", s, t[i:])
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n > math.MaxInt64/mult {
			return 0, fmt.Errorf("size %q: too large", s)
		}
		return n * mult, nil
	}
	if mult == 1 {
		return 0, fmt.Errorf("size %q: a number of bytes must be whole", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %q is not a number", s, num)
	}
	b := f * float64(mult)
	// 2^63 is exactly representable; anything at or above it overflows.
	if b >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return int64(b), nil
}

// formatSize prints bytes the way people read them: 512MiB, 7.8GiB, 1TiB.
// One decimal is enough to tell hosts apart in a table; exact numbers are in
// the JSON output.
func formatSize(b int64) string {
	if b < 0 {
		return "-" + formatSize(-b)
	}
	if b < 1024 {
		return strconv.FormatInt(b, 10) + "B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(b) / 1024
	u := 0
	// Round first, then pick the unit, so 1023.96MiB prints as 1GiB and
	// not as 1024MiB.
	for u < len(units)-1 && math.Round(v*10)/10 >= 1024 {
		v /= 1024
		u++
	}
	s := strconv.FormatFloat(math.Round(v*10)/10, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + units[u]
}

// formatCPU prints milli-CPUs as whole CPUs when they are whole ("4") and
// in millis otherwise ("2500m"), as Kubernetes does, so that no rounding
// hides a difference.
func formatCPU(millis int64) string {
	if millis%1000 == 0 {
		return strconv.FormatInt(millis/1000, 10)
	}
	return strconv.FormatInt(millis, 10) + "m"
}

// parseCPU reads a CPU demand in milli-CPUs: a number of CPUs ("2",
// "0.5") or millis with an m suffix ("500m"), as Kubernetes writes them.
func parseCPU(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if m, ok := strings.CutSuffix(t, "m"); ok {
		n, err := strconv.ParseInt(m, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("cpu %q: millis must be a whole number, e.g. 500m", s)
		}
		return n, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("cpu %q: must be a number of CPUs (2, 0.5) or millis (500m)", s)
	}
	if f*1000 >= math.MaxInt64 {
		return 0, fmt.Errorf("cpu %q: too large", s)
	}
	return int64(math.Round(f * 1000)), nil
}
