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
// Two levels, because each end may then keep one sum per page and, at
// the end, hash only the sums (8 bytes a page). The target updates a
// page's sum as it writes the page; it is its memory's only writer until
// Activate, so a kept sum is never stale. The source's guest writes while
// the pre-copy runs, and which pages it wrote is the dirty log's to know,
// the very thing under test: the source's sums (sourceSums) follow the
// kernel's record of writes instead (writes_linux.go), so the pause hashes
// only the pages written since the last round. Without that record (not
// Linux 6.7 or later, or userfaultfd refused), it hashes all of its memory
// once paused, on every core, while it sends the last pages. Measured on
// a shared 2-core AMD EPYC (BenchmarkChecksum, 1 GiB that holds data):
// 85-120 ms when the host is quiet (12-13 GB/s on two cores, ~6.5 GB/s on
// one), up to ~200 ms when its memory bandwidth is contended and one core
// hashes as fast as two: a floor of the pause that no pre-copy round
// shortens. FNV-1a, used before, took 1.6 s; xxh3 was ~20 % faster on
// one core and no faster on two, not worth another module; page-sized
// pieces cost no more than 64 KiB ones.

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

// sourceSums is the checksum of a memory whose guest runs while a
// migration's pre-copy reads it. With a writeTracker, sums[i] is the sum
// of page i as read after the tracking began, and every write since that
// read is in the tracker: the first round notes every page as it sends
// it, refresh rehashes what the tracker reports, and once the guest is
// paused a last refresh makes every sum current. A page the dirty log
// missed is still rehashed, so the target's copy of it will not match.
type sourceSums struct {
	m    *memory
	t    *writeTracker // nil: hash all of the memory in the pause
	sums []uint64
	runs [][2]int64
}

// trackGuestWrites is trackWrites; tests take it away.
var trackGuestWrites = trackWrites

// newSourceSums starts tracking m's writes; err says why it cannot, and
// the pause then hashes everything.
func newSourceSums(m *memory) (*sourceSums, error) {
	s := &sourceSums{m: m}
	t, err := trackGuestWrites(m.buf)
	if err != nil {
		return s, err
	}
	s.t, s.sums = t, make([]uint64, m.pages())
	return s, nil
}

// kept reports whether the sums are kept; otherwise refresh does nothing
// and note must not be called.
func (s *sourceSums) kept() bool { return s.t != nil }

// note records page i as read now, known to be zero or not, while the
// sums are kept; the caller holds the guest's lock.
func (s *sourceSums) note(i int64, p []byte, zero bool) {
	if zero {
		s.sums[i] = zeroSumOf(len(p))
	} else {
		s.sums[i] = pageSum(p)
	}
}

// refresh rehashes the pages written since the last refresh, reading them
// in batches inside locked (see pageSender.send). On an error the sums
// are dropped and the pause hashes everything.
func (s *sourceSums) refresh(locked func(func()) error) error {
	if s.t == nil {
		return nil
	}
	s.runs = s.runs[:0]
	if err := s.t.written(func(first, end int64) { s.runs = append(s.runs, [2]int64{first, end}) }); err != nil {
		s.close()
		return err
	}
	for _, r := range s.runs {
		for i := r[0]; i < r[1]; {
			end := min(i+batchPages, r[1])
			err := locked(func() {
				for ; i < end; i++ {
					s.sums[i] = pageSum(s.m.page(i))
				}
			})
			if err != nil {
				s.close() // the scan re-armed pages not yet rehashed
				return err
			}
		}
	}
	return nil
}

// final returns the checksum of a paused memory: a refresh and the sums'
// hash if they are kept (and the refresh works), else all of it hashed.
func (s *sourceSums) final() (sum uint64, hashedAll bool) {
	if s.t != nil && s.refresh(unlocked) == nil {
		return sumOfSums(s.sums), false
	}
	return s.m.checksum(), true
}

// close ends the tracking; the sums are no longer kept.
func (s *sourceSums) close() {
	if s.t != nil {
		s.t.close()
		s.t, s.sums = nil, nil
	}
}
