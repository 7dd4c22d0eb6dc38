package sim

import (
	"encoding/binary"
	"fmt"

	"github.com/haven-ha/haven/driver"
)

// fillSlice is how many pages FillMemory writes per hold of the VM's
// mutex: 64 MiB, a few tens of milliseconds, so the guest's ticks go on
// between slices.
const fillSlice = 64 << 20 / PageSize

// FillMemory writes data over every page of a running VM's memory, but
// the guest's counter, as a guest that has used all of its RAM would
// have. A page the guest never wrote is zeros, which a move sends as a
// marker only (or not at all), so a fresh VM of 1 GiB moves in a few
// megabytes; filled, every byte of it travels. For benchmarks of moves.
// Each page gets pattern with its page number, so no two are alike; the
// writes go through the dirty log like the guest's. It returns the bytes
// written, and refuses a VM that is not running (ErrInvalidState): a
// frozen or paused guest writes nothing.
func (d *Driver) FillMemory(id driver.VMID) (int64, error) {
	v := d.lookup(id)
	if v == nil {
		return 0, fmt.Errorf("fill %s: %w", id, driver.ErrNotFound)
	}
	var i, pages int64
	for {
		v.mu.Lock()
		if !v.gate() {
			st := v.state
			v.mu.Unlock()
			return 0, fmt.Errorf("fill %s: %w: it is %s", id, driver.ErrInvalidState, st)
		}
		pages = v.mem.pages()
		for end := min(i+fillSlice, pages); i < end; i++ {
			p := v.mem.writePage(i)
			copy(p, pattern)
			if len(p) >= 16 {
				binary.LittleEndian.PutUint64(p[8:], uint64(i))
			}
		}
		// The counter lives in the first word of page 0.
		v.mem.putUint64At(0, v.counter)
		v.mu.Unlock()
		if i >= pages {
			return v.spec.MemoryBytes, nil
		}
	}
}
