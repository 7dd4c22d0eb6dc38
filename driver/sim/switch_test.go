package sim

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// pausedAndIncoming moves web from n1 (epoch 1) to n2 (epoch 2) and leaves
// the source paused and the target incoming with all its state.
func pausedAndIncoming(t *testing.T) (n1, n2 *Driver, clk *clock, dir string, lease time.Time) {
	t.Helper()
	dir, clk = t.TempDir(), newClock()
	n1, n2 = newGuestDriver(t, "n1", dir, clk, busyGuest), newGuestDriver(t, "n2", dir, clk, busyGuest)
	lease = clk.Now().Add(time.Minute)
	start(t, n1, bigSpec(web, 1), lease)
	waitCounter(t, n1, web, 3)
	a, b := connPair(t, "tcp")
	mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, 2), a, b, driver.MigrateOptions{}, nil)
	if mig.outErr != nil || mig.inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", mig.outErr, mig.inErr)
	}
	return n1, n2, clk, dir, lease
}

// A paused source and an incoming target refuse whatever would run them
// other than Resume and Activate with a valid lease at their epoch, and
// the refusals leave them as they were.
func TestPausedAndIncomingRefusals(t *testing.T) {
	n1, n2, clk, dir, lease := pausedAndIncoming(t)
	ctx := context.Background()
	paused := status(t, n1, web)
	expired := clk.Now()
	conn, _ := net.Pipe()
	defer conn.Close()
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"source: ExtendLease to the past", func() error { return n1.ExtendLease(web, 1, expired) }, driver.ErrLeaseExpired},
		{"source: Start at its epoch", func() error { return n1.Start(ctx, bigSpec(web, 1), lease) }, driver.ErrInvalidState},
		{"source: Resume at another epoch", func() error { return n1.Resume(web, 2, lease) }, driver.ErrStaleEpoch},
		{"source: Resume with an expired lease", func() error { return n1.Resume(web, 1, expired) }, driver.ErrLeaseExpired},
		{"source: Activate", func() error { return n1.Activate(web, 1, lease) }, driver.ErrInvalidState},
		{"source: Crash", func() error { return n1.Crash(web, "x") }, driver.ErrInvalidState},
		{"source: Forget", func() error { return n1.Forget(web, 1) }, driver.ErrInvalidState},
		{"source: MigrateOut again", func() error {
			_, err := n1.MigrateOut(ctx, web, 1, conn, driver.MigrateOptions{}, nil)
			return err
		}, driver.ErrInvalidState},
		{"source: SaveState", func() error { _, err := n1.SaveState(ctx, web, 1, "state", nil); return err }, driver.ErrInvalidState},
		{"target: ExtendLease", func() error { return n2.ExtendLease(web, 2, lease) }, driver.ErrInvalidState},
		{"target: Start at its epoch", func() error { return n2.Start(ctx, bigSpec(web, 2), lease) }, driver.ErrInvalidState},
		{"target: Start at an older epoch", func() error { return n2.Start(ctx, bigSpec(web, 1), lease) }, driver.ErrStaleEpoch},
		{"target: Activate at the source's epoch", func() error { return n2.Activate(web, 1, lease) }, driver.ErrStaleEpoch},
		{"target: Activate at a later epoch", func() error { return n2.Activate(web, 3, lease) }, driver.ErrStaleEpoch},
		{"target: Activate with an expired lease", func() error { return n2.Activate(web, 2, expired) }, driver.ErrLeaseExpired},
		{"target: Resume", func() error { return n2.Resume(web, 2, lease) }, driver.ErrInvalidState},
		{"target: Crash", func() error { return n2.Crash(web, "x") }, driver.ErrInvalidState},
		{"target: MigrateOut", func() error {
			_, err := n2.MigrateOut(ctx, web, 2, conn, driver.MigrateOptions{}, nil)
			return err
		}, driver.ErrInvalidState},
		{"unknown: Activate", func() error { return n2.Activate(driver.VMID{Group: "no", Resource: "vm"}, 1, lease) }, driver.ErrNotFound},
		{"unknown: Resume", func() error { return n1.Resume(driver.VMID{Group: "no", Resource: "vm"}, 1, lease) }, driver.ErrNotFound},
	} {
		if err := tc.call(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	// A renewal reaches a paused source, and moves its lease without
	// running it.
	if err := n1.ExtendLease(web, 1, lease.Add(time.Minute)); err != nil {
		t.Fatalf("ExtendLease of the paused source: %v", err)
	}
	waitWakeups(t, n1, web, 5)
	if st := status(t, n1, web); st.State != driver.StatePaused || st.Counter != paused.Counter || !st.LeaseEnd.Equal(lease.Add(time.Minute)) {
		t.Errorf("source after the refusals: %+v, want paused at counter %d with its lease moved", st, paused.Counter)
	}
	if st := status(t, n2, web); st.State != driver.StateIncoming || st.Epoch != 2 {
		t.Errorf("target after the refusals: %+v, want incoming at epoch 2", st)
	}
	exec := readExec(t, dir, web)
	if by1, by2 := recordsBy(exec, "n1"), recordsBy(exec, "n2"); by1[len(by1)-1].Counter != paused.Counter || len(by2) != 0 {
		t.Errorf("a refused call ran a guest: last n1 record %+v, %d n2 records", by1[len(by1)-1], len(by2))
	}
	if err := n2.Activate(web, 2, lease); err != nil {
		t.Fatalf("Activate after the refusals: %v", err)
	}
	waitCounter(t, n2, web, paused.Counter+1)
}

// Resume and Activate are for paused and incoming VMs only; a move is
// for a running VM at its epoch.
func TestRunningVMRefusals(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	lease := clk.Now().Add(time.Minute)
	start(t, d, testSpec(web, 1), lease)
	ctx := context.Background()
	conn, _ := net.Pipe()
	defer conn.Close()
	migrateOut := func(id driver.VMID, epoch uint64) func() error {
		return func() error { _, err := d.MigrateOut(ctx, id, epoch, conn, driver.MigrateOptions{}, nil); return err }
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"Resume", func() error { return d.Resume(web, 1, lease) }, driver.ErrInvalidState},
		{"Activate", func() error { return d.Activate(web, 1, lease) }, driver.ErrInvalidState},
		{"MigrateOut at another epoch", migrateOut(web, 2), driver.ErrStaleEpoch},
		{"MigrateOut of an unknown VM", migrateOut(driver.VMID{Group: "no", Resource: "vm"}, 1), driver.ErrNotFound},
		{"SaveState at another epoch", func() error { _, err := d.SaveState(ctx, web, 0, "state", nil); return err }, driver.ErrStaleEpoch},
		{"SaveState outside the shared directory", func() error { _, err := d.SaveState(ctx, web, 1, "../state", nil); return err }, nil},
	} {
		err := tc.call()
		if tc.want == nil && err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	clk.Set(lease)
	if err := migrateOut(web, 1)(); !errors.Is(err, driver.ErrInvalidState) {
		t.Errorf("MigrateOut of a frozen VM: %v, want ErrInvalidState", err)
	}
	if st := status(t, d, web); st.State != driver.StateFrozen {
		t.Errorf("after the refusals: %s, want frozen (never paused)", st.State)
	}
}

// An incoming VM ends by Forget, Kill or a Start at a newer epoch, even
// while its state is still on the way, and before all of it has arrived
// Activate refuses it.
func TestEndingAnIncomingVM(t *testing.T) {
	for _, tc := range []struct {
		name  string
		end   func(d *Driver) error
		after driver.State // StateUnknown: gone from the table
	}{
		{"Forget", func(d *Driver) error { return d.Forget(web, 2) }, driver.StateUnknown},
		{"Kill", func(d *Driver) error { return d.Kill(web, 2) }, driver.StateStopped},
		{"Stop", func(d *Driver) error { return d.Stop(context.Background(), web, 2) }, driver.StateStopped},
		{"Start at a newer epoch", func(d *Driver) error {
			return d.Start(context.Background(), bigSpec(web, 3), time.Now().Add(time.Minute))
		}, driver.StateRunning},
		{"Close", func(d *Driver) error { return d.Close() }, driver.StateStopped},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriver(t, "n2", t.TempDir(), nil)
			a, b := connPair(t, "tcp")
			in := make(chan error, 1)
			go func() {
				err := d.MigrateIn(context.Background(), bigSpec(web, 2), b)
				b.Close()
				in <- err
			}()
			// A source that sends its header and then nothing.
			fw, fr := newFrameWriter(a, 4<<10), newFrameReader(a, 4<<10)
			h := header{pageSize: PageSize, memBytes: 16 << 20, epoch: 1, id: web}
			if err := fw.frame(frameHeader, h.encode(), nil); err != nil {
				t.Fatal(err)
			}
			if err := fw.flush(); err != nil {
				t.Fatal(err)
			}
			if err := fr.awaitAck(0); err != nil {
				t.Fatalf("header refused: %v", err)
			}
			if st := status(t, d, web); st.State != driver.StateIncoming {
				t.Fatalf("state %s, want incoming", st.State)
			}
			if err := d.Activate(web, 2, time.Now().Add(time.Minute)); !errors.Is(err, driver.ErrInvalidState) {
				t.Errorf("Activate of an incomplete VM: %v, want ErrInvalidState", err)
			}
			if err := tc.end(d); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			a.Close() // the source gives up too
			if err := <-in; err == nil {
				t.Error("MigrateIn succeeded")
			}
			st, err := d.Status(web)
			switch {
			case tc.after == driver.StateUnknown && !errors.Is(err, driver.ErrNotFound):
				t.Errorf("after %s: %+v, %v; want it gone", tc.name, st, err)
			case tc.after != driver.StateUnknown && st.State != tc.after:
				t.Errorf("after %s: %+v, want %s", tc.name, st, tc.after)
			}
		})
	}
}

// A target whose incoming VM is ended mid-round (here by Forget, as an
// executor discarding what it no longer wants does) ends the stream at
// once, not at the round's end: on a slow link that is most of a move of
// copying into nothing.
func TestIncomingEndedMidRound(t *testing.T) {
	dir := t.TempDir()
	n1, n2 := newGuestDriver(t, "n1", dir, nil, Guest{Tick: 2 * time.Millisecond}), newGuestDriver(t, "n2", dir, nil, Guest{Tick: 2 * time.Millisecond})
	start(t, n1, bigSpec(web, 1), time.Now().Add(time.Minute))
	fill(t, n1, web)
	a, b := connPair(t, "tcp")
	done := make(chan migration, 1)
	go func() {
		// 16 MiB at 2 MiB/s: round 1 takes 8 s.
		done <- migrate(context.Background(), t, n1, n2, 1, bigSpec(web, 2), a, b, driver.MigrateOptions{BandwidthLimit: 2 << 20}, nil)
	}()
	waitFor(t, "the incoming VM on n2", func() bool {
		st, err := n2.Status(web)
		return err == nil && st.State == driver.StateIncoming
	})
	if err := n2.Forget(web, 2); err != nil {
		t.Fatal(err)
	}
	ended := time.Now()
	select {
	case mig := <-done:
		if !errors.Is(mig.inErr, errVMGone) || mig.outErr == nil {
			t.Errorf("MigrateIn: %v (want the VM gone); MigrateOut: %v (want an error)", mig.inErr, mig.outErr)
		}
		t.Logf("both ends returned %s after the Forget", time.Since(ended))
	case <-time.After(4 * time.Second):
		t.Fatal("the move went on for 4 s after its target was forgotten: the target waits for the round's end")
	}
	if st := status(t, n1, web); st.State != driver.StateRunning {
		t.Errorf("source after the failed move: %s, want running again", st.State)
	}
}
