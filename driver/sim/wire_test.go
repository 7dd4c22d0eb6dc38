package sim

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// A target refuses a stream that does not fit the VM it was asked to
// receive, and says why; the source learns it at once and runs on.
func TestMigrateInRefusesAMismatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(s *driver.VMSpec)
		prep   func(t *testing.T, n2 *Driver)
		want   error
	}{
		{"another VM", func(s *driver.VMSpec) { s.ID.Resource = "other" }, nil, driver.ErrInvalidSpec},
		{"another memory size", func(s *driver.VMSpec) { s.MemoryBytes *= 2 }, nil, driver.ErrInvalidSpec},
		{"the source's epoch", func(s *driver.VMSpec) { s.Epoch = 1 }, nil, driver.ErrStaleEpoch},
		{"known here at a newer epoch", func(s *driver.VMSpec) {}, func(t *testing.T, n2 *Driver) {
			start(t, n2, bigSpec(web, 3), time.Now().Add(time.Minute))
		}, driver.ErrStaleEpoch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, clk := t.TempDir(), newClock()
			n1, n2 := newGuestDriver(t, "n1", dir, clk, busyGuest), newGuestDriver(t, "n2", t.TempDir(), nil, busyGuest)
			start(t, n1, bigSpec(web, 1), clk.Now().Add(time.Minute))
			if tc.prep != nil {
				tc.prep(t, n2)
			}
			target := bigSpec(web, 2)
			tc.target(&target)
			a, b := connPair(t, "pipe")
			mig := migrateAs(context.Background(), t, n1, n2, web, 1, target, a, b, driver.MigrateOptions{}, nil)
			if !errors.Is(mig.inErr, tc.want) {
				t.Errorf("MigrateIn: %v, want %v", mig.inErr, tc.want)
			}
			if mig.outErr == nil || !strings.Contains(mig.outErr.Error(), "target refused") {
				t.Errorf("MigrateOut: %v, want the target's refusal", mig.outErr)
			}
			if st := status(t, n1, web); st.State != driver.StateRunning {
				t.Errorf("source %s, want running", st.State)
			}
		})
	}
}

// A stream that breaks the format is refused, whatever breaks, and the
// incoming VM is discarded.
func TestMigrateInRefusesACorruptStream(t *testing.T) {
	const mem = 64 << 10 // 16 pages
	hdr := header{pageSize: PageSize, memBytes: mem, epoch: 1, id: web}.encode()
	page := func(n ...uint64) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(len(n)))
		for _, i := range n {
			b = binary.LittleEndian.AppendUint64(b, i)
		}
		return b
	}
	type frame struct {
		kind       byte
		head, body []byte
	}
	data := make([]byte, PageSize)
	data[0] = 1
	for _, tc := range []struct {
		name   string
		frames []frame
		want   string
	}{
		{"pages before the header", []frame{{framePages, page(0), data}}, "before the header"},
		{"another version", []frame{{frameHeader, append(hdr[:8:8], 9, 0), nil}}, "version 9"},
		{"a page beyond the memory", []frame{{frameHeader, hdr, nil}, {framePages, page(16), data}}, "page 16"},
		{"a page cut short", []frame{{frameHeader, hdr, nil}, {framePages, page(0), data[:100]}}, "cut short"},
		{"bytes after the pages", []frame{{frameHeader, hdr, nil}, {framePages, page(0), append(data, 1)}}, "after the pages"},
		{"an unknown frame", []frame{{frameHeader, hdr, nil}, {'?', nil, nil}}, `frame '?'`},
		{"an oversized frame", []frame{{frameHeader, hdr, nil}, {framePages, make([]byte, maxFrame+1), nil}}, "bytes"},
		{"a checksum without device state", []frame{{frameHeader, hdr, nil}, {frameChecksum, le64(1), nil}}, "no device state"},
		{"a wrong checksum", []frame{
			{frameHeader, hdr, nil}, {framePages, page(3), data},
			{frameDevice, device{}.encode(), nil}, {frameChecksum, le64(1), nil},
		}, "memory checksum"},
		{"the source gives up", []frame{{frameHeader, hdr, nil}, {frameAbort, appendString(nil, "no reason"), nil}}, "the source gave up: no reason"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriver(t, "n2", t.TempDir(), nil)
			spec := testSpec(web, 2)
			spec.MemoryBytes = mem
			a, b := connPair(t, "tcp")
			in := make(chan error, 1)
			go func() {
				err := d.MigrateIn(context.Background(), spec, b)
				b.Close()
				in <- err
			}()
			fw := newFrameWriter(a, 1<<20)
			for _, f := range tc.frames {
				if err := fw.frame(f.kind, f.head, f.body); err != nil {
					t.Fatal(err)
				}
			}
			if err := fw.flush(); err != nil {
				t.Fatal(err)
			}
			err := <-in
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("MigrateIn: %v, want an error about %q", err, tc.want)
			}
			if _, err := d.Status(web); !errors.Is(err, driver.ErrNotFound) {
				t.Errorf("the VM stayed: %v", err)
			}
		})
	}
}
