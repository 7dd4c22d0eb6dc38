package main

import (
	"encoding/binary"
	"testing"
)

// word is what page p holds.
func word(m *memory, p int) uint64 {
	return binary.LittleEndian.Uint64(m.buf[p*pageSize:])
}

func TestMemoryWritesEveryPageOncePerPass(t *testing.T) {
	for _, random := range []bool{false, true} {
		const pages = 64
		m := newMemory(make([]byte, pages*pageSize), random, 0)
		for p := range pages {
			if w := word(m, p); w != 1<<32|uint64(p) {
				t.Fatalf("random=%v: after the fill page %d holds %#x", random, p, w)
			}
		}
		for pass := uint64(2); pass <= 4; pass++ {
			// A pass in uneven pieces, as the dirtier's steps give it.
			for _, n := range []int{1, 30, 33} {
				m.write(n)
			}
			for p := range pages {
				if w := word(m, p); w != pass<<32|uint64(p) {
					t.Fatalf("random=%v: after pass %d page %d holds %#x", random, pass, p, w)
				}
			}
		}
	}
}

func TestMemoryRandomPassesChangeOrder(t *testing.T) {
	m := newMemory(make([]byte, 64*pageSize), true, 0)
	m.write(1) // starts pass 1, shuffled
	first := append([]uint32(nil), m.order...)
	m.write(64) // ends pass 1, starts pass 2, shuffled again
	same := true
	for i := range first {
		same = same && first[i] == m.order[i]
	}
	if same {
		t.Errorf("two passes took the pages in the same order %v", first)
	}
}
