package sim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

// data is the disk the tests hot-plug into web.
var data = driver.DiskSpec{Name: "data", Path: "disks/web/data.img", SizeBytes: 1 << 20}

func diskNames(t *testing.T, d *Driver, id driver.VMID) []string {
	t.Helper()
	disks, err := d.Disks(id)
	if err != nil {
		t.Fatalf("Disks(%s): %v", id, err)
	}
	var names []string
	for _, dk := range disks {
		names = append(names, dk.Name)
	}
	return names
}

// An attached disk is claimed at the VM's epoch and receives the guest's
// records from its next tick, the counter going on from where the guest
// was; a detached one receives none after the call.
func TestAttachDetachDisk(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	start(t, d, testSpec(web, 4), clk.Now().Add(time.Hour))
	before := waitCounter(t, d, web, 3).Counter

	if err := d.AttachDisk(context.Background(), web, 4, data); err != nil {
		t.Fatalf("AttachDisk: %v", err)
	}
	if got := diskNames(t, d, web); !slices.Equal(got, []string{"root", "data"}) {
		t.Errorf("Disks after the attach: %v, want root, data", got)
	}
	path := filepath.Join(dir, data.Path)
	waitFor(t, "records on the attached disk", func() bool {
		_, recs, err := ReadDisk(path)
		return err == nil && len(recs) >= 3
	})
	h, recs := readDisk(t, path)
	if h.Epoch != 4 || h.Node != "n1" {
		t.Errorf("the attached disk's header: %+v, want claimed by n1 at epoch 4", h)
	}
	increasing(t, "attached disk", recs)
	for _, r := range recs {
		if r.Epoch != 4 || r.Node != "n1" || r.Counter <= before {
			t.Fatalf("record %+v on the attached disk: want n1 at epoch 4, after counter %d", r, before)
		}
	}
	// The disk gets every tick the root disk gets from then on.
	_, root := readDisk(t, diskPath(dir, testSpec(web, 4)))
	if !slices.ContainsFunc(root, func(r Record) bool { return r.Counter == recs[0].Counter }) {
		t.Errorf("the first tick on the attached disk (%d) is not on the root disk", recs[0].Counter)
	}

	if err := d.DetachDisk(context.Background(), web, 4, "data"); err != nil {
		t.Fatalf("DetachDisk: %v", err)
	}
	_, recs = readDisk(t, path)
	waitWakeups(t, d, web, 5)
	if st := status(t, d, web); st.State != driver.StateRunning {
		t.Fatalf("after the detach: %s (%s)", st.State, st.Reason)
	}
	if _, after := readDisk(t, path); len(after) != len(recs) {
		t.Errorf("the detached disk got %d more records", len(after)-len(recs))
	}
	if got := diskNames(t, d, web); !slices.Equal(got, []string{"root"}) {
		t.Errorf("Disks after the detach: %v, want root", got)
	}
	last := status(t, d, web).Counter

	// Attached again, it goes on from the guest's counter.
	if err := d.AttachDisk(context.Background(), web, 4, data); err != nil {
		t.Fatalf("AttachDisk again: %v", err)
	}
	waitFor(t, "records after the second attach", func() bool {
		_, recs, err := ReadDisk(path)
		return err == nil && len(recs) > 0 && recs[len(recs)-1].Counter > last
	})
	_, recs = readDisk(t, path)
	increasing(t, "re-attached disk", recs)
}

// A repeated attach or detach is a no-op; what conflicts with what is
// attached is refused and changes nothing.
func TestHotPlugRepeatsAndConflicts(t *testing.T) {
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	start(t, d, testSpec(web, 1), clk.Now().Add(time.Hour))
	ctx := context.Background()
	if err := d.AttachDisk(ctx, web, 1, data); err != nil {
		t.Fatal(err)
	}
	if err := d.AttachDisk(ctx, web, 1, data); err != nil {
		t.Errorf("the same attach again: %v, want nil", err)
	}
	raw := data
	raw.Format = "raw"
	if err := d.AttachDisk(ctx, web, 1, raw); err != nil {
		t.Errorf("the same attach with format raw spelt out: %v, want nil", err)
	}
	for name, disk := range map[string]driver.DiskSpec{
		"another file under the name": {Name: "data", Path: "disks/web/other.img"},
		"the file under another name": {Name: "data2", Path: "disks/web/./data.img"},
		"the root disk's file":        {Name: "again", Path: testSpec(web, 1).Disks[0].Path},
		"another format":              {Name: "data", Path: data.Path, Format: "qcow2"},
		"a path outside the share":    {Name: "out", Path: "../out.img"},
		"an absolute path":            {Name: "abs", Path: "/etc/passwd"},
		"no name":                     {Path: "disks/web/noname.img"},
		"a bad format":                {Name: "vmdk", Path: "disks/web/x.vmdk", Format: "vmdk"},
	} {
		if err := d.AttachDisk(ctx, web, 1, disk); !errors.Is(err, driver.ErrInvalidSpec) {
			t.Errorf("attach of %s: %v, want ErrInvalidSpec", name, err)
		}
	}
	// A file that is not a sim disk is not overwritten.
	junk := filepath.Join(dir, "disks", "junk.img")
	if err := os.WriteFile(junk, []byte("not a disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.AttachDisk(ctx, web, 1, driver.DiskSpec{Name: "junk", Path: "disks/junk.img"}); !errors.Is(err, driver.ErrInvalidSpec) {
		t.Errorf("attach of a file that is no sim disk: %v, want ErrInvalidSpec", err)
	}
	if b, _ := os.ReadFile(junk); string(b) != "not a disk\n" {
		t.Errorf("the refused attach wrote the file: %q", b)
	}
	if got := diskNames(t, d, web); !slices.Equal(got, []string{"root", "data"}) {
		t.Errorf("Disks after the refusals: %v, want root, data", got)
	}
	if err := d.DetachDisk(ctx, web, 1, "nothing"); err != nil {
		t.Errorf("detach of a disk not attached: %v, want nil", err)
	}
	if err := d.DetachDisk(ctx, web, 1, "data"); err != nil {
		t.Fatal(err)
	}
	if err := d.DetachDisk(ctx, web, 1, "data"); err != nil {
		t.Errorf("the same detach again: %v, want nil", err)
	}
}

// Hot-plug acts at the VM's own epoch, only while it runs: not frozen at
// its lease end (the gate forbids I/O), not stopped, not during a move, and
// never on a disk a newer epoch has claimed. A refusal changes nothing.
func TestHotPlugRefusals(t *testing.T) {
	ctx := context.Background()
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	leaseEnd := clk.Now().Add(10 * time.Second)
	start(t, d, testSpec(web, 5), leaseEnd)
	waitCounter(t, d, web, 2)

	refused := func(what string, want error, err error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	refused("attach at an older epoch", driver.ErrStaleEpoch, d.AttachDisk(ctx, web, 4, data))
	refused("attach at a newer epoch", driver.ErrStaleEpoch, d.AttachDisk(ctx, web, 6, data))
	refused("detach at an older epoch", driver.ErrStaleEpoch, d.DetachDisk(ctx, web, 4, "root"))
	refused("attach to an unknown vm", driver.ErrNotFound, d.AttachDisk(ctx, driver.VMID{Group: "db", Resource: "vm"}, 5, data))
	refused("detach from an unknown vm", driver.ErrNotFound, d.DetachDisk(ctx, driver.VMID{Group: "db", Resource: "vm"}, 5, "root"))
	if _, err := d.Disks(driver.VMID{Group: "db", Resource: "vm"}); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Disks of an unknown vm: %v, want ErrNotFound", err)
	}

	// A disk a newer epoch claimed fences this one.
	if err := ClaimDisk(filepath.Join(dir, "disks/web/newer.img"), "n2", 9); err != nil {
		t.Fatal(err)
	}
	refused("attach of a disk claimed by epoch 9", driver.ErrStaleEpoch, d.AttachDisk(ctx, web, 5, driver.DiskSpec{Name: "newer", Path: "disks/web/newer.img"}))

	// During a move.
	v, m, err := d.beginMove("test move", web, 5, false)
	if err != nil {
		t.Fatal(err)
	}
	refused("attach during a move", driver.ErrInvalidState, d.AttachDisk(ctx, web, 5, data))
	refused("detach during a move", driver.ErrInvalidState, d.DetachDisk(ctx, web, 5, "root"))
	v.endMove(m, nil)

	// Frozen at the lease end, even before the loop noticed.
	clk.Set(leaseEnd)
	refused("attach to a frozen vm", driver.ErrInvalidState, d.AttachDisk(ctx, web, 5, data))
	refused("detach from a frozen vm", driver.ErrInvalidState, d.DetachDisk(ctx, web, 5, "root"))
	if _, err := os.Stat(filepath.Join(dir, data.Path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused attach created the disk: %v", err)
	}

	if err := d.Stop(ctx, web, 5); err != nil {
		t.Fatal(err)
	}
	refused("attach to a stopped vm", driver.ErrInvalidState, d.AttachDisk(ctx, web, 5, data))
	if got := diskNames(t, d, web); !slices.Equal(got, []string{"root"}) {
		t.Errorf("Disks after the refusals: %v, want root", got)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	refused("attach with a cancelled context", context.Canceled, d.AttachDisk(cancelled, web, 5, data))
}

// A hot-plugged disk comes along when the VM boots again with it in its
// spec, and the guest's counter goes on from the first disk.
func TestAttachedDiskAfterRestart(t *testing.T) {
	ctx := context.Background()
	dir, clk := t.TempDir(), newClock()
	d := newDriver(t, "n1", dir, clk)
	start(t, d, testSpec(web, 1), clk.Now().Add(time.Hour))
	if err := d.AttachDisk(ctx, web, 1, data); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, d, web, 5)
	if err := d.Stop(ctx, web, 1); err != nil {
		t.Fatal(err)
	}
	last := status(t, d, web).Counter
	d2 := newDriver(t, "n2", dir, clk)
	spec := testSpec(web, 2)
	spec.Disks = append(spec.Disks, data)
	start(t, d2, spec, clk.Now().Add(time.Hour))
	waitCounter(t, d2, web, last+3)
	h, recs := readDisk(t, filepath.Join(dir, data.Path))
	if h.Epoch != 2 || h.Node != "n2" {
		t.Errorf("header after the restart: %+v, want n2 at epoch 2", h)
	}
	increasing(t, "attached disk across the restart", recs)
	if r := recs[len(recs)-1]; r.Node != "n2" || r.Epoch != 2 {
		t.Errorf("last record %+v, want n2 at epoch 2", r)
	}
}
