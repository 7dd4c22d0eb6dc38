package sim

import (
	"encoding/binary"
	"runtime"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// The checksum of a guest's memory is xxhash64 of the little-endian
// xxhash64 of each page, in page order. A migration compares the source's
// at the freeze with the target's, both computed from memory itself, not
// from what went over the wire: the comparison exists to catch a page the
// dirty log missed.
//
// Two levels, because the target may then keep one sum per page, update
// it as it writes the page and, at the end, hash only the sums (8 bytes a
// page); it is its memory's only writer until Activate, so a kept sum is
// never stale. The source cannot keep sums honestly (knowing which pages
// changed is the dirty log's job, the very thing under test), so it hashes
// all of its memory once paused, on every core, while it sends the last
// pages. Measured on a shared 2-core AMD EPYC (BenchmarkChecksum, 1 GiB
// that holds data): 85-120 ms when the host is quiet (12-13 GB/s on two
// cores, ~6.5 GB/s on one), up to ~200 ms when its memory bandwidth is
// contended and one core hashes as fast as two. FNV-1a, used before, took
// 1.6 s; xxh3 was ~20 % faster on one core and no faster on two, not
// worth another module; page-sized pieces cost no more than 64 KiB ones.
// Reading every byte is the floor of a large VM's pause, which no
// pre-copy round can shorten.

// zeroPage is a page of zeros, to compare and hash against.
var zeroPage [PageSize]byte

// zeroSum is the sum of a zero page; zeroSumOf that of a shorter one.
var zeroSum = xxhash.Sum64(zeroPage[:])

func zeroSumOf(n int) uint64 {
	if n == PageSize {
		return zeroSum
	}
	return xxhash.Sum64(zeroPage[:n])
}

func pageSum(p []byte) uint64 { return xxhash.Sum64(p) }

// sumOfSums is the checksum of a memory whose page sums are sums.
func sumOfSums(sums []uint64) uint64 {
	d := xxhash.New()
	var buf [8 << 10]byte
	for len(sums) > 0 {
		n := min(len(sums), len(buf)/8)
		for i, s := range sums[:n] {
			binary.LittleEndian.PutUint64(buf[8*i:], s)
		}
		_, _ = d.Write(buf[:8*n])
		sums = sums[n:]
	}
	return d.Sum64()
}

// pageSums fills sums (one per page) on every core.
func (m *memory) pageSums(sums []uint64) {
	workers := int64(runtime.GOMAXPROCS(0))
	n := m.pages()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w * n / workers; i < (w+1)*n/workers; i++ {
				sums[i] = pageSum(m.page(i))
			}
		})
	}
	wg.Wait()
}

// checksum hashes the whole memory; see above.
func (m *memory) checksum() uint64 {
	sums := make([]uint64, m.pages())
	m.pageSums(sums)
	return sumOfSums(sums)
}
