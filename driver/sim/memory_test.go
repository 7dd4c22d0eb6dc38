package sim

import (
	"bytes"
	"testing"
	"time"
)

func newTestMemory(t *testing.T, size int64) *memory {
	t.Helper()
	m, err := newMemory(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.free)
	return m
}

func TestMemoryReadWrite(t *testing.T) {
	m := newTestMemory(t, 8<<20)
	zero := m.checksum()
	m.putUint64At(8, 42)
	if got := m.uint64At(8); got != 42 {
		t.Errorf("read back %d, want 42", got)
	}
	if m.checksum() == zero {
		t.Error("checksum did not see the write")
	}
	if got := m.uint64At(4 << 20); got != 0 {
		t.Errorf("untouched memory reads %d, want 0", got)
	}
	m.free()
	m.free() // idempotent
}

// A size that is not a multiple of a page is honoured exactly.
func TestMemoryOddSize(t *testing.T) {
	m := newTestMemory(t, 2*PageSize+100)
	if m.pages() != 3 {
		t.Errorf("pages %d, want 3", m.pages())
	}
	if p := m.page(2); len(p) != 100 {
		t.Errorf("last page %d bytes, want 100", len(p))
	}
}

// Guest memory may be far larger than RAM: it is mapped, not committed.
func TestMemoryHugeIsLazy(t *testing.T) {
	m := newTestMemory(t, 1<<40) // 1 TiB
	m.putUint64At(1<<39, 7)
	if got := m.uint64At(1 << 39); got != 7 {
		t.Errorf("read back %d, want 7", got)
	}
}

// The dirtier writes rate bytes' worth of pages per second, inside the
// working set and nowhere else.
func TestDirtierRateAndWorkingSet(t *testing.T) {
	const (
		rate = 1 << 20
		ws   = 1 << 20
		tick = 100 * time.Millisecond
	)
	m := newTestMemory(t, 16<<20)
	d := newDirtier(7, m, rate, ws, int64(tick))
	pages := 0
	for c := range uint64(10) { // one second
		pages += d.tick(m, c)
	}
	if want := rate / PageSize; pages < want-1 || pages > want {
		t.Errorf("%d pages in one second, want %d", pages, want)
	}
	if bytes.Equal(m.buf[:ws], make([]byte, ws)) {
		t.Error("working set untouched")
	}
	if !bytes.Equal(m.buf[ws:], make([]byte, len(m.buf)-ws)) {
		t.Error("dirtier wrote beyond the working set")
	}
	// Slow rates carry the remainder instead of rounding to nothing.
	slow := newDirtier(7, m, PageSize, ws, int64(tick)) // one page a second
	pages = 0
	for c := range uint64(20) {
		pages += slow.tick(m, c)
	}
	if pages != 2 {
		t.Errorf("slow dirtier: %d pages in two seconds, want 2", pages)
	}
}
