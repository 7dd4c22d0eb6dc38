package sim

import (
	"bytes"
	"encoding/binary"
)

// pageSender sends pages of a memory as 'P' and 'Z' frames, a batch at a
// time. It remembers which pages the target may hold non-zero, so a zero
// page goes out only as a marker, and only when it was sent non-zero
// before.
type pageSender struct {
	m       *memory
	fw      *frameWriter
	batch   int // pages looked at per batch, at most batchPages
	nonZero bitmap
	// seen, if set, is told of every page looked at, as read.
	seen func(i int64, p []byte, zero bool)
	// pages and zeros hold a batch's count and page numbers, data its
	// pages' bytes.
	pages, zeros, data []byte
}

func newPageSender(m *memory, fw *frameWriter, batch int) *pageSender {
	return &pageSender{
		m: m, fw: fw, batch: batch, nonZero: newBitmap(m.pages()),
		pages: make([]byte, 4, 4+8*batchPages), zeros: make([]byte, 4, 4+8*batchPages),
		data: make([]byte, 0, batchPages*PageSize),
	}
}

// send sends every page of set. Each batch is read inside locked, which
// for a pre-copy holds the guest's mutex (the guest runs meanwhile) and
// fails if the VM is gone; between runs after each batch is written.
func (s *pageSender) send(set bitmap, locked func(func()) error, between func() error) error {
	for i := set.next(0); i >= 0; {
		if err := locked(func() { i = s.fill(set, i) }); err != nil {
			return err
		}
		if err := s.flushBatch(); err != nil {
			return err
		}
		if err := between(); err != nil {
			return err
		}
	}
	return nil
}

// fill copies out the batch of set that starts at page i, looking at up
// to s.batch pages, and returns the page to go on from (-1: done).
func (s *pageSender) fill(set bitmap, i int64) int64 {
	s.pages, s.zeros, s.data = s.pages[:4], s.zeros[:4], s.data[:0]
	for n := 0; i >= 0 && n < s.batch; i, n = set.next(i+1), n+1 {
		p := s.m.page(i)
		zero := bytes.Equal(p, zeroPage[:len(p)])
		if s.seen != nil {
			s.seen(i, p, zero)
		}
		if zero {
			if s.nonZero.has(i) {
				s.nonZero.unset(i)
				s.zeros = binary.LittleEndian.AppendUint64(s.zeros, uint64(i))
			}
			continue
		}
		s.nonZero.set(i)
		s.pages = binary.LittleEndian.AppendUint64(s.pages, uint64(i))
		s.data = append(s.data, p...)
	}
	return i
}

func (s *pageSender) flushBatch() error {
	if n := (len(s.pages) - 4) / 8; n > 0 {
		binary.LittleEndian.PutUint32(s.pages, uint32(n))
		if err := s.fw.frame(framePages, s.pages, s.data); err != nil {
			return err
		}
	}
	if n := (len(s.zeros) - 4) / 8; n > 0 {
		binary.LittleEndian.PutUint32(s.zeros, uint32(n))
		return s.fw.frame(frameZero, s.zeros, nil)
	}
	return nil
}

// unlocked is send's locked for a memory no guest writes (a paused VM's).
func unlocked(f func()) error { f(); return nil }
