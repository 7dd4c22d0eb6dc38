//go:build linux && (amd64 || arm64)

package sim

import (
	"errors"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
)

// trackerOrSkip tracks m's writes, or skips where the kernel cannot.
func trackerOrSkip(t *testing.T, m *memory) *writeTracker {
	t.Helper()
	w, err := trackWrites(m.buf)
	if errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOTTY) {
		noTracking(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.close)
	return w
}

func writtenPages(t *testing.T, w *writeTracker) []int64 {
	t.Helper()
	var out []int64
	if err := w.written(func(first, end int64) {
		for i := first; i < end; i++ {
			out = append(out, i)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// The tracker reports each page written since the last look, once,
// whether it held data or was never touched, and nothing written before
// it began; more runs than one scan's buffer holds are all reported.
func TestWriteTracker(t *testing.T) {
	m, err := newMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.free()
	m.buf[5*PageSize] = 1 // before the tracking: not reported
	w := trackerOrSkip(t, m)
	if got := writtenPages(t, w); len(got) != 0 {
		t.Fatalf("nothing written yet, reported %v", got)
	}
	m.buf[5*PageSize+7] = 2  // a page that held data
	m.buf[9*PageSize] = 3    // one never touched
	m.buf[10*PageSize-1] = 4 // the last byte of page 9
	m.buf[len(m.buf)-1] = 5  // the last page
	_ = m.buf[20*PageSize]   // a read is no write
	want := []int64{5, 9, m.pages() - 1}
	if got := writtenPages(t, w); !slices.Equal(got, want) {
		t.Fatalf("written %v, want %v", got, want)
	}
	if got := writtenPages(t, w); len(got) != 0 {
		t.Fatalf("reported again: %v", got)
	}
	// Every other page of the first 2048: 1024 runs, twice the regions
	// one scan returns.
	want = want[:0]
	for i := int64(0); i < 2048; i += 2 {
		m.buf[i*PageSize+1] = 6
		want = append(want, i)
	}
	if got := writtenPages(t, w); !slices.Equal(got, want) {
		t.Fatalf("written %d pages (%v...), want the %d even ones below 2048", len(got), got[:min(len(got), 8)], len(want))
	}
}

// BenchmarkTrackingLift times lifting the write tracking of a 512 MiB
// guest with a third of its pages written, and the longest any other
// goroutine of the process waited meanwhile for a fresh 64 KiB (a page
// fault needs the memory map the lift holds): "mapped" lifts it from the
// mapped memory, as a move that ended did at once until the tracking was
// left to the guest's end; "unmapped" unmaps the memory first, as the
// kill after a commit now does. go test -run XXX -bench TrackingLift
// -benchtime 5x ./driver/sim/
func BenchmarkTrackingLift(b *testing.B) {
	for _, unmapFirst := range []bool{false, true} {
		name := "mapped"
		if unmapFirst {
			name = "unmapped"
		}
		b.Run(name, func(b *testing.B) {
			var lift, stall time.Duration
			for range b.N {
				b.StopTimer()
				m, err := newMemory(512 << 20)
				if err != nil {
					b.Fatal(err)
				}
				for i := int64(0); i < m.pages(); i += 3 {
					m.writePage(i)[0] = 1
				}
				w, err := trackWrites(m.buf)
				if err != nil {
					m.free()
					b.Skipf("no write tracking here: %v", err)
				}
				started, stop, worst := make(chan struct{}), make(chan struct{}), make(chan time.Duration)
				go allocLatency(started, stop, worst)
				<-started
				b.StartTimer()
				t0 := time.Now()
				if unmapFirst {
					m.free()
				}
				w.close()
				lift += time.Since(t0)
				b.StopTimer()
				time.Sleep(20 * time.Millisecond) // a stall that outlasts the lift counts too
				close(stop)
				stall += <-worst
				m.free()
			}
			b.ReportMetric(float64(lift.Milliseconds())/float64(b.N), "lift-ms/op")
			b.ReportMetric(float64(stall.Milliseconds())/float64(b.N), "stall-ms/op")
		})
	}
}

// allocLatency takes a fresh 64 KiB every millisecond until stop, and
// sends the longest step; started is closed after the first.
func allocLatency(started, stop chan struct{}, worst chan<- time.Duration) {
	var w time.Duration
	var keep [][]byte
	for first := true; ; first = false {
		select {
		case <-stop:
			worst <- w
			return
		default:
		}
		t0 := time.Now()
		keep = append(keep, make([]byte, 64<<10))
		if len(keep) > 256 {
			keep = nil
			runtime.GC()
		}
		time.Sleep(time.Millisecond)
		w = max(w, time.Since(t0)-time.Millisecond)
		if first {
			close(started)
		}
	}
}
