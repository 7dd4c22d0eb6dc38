package sim

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// A guest that dirties far faster than the bandwidth limit lets the link
// carry: the move throttles it until the copy converges, or gives up with
// a GiveUpError, and in both cases returns within MaxDuration; a source
// that gave up runs on, unthrottled.
func TestMigrationOutrunByGuest(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts driver.MigrateOptions
		// converges: must it switch over (true) or give up (false)?
		converges bool
		reason    string
	}{
		// 256 MiB/s against 8 MiB/s: only a throttle near 99 % converges.
		{"throttles or gives up", driver.MigrateOptions{BandwidthLimit: 8 << 20, DowntimeTarget: 20 * time.Millisecond, MaxDuration: 10 * time.Second}, true, ""},
		// Round 1 alone needs a second at this rate.
		{"past MaxDuration", driver.MigrateOptions{BandwidthLimit: 1 << 20, MaxDuration: 200 * time.Millisecond}, false, "ran past its limit of 200ms within its first round"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			guest := Guest{WorkingSetBytes: 1 << 20, DirtyRateBytesPerSec: 256 << 20, Tick: time.Millisecond}
			dir, clk := t.TempDir(), newClock()
			n1, n2 := newGuestDriver(t, "n1", dir, clk, guest), newGuestDriver(t, "n2", dir, clk, guest)
			lease := clk.Now().Add(time.Hour)
			start(t, n1, testSpec(web, 1), lease)
			fill(t, n1, web)
			a, b := connPair(t, "tcp")
			t0 := time.Now()
			mig := migrate(context.Background(), t, n1, n2, 1, testSpec(web, 2), a, b, tc.opts, nil)
			took := time.Since(t0)
			t.Logf("%s: %+v, %v / %v, %d reports", took, mig.res, mig.outErr, mig.inErr, len(mig.progress))
			if took > tc.opts.MaxDuration+2*time.Second {
				t.Errorf("the move took %s, limit %s", took, tc.opts.MaxDuration)
			}
			var gu *driver.GiveUpError
			switch {
			case mig.outErr == nil && tc.converges:
				if mig.res.ThrottlePercent == 0 || mig.inErr != nil {
					t.Errorf("converged without a throttle (%+v) or the target failed (%v)", mig.res, mig.inErr)
				}
				if mem, _ := memoryOf(t, n2, web); !bytes.Equal(mem, mustMemory(t, n1, web)) {
					t.Error("memories differ")
				}
				return
			case !errors.As(mig.outErr, &gu):
				t.Fatalf("MigrateOut: %v, want success or a GiveUpError", mig.outErr)
			case !strings.Contains(gu.Reason, tc.reason):
				t.Errorf("gave up because %q, want %q in it", gu.Reason, tc.reason)
			}
			if mig.inErr == nil || !strings.Contains(mig.inErr.Error(), "the source gave up") {
				t.Errorf("MigrateIn: %v, want the source's reason", mig.inErr)
			}
			if _, err := n2.Status(web); !errors.Is(err, driver.ErrNotFound) {
				t.Errorf("target kept the VM: %v", err)
			}
			v := n1.lookup(web)
			v.mu.Lock()
			throttle, logging := v.throttle, v.mem.dirty != nil
			v.mu.Unlock()
			if throttle != 0 || logging {
				t.Errorf("after giving up: throttle %d %%, dirty log on %v; want both ended", throttle, logging)
			}
			waitCounter(t, n1, web, status(t, n1, web).Counter+3)
		})
	}
}

func mustMemory(t testing.TB, d *Driver, id driver.VMID) []byte {
	t.Helper()
	mem, _ := memoryOf(t, d, id)
	return mem
}

// Cancelling the context aborts a move, between rounds or in a write the
// target does not read, and the source runs on.
func TestMigrationCancelled(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, n1, n2 *Driver) error
	}{
		{"after round 1", func(t *testing.T, n1, n2 *Driver) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			a, b := connPair(t, "tcp")
			opts := driver.MigrateOptions{DowntimeTarget: time.Nanosecond}
			mig := migrate(ctx, t, n1, n2, 1, bigSpec(web, 2), a, b, opts, func(p driver.Progress) {
				if p.Phase == "precopy" {
					cancel()
				}
			})
			if len(mig.progress) != 2 {
				t.Errorf("%d reports after cancelling in round 1's, want the setup's and that one", len(mig.progress))
			}
			if mig.inErr == nil {
				t.Error("MigrateIn succeeded")
			}
			return mig.outErr
		}},
		// A report that blocks (a test's hold) until the move is
		// cancelled: nothing is sent after it.
		{"held at the setup", func(t *testing.T, n1, n2 *Driver) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			a, b := connPair(t, "tcp")
			mig := migrate(ctx, t, n1, n2, 1, bigSpec(web, 2), a, b, driver.MigrateOptions{}, func(driver.Progress) {
				if st := status(t, n2, web); st.State != driver.StateIncoming || st.Epoch != 2 || st.Complete {
					t.Errorf("at the setup report the target's vm is %+v, want incoming at epoch 2, not complete", st)
				}
				if _, err := n2.MemoryChecksum(web); !errors.Is(err, driver.ErrInvalidState) {
					t.Errorf("checksum of a VM still incoming: %v, want ErrInvalidState", err)
				}
				cancel()
				<-ctx.Done()
			})
			if len(mig.progress) != 1 || mig.progress[0].Phase != "setup" {
				t.Errorf("reports %+v, want the setup's alone", mig.progress)
			}
			if mig.inErr == nil {
				t.Error("MigrateIn succeeded")
			}
			return mig.outErr
		}},
		{"blocked in a write", func(t *testing.T, n1, n2 *Driver) error {
			a, _ := net.Pipe() // no one reads the other end
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			_, err := n1.MigrateOut(ctx, web, 1, a, driver.MigrateOptions{}, nil)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, clk := t.TempDir(), newClock()
			n1, n2 := newGuestDriver(t, "n1", dir, clk, busyGuest), newGuestDriver(t, "n2", dir, clk, busyGuest)
			start(t, n1, bigSpec(web, 1), clk.Now().Add(time.Minute))
			fill(t, n1, web)
			err := tc.run(t, n1, n2)
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("MigrateOut: %v, want the context's error", err)
			}
			if _, err := n2.Status(web); !errors.Is(err, driver.ErrNotFound) {
				t.Errorf("target kept the VM: %v", err)
			}
			st := status(t, n1, web)
			if st.State != driver.StateRunning {
				t.Fatalf("source %s, want running", st.State)
			}
			waitCounter(t, n1, web, st.Counter+3)
		})
	}
}
