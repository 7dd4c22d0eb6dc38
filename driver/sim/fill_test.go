package sim

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// FillMemory leaves no page of zeros and no two pages alike, keeps the
// guest's counter going, and makes a move carry the whole memory.
func TestFillMemory(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	n1, n2 := newGuestDriver(t, "n1", dir, clk, Guest{Tick: 2 * time.Millisecond}), newGuestDriver(t, "n2", dir, clk, Guest{Tick: 2 * time.Millisecond})
	spec := bigSpec(web, 1)
	spec.MemoryBytes += PageSize / 2 // a partial last page
	start(t, n1, spec, clk.Now().Add(time.Minute))
	before := waitCounter(t, n1, web, 3)
	n, err := n1.FillMemory(web)
	if err != nil || n != spec.MemoryBytes {
		t.Fatalf("FillMemory = %d, %v; want %d", n, err, spec.MemoryBytes)
	}
	after := waitCounter(t, n1, web, before.Counter+3)
	mem, _ := memoryOf(t, n1, web)
	seen := map[string]bool{}
	for i := 0; i < len(mem); i += PageSize {
		p := mem[i:min(i+PageSize, len(mem))]
		if bytes.Equal(p, zeroPage[:len(p)]) {
			t.Fatalf("page %d is zeros after FillMemory", i/PageSize)
		}
		if seen[string(p)] {
			t.Fatalf("page %d is the same as an earlier one", i/PageSize)
		}
		seen[string(p)] = true
	}
	recs := readExec(t, dir, web)
	if len(recs) == 0 || recs[len(recs)-1].Counter < after.Counter {
		t.Fatalf("exec log of %d records does not reach the counter %d", len(recs), after.Counter)
	}
	increasing(t, "exec log across the fill", recs)

	a, b := connPair(t, "tcp")
	target := spec
	target.Epoch = 2
	mig := migrate(context.Background(), t, n1, n2, 1, target, a, b, driver.MigrateOptions{}, nil)
	if mig.outErr != nil || mig.inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", mig.outErr, mig.inErr)
	}
	if mig.res.BytesSent < spec.MemoryBytes {
		t.Errorf("the move sent %d bytes of a filled memory of %d", mig.res.BytesSent, spec.MemoryBytes)
	}
}

func TestFillMemoryRefused(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	if _, err := d.FillMemory(web); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("FillMemory of no VM: %v, want ErrNotFound", err)
	}
	start(t, d, testSpec(web, 1), clk.Now().Add(time.Second))
	clk.Advance(2 * time.Second) // past the lease: frozen
	if _, err := d.FillMemory(web); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("FillMemory of a frozen VM: %v, want ErrInvalidState", err)
	}
	if err := d.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := d.FillMemory(web); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("FillMemory of a stopped VM: %v, want ErrInvalidState", err)
	}
}
