package sim

import "math/bits"

// bitmap holds one bit per guest page.
type bitmap []uint64

func newBitmap(pages int64) bitmap { return make(bitmap, (pages+63)/64) }

func (b bitmap) set(i int64)      { b[i>>6] |= 1 << (uint64(i) & 63) }
func (b bitmap) unset(i int64)    { b[i>>6] &^= 1 << (uint64(i) & 63) }
func (b bitmap) has(i int64) bool { return b[i>>6]&(1<<(uint64(i)&63)) != 0 }

// setAll sets the bits of pages 0..pages-1 and no others, so next never
// returns a page beyond the memory.
func (b bitmap) setAll(pages int64) {
	for i := range b {
		b[i] = ^uint64(0)
	}
	if r := pages & 63; r != 0 {
		b[len(b)-1] = 1<<r - 1
	}
}

func (b bitmap) count() int64 {
	var n int
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return int64(n)
}

// or adds the pages of o to b.
func (b bitmap) or(o bitmap) {
	for i, w := range o {
		b[i] |= w
	}
}

// next returns the first set page at or after i, or -1.
func (b bitmap) next(i int64) int64 {
	w := i >> 6
	if w >= int64(len(b)) {
		return -1
	}
	if rest := b[w] >> (uint64(i) & 63); rest != 0 {
		return i + int64(bits.TrailingZeros64(rest))
	}
	for w++; w < int64(len(b)); w++ {
		if b[w] != 0 {
			return w<<6 + int64(bits.TrailingZeros64(b[w]))
		}
	}
	return -1
}

// The dirty log, as KVM's: while a migration of the VM runs, every guest
// write sets its page's bit, and the migration takes the bits round by
// round to learn what it must send again. All of it runs under the VM's
// mutex, like every guest write, so the bits need no atomics; without a
// migration the log is nil and a write pays one nil check.

// logDirty starts the log. It marks nothing: the first round sends every
// page anyway, and what the guest writes from now on is marked.
func (m *memory) logDirty() { m.dirty = newBitmap(m.pages()) }

func (m *memory) stopDirtyLog() { m.dirty = nil }

// takeDirty returns the pages written since the log started or since the
// last call, and logs on into spare, which must be clear. Swapping instead
// of copying keeps the guest's lock held for a pointer move.
func (m *memory) takeDirty(spare bitmap) bitmap {
	d := m.dirty
	m.dirty = spare
	return d
}

func (m *memory) markDirty(i int64) {
	if m.dirty != nil {
		m.dirty.set(i)
	}
}
