package supervise

import (
	"time"

	"golang.org/x/sys/unix"
)

// Lease ends cross the process boundary as CLOCK_MONOTONIC nanoseconds. Every
// process of the host reads the same CLOCK_MONOTONIC, and on Linux it is the
// clock behind Go's monotonic readings and timers, so a lease end means the
// same instant to the agent and to the supervisor. The wall clock is never
// used: a step of it (NTP, date) would lengthen or shorten leases (see
// "Clocks" in the driver package).

// MonoNow is the host's CLOCK_MONOTONIC in nanoseconds.
func MonoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// Only a bad clock id or address fails; neither can happen here.
		panic("clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return ts.Nano()
}

// MonoFromTime is t on CLOCK_MONOTONIC. t must carry a monotonic reading
// (come from time.Now()), or time.Until falls back to the wall clock. The
// clock is read before time.Until reads its own, so the result errs, by the
// nanoseconds between the two reads, on the early side: a lease it carries
// is never longer than the one given.
func MonoFromTime(t time.Time) int64 {
	now := MonoNow()
	return now + int64(time.Until(t))
}

// TimeFromMono is the inverse of MonoFromTime: a time.Time with a monotonic
// reading, comparable with time.Now(). It errs early too.
func TimeFromMono(m int64) time.Time {
	now := time.Now()
	return now.Add(time.Duration(m - MonoNow()))
}
