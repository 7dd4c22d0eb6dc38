package sim

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// saved saves web, running on n1 at epoch 1 with a busy guest, to
// statePath and returns the result; web is then paused.
func saved(t *testing.T) (n1, n2 *Driver, dir string, lease time.Time, res driver.MigrateResult) {
	t.Helper()
	dir, clk := t.TempDir(), newClock()
	n1, n2 = newGuestDriver(t, "n1", dir, clk, busyGuest), newGuestDriver(t, "n2", dir, clk, busyGuest)
	lease = clk.Now().Add(time.Minute)
	start(t, n1, bigSpec(web, 1), lease)
	waitCounter(t, n1, web, 5)
	var phases []string
	res, err := n1.SaveState(context.Background(), web, 1, statePath, func(p driver.Progress) { phases = append(phases, p.Phase) })
	if err != nil {
		t.Fatalf("SaveState: %v", err)
	}
	if len(phases) == 0 || phases[0] != "save" {
		t.Errorf("progress phases %v, want save", phases)
	}
	return n1, n2, dir, lease, res
}

const statePath = "states/web.vmstate"

// A quick migration: the restored memory is the saved one bit for bit,
// the file holds only the pages the guest wrote, and the restored guest
// goes on from the saved one's count.
func TestSaveRestore(t *testing.T) {
	n1, n2, dir, lease, res := saved(t)
	st := status(t, n1, web)
	if st.State != driver.StatePaused {
		t.Fatalf("source after SaveState: %s, want paused", st.State)
	}
	fi, err := os.Stat(filepath.Join(dir, statePath))
	if err != nil {
		t.Fatal(err)
	}
	// The guest touches 4 MiB of its 16 MiB.
	if fi.Size() != res.BytesSent || fi.Size() > busyGuest.WorkingSetBytes*11/10 {
		t.Errorf("state file of %d bytes (result %d): want only the written pages", fi.Size(), res.BytesSent)
	}
	if err := n2.RestoreState(context.Background(), bigSpec(web, 2), statePath); err != nil {
		t.Fatalf("RestoreState: %v", err)
	}
	srcMem, srcSum := memoryOf(t, n1, web)
	dstMem, dstSum := memoryOf(t, n2, web)
	if !bytes.Equal(srcMem, dstMem) || srcSum != res.Checksum || dstSum != res.Checksum {
		t.Fatalf("restored memory differs: checksums %#x, %#x, saved %#x", srcSum, dstSum, res.Checksum)
	}
	if err := n2.Activate(web, 2, lease); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	waitCounter(t, n2, web, st.Counter+2)
	exec := readExec(t, dir, web)
	increasing(t, "exec log", exec)
	if by2 := recordsBy(exec, "n2"); by2[0].Counter != st.Counter+1 {
		t.Errorf("restored guest's first record %+v, want counter %d", by2[0], st.Counter+1)
	}
	// A second restore of the same file at the source's epoch is no move.
	n3 := newGuestDriver(t, "n3", dir, nil, busyGuest)
	if err := n3.RestoreState(context.Background(), bigSpec(web, 1), statePath); !errors.Is(err, driver.ErrStaleEpoch) {
		t.Errorf("restore at the saved epoch: %v, want ErrStaleEpoch", err)
	}
}

// A state file that was changed, cut short or is not one is refused, and
// leaves no VM behind.
func TestRestoreRefusesABadFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		mess func(b []byte) []byte
		want string
	}{
		{"a page byte flipped", func(b []byte) []byte { b[len(b)/2] ^= 1; return b }, "checksum"},
		{"cut short", func(b []byte) []byte { return b[:len(b)-20] }, "before the checksum"},
		{"the checksum changed", func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }, "checksum"},
		{"not a state file", func(b []byte) []byte { return []byte("H\x10\x00\x00\x00not a migration!") }, "magic"},
		{"empty", func(b []byte) []byte { return nil }, "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, n2, dir, _, _ := saved(t)
			p := filepath.Join(dir, statePath)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, tc.mess(b), 0o644); err != nil {
				t.Fatal(err)
			}
			err = n2.RestoreState(context.Background(), bigSpec(web, 2), statePath)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("RestoreState: %v, want an error about %q", err, tc.want)
			}
			if _, err := n2.Status(web); !errors.Is(err, driver.ErrNotFound) {
				t.Errorf("a refused restore left the VM: %v", err)
			}
		})
	}
}

// A save that fails leaves the VM running and no file behind: before the
// pause (the file cannot be made) and after it (cancelled mid-write).
func TestSaveFailureResumes(t *testing.T) {
	for _, tc := range []struct {
		name string
		prep func(t *testing.T, dir string) (context.Context, func(driver.Progress))
	}{
		{"cannot create the file", func(t *testing.T, dir string) (context.Context, func(driver.Progress)) {
			// states is a file, so states/web.vmstate cannot be.
			if err := os.WriteFile(filepath.Join(dir, "states"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return context.Background(), nil
		}},
		{"cancelled once paused", func(t *testing.T, dir string) (context.Context, func(driver.Progress)) {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			return ctx, func(driver.Progress) { cancel() }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, clk := t.TempDir(), newClock()
			d := newGuestDriver(t, "n1", dir, clk, busyGuest)
			start(t, d, bigSpec(web, 1), clk.Now().Add(time.Minute))
			ctx, progress := tc.prep(t, dir)
			if _, err := d.SaveState(ctx, web, 1, statePath, progress); err == nil {
				t.Fatal("SaveState succeeded")
			}
			st := status(t, d, web)
			if st.State != driver.StateRunning {
				t.Fatalf("after a failed save: %s, want running", st.State)
			}
			waitCounter(t, d, web, st.Counter+2)
			if left, _ := filepath.Glob(filepath.Join(dir, "states", "*")); len(left) != 0 {
				t.Errorf("files left behind: %v", left)
			}
		})
	}
}
