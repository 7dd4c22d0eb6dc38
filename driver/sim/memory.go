package sim

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"syscall"
)

// PageSize is the guest page: the unit the guest dirties and a live
// migration would track and copy.
const PageSize = 4096

// memory is a guest's RAM: an anonymous private mapping of size bytes,
// outside the Go heap, as a real hypervisor's guest RAM is outside its
// own. The kernel commits a page on first write, so hundreds of VMs of
// tens of MiB each cost only the working sets they touch; and because the
// buffers are not Go heap, they do not inflate the GC's heap goal, which
// would otherwise let the agent's garbage grow to the size of all guest
// RAM before a collection. Not safe for concurrent use: the VM's mutex
// guards it, also against free, except where a migration owns it (see
// vm.pin).
type memory struct {
	buf []byte
	// dirty is the dirty log while a migration runs, else nil; see
	// dirtylog.go. Every guest write goes through writePage or
	// putUint64At, which mark it.
	dirty bitmap
	// untrack lifts the write tracking that a migration which ended
	// ready left on (see MigrateOut), nil if none did; the VM's mu
	// guards the field, and the func runs once, however often called.
	untrack func()
}

func newMemory(size int64) (*memory, error) {
	if size <= 0 || size != int64(int(size)) {
		return nil, fmt.Errorf("memory of %d bytes cannot be mapped", size)
	}
	// MAP_NORESERVE: the sum of all guests' sizes may exceed RAM plus swap,
	// as a hypervisor overcommits; only touched pages need backing.
	buf, err := syscall.Mmap(-1, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mapping %d bytes of guest memory: %w", size, err)
	}
	noHugePages(buf)
	return &memory{buf: buf}, nil
}

// free unmaps the memory at once (a stopped VM holds no RAM). Any later
// use panics rather than touching unmapped memory.
func (m *memory) free() {
	if m.buf != nil {
		_ = syscall.Munmap(m.buf)
		m.buf = nil
	}
	// Unmapped first, the tracking has no protection left to lift.
	if m.untrack != nil {
		m.untrack()
		m.untrack = nil
	}
}

func (m *memory) size() int64 { return int64(len(m.buf)) }

// pages is the number of guest pages (the last one may be partial).
func (m *memory) pages() int64 { return (m.size() + PageSize - 1) / PageSize }

// page returns guest page i, to read.
func (m *memory) page(i int64) []byte {
	return m.buf[i*PageSize : min((i+1)*PageSize, m.size())]
}

// writePage returns guest page i for the guest to write, marking it in
// the dirty log.
func (m *memory) writePage(i int64) []byte {
	m.markDirty(i)
	return m.page(i)
}

// uint64At reads the little-endian word at byte offset off.
func (m *memory) uint64At(off int64) uint64 { return binary.LittleEndian.Uint64(m.buf[off:]) }

// putUint64At writes the word at off, which must not cross a page.
func (m *memory) putUint64At(off int64, v uint64) {
	m.markDirty(off / PageSize)
	binary.LittleEndian.PutUint64(m.buf[off:], v)
}

// lineSize is how much of a dirtied page the guest writes: one cache
// line. A page is dirty (for the kernel, for a hypervisor's dirty log, for
// a live migration) whatever number of its bytes changed, so the dirty
// rate is counted in whole pages, as QEMU's dirty-rate measurement counts
// it, while the memory bandwidth spent stays a sixty-fourth of writing
// every byte (which cost ~15 % of a core for 300 VMs at 1 MiB/s).
const lineSize = 64

// pattern is the source of the bytes the guest writes: copying a slice of
// it at a random offset is cheaper than generating them, and still makes
// every write different.
var pattern = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, PageSize)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}()

// dirtier dirties pages at random within the first workingSet bytes of a
// guest's memory: rate/PageSize pages per second.
type dirtier struct {
	// src is rng's state, kept to move it with a migration: the guest on
	// the target goes on with the same choices it would have made here.
	src     *rand.PCG
	rng     *rand.Rand
	wsPages int64
	// Bytes to dirty per tick, rate*tick exactly: whole bytes plus
	// billionths, so that slow rates are not rounded away.
	perTick, perTickNano uint64
	// What is left below one page, carried to the next tick.
	carry, carryNano uint64
}

func newDirtier(seed uint64, m *memory, rate, workingSet int64, tickNanos int64) *dirtier {
	ws := min(max(workingSet, 0), m.size())
	src := rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)
	d := &dirtier{src: src, rng: rand.New(src), wsPages: (ws + PageSize - 1) / PageSize}
	// rate*tick/1e9 in 128 bits: no overflow for any int64 rate and tick
	// (Div64 needs hi < 1e9, i.e. rate*tick < 1.8e28).
	hi, lo := bits.Mul64(uint64(max(rate, 0)), uint64(max(tickNanos, 0)))
	d.perTick, d.perTickNano = bits.Div64(hi, lo, 1e9)
	return d
}

// tick dirties one tick's worth of pages and returns how many. Each page
// gets a stamp (counter and page number) in its first word, which makes
// every write unique, and a cache line of pattern at a random line. A rate
// above one working set per tick is capped there: more would only rewrite
// pages already dirtied in this tick.
func (d *dirtier) tick(m *memory, counter uint64) int {
	if d.wsPages == 0 {
		return 0
	}
	d.carry += d.perTick
	if d.carryNano += d.perTickNano; d.carryNano >= 1e9 {
		d.carry++
		d.carryNano -= 1e9
	}
	n := min(d.carry/PageSize, uint64(d.wsPages))
	d.carry %= PageSize
	for range n {
		i := d.rng.Int64N(d.wsPages)
		p := m.writePage(i)
		line := d.rng.IntN(PageSize/lineSize) * lineSize
		if line < len(p) {
			copy(p[line:], pattern[d.rng.IntN(PageSize-lineSize):][:lineSize])
		}
		if len(p) >= 8 {
			binary.LittleEndian.PutUint64(p, counter<<20^uint64(i))
		}
	}
	return int(n)
}
