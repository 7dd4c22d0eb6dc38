package qemu

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/supervise"
	"github.com/haven-ha/haven/driver/qemu/testguest"
)

// images makes raw images of 1 MiB on the shared storage, under web/.
func images(t *testing.T, shared string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(shared, "web"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(shared, "web", n+".img"), make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func disk(name string, slot int) driver.DiskSpec {
	return driver.DiskSpec{Name: name, Path: "web/" + name + ".img", Slot: slot}
}

// locked reports whether a process holds the image's write lock: qemu-io
// opens it for writing, which QEMU's lock refuses while a device of a
// running QEMU writes it.
func locked(t *testing.T, shared, name string) bool {
	t.Helper()
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io is not installed (qemu-utils)")
	}
	return exec.Command("qemu-io", "-f", "raw", "-c", "read 0 512", filepath.Join(shared, "web", name+".img")).Run() != nil
}

// blockNodes lists the block nodes of the VM's QEMU.
func blockNodes(t *testing.T, d *Driver, id driver.VMID) []string {
	t.Helper()
	_, mon, _, _ := d.lookup(id).snapshot()
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := mon.Execute(t.Context(), "query-named-block-nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range nodes {
		out = append(out, n.NodeName)
	}
	return out
}

// devices maps the disk devices QEMU has for the VM on n to the image
// each reads, by name ("disk-1": "d").
func devices(t *testing.T, n node, id driver.VMID) map[string]string {
	t.Helper()
	_, mon, _, _ := n.d.lookup(id).snapshot()
	var blocks []struct {
		QDev     string `json:"qdev"`
		Inserted *struct {
			File string `json:"file"`
		} `json:"inserted"`
	}
	if err := mon.Execute(t.Context(), "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, b := range blocks {
		if b.Inserted != nil {
			out[strings.TrimPrefix(b.QDev, "/machine/peripheral/")] = strings.TrimSuffix(filepath.Base(b.Inserted.File), ".img")
		}
	}
	return out
}

// guestSees waits until the guest's last list of its disks has n of them.
func guestSees(t *testing.T, s *testguest.Serial, n int) {
	t.Helper()
	s.Wait(t, 30*time.Second, fmt.Sprintf("the guest to see %d disks", n), func(s *testguest.Serial) bool {
		m, ok := s.LastMessage("haven-disks")
		return ok && len(strings.Fields(m.Text))-1 == n
	})
}

func diskNames(t *testing.T, n node, id driver.VMID) []string {
	t.Helper()
	disks, err := n.d.Disks(id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, dk := range disks {
		out = append(out, dk.Name)
	}
	return out
}

// Disks leave and join a running guest at their slots, the images' locks
// follow them, and a live move to a target started from the group's spec
// (the disks in the spec's order, not the order they came) lands on the
// same devices: the guest counts on.
func TestHotPlugThenMove(t *testing.T) {
	needQEMU(t)
	n1, n2 := twoNodes(t)
	shared := n1.d.cfg.SharedDir
	images(t, shared, "a", "b", "c", "d")
	spec := movingGuest(t, 1)
	spec.Disks = []driver.DiskSpec{disk("a", 0), disk("b", 1), disk("c", 2)}
	src := bootGuest(t, n1, spec)
	if got, want := devices(t, n1, web), map[string]string{"disk-0": "a", "disk-1": "b", "disk-2": "c"}; !maps.Equal(got, want) {
		t.Fatalf("QEMU has disks %v, want %v", got, want)
	}
	guestSees(t, src, 3)

	ctx := t.Context()
	if err := n1.d.DetachDisk(ctx, web, 1, "b"); err != nil {
		t.Fatal(err)
	}
	if got, want := devices(t, n1, web), map[string]string{"disk-0": "a", "disk-2": "c"}; !maps.Equal(got, want) {
		t.Errorf("after detaching b QEMU has %v, want %v", got, want)
	}
	if locked(t, shared, "b") {
		t.Error("b's image is still locked after its detach: its block node stayed")
	}
	guestSees(t, src, 2)
	if !locked(t, shared, "a") {
		t.Fatal("a's image is not locked while the VM runs: the lock test proves nothing")
	}
	// The slot b left is the lowest free one, which the cluster gives
	// the next disk; a taken slot is refused, changing nothing.
	if err := n1.d.AttachDisk(ctx, web, 1, disk("d", 2)); err == nil {
		t.Error("attached d at c's slot")
	}
	if err := n1.d.AttachDisk(ctx, web, 1, disk("d", 1)); err != nil {
		t.Fatal(err)
	}
	if got, want := devices(t, n1, web), map[string]string{"disk-0": "a", "disk-1": "d", "disk-2": "c"}; !maps.Equal(got, want) {
		t.Errorf("after attaching d QEMU has %v, want %v", got, want)
	}
	if !locked(t, shared, "d") {
		t.Error("d's image is not locked once attached")
	}
	guestSees(t, src, 3)
	if got, want := diskNames(t, n1, web), []string{"a", "c", "d"}; !slices.Equal(got, want) {
		t.Errorf("Disks: %v, want %v", got, want)
	}

	target := spec
	target.Epoch = 2
	target.Disks = []driver.DiskSpec{disk("a", 0), disk("c", 2), disk("d", 1)}
	if _, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	// The source is paused now; its console was last read before the
	// move, which ticked on for as long as the move took.
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last()
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
	dst := n2.console(t, web)
	first := tickAfter(t, dst, 0, 10*time.Second)
	if first.N <= last.N || first.N > last.N+100 {
		b, _ := os.ReadFile(dst.Path())
		t.Errorf("the target's first tick is %d, the source's last %d: the guest did not carry on; the target's console:\n%s", first.N, last.N, b)
	}
	if err := n1.d.Kill(web, 1); err != nil {
		t.Fatal(err)
	}
	if got, want := devices(t, n2, web), map[string]string{"disk-0": "a", "disk-1": "d", "disk-2": "c"}; !maps.Equal(got, want) {
		t.Errorf("the target's QEMU has %v, want %v", got, want)
	}
	if err := n2.d.DetachDisk(ctx, web, 2, "d"); err != nil {
		t.Fatal(err)
	}
	if locked(t, shared, "d") {
		t.Error("d's image is still locked after its detach on the target")
	}
	guestSees(t, dst, 2)
	n := dst.Last().N
	dst.Wait(t, 10*time.Second, "the guest to tick on after the detach", func(s *testguest.Serial) bool { return s.Last().N > n+10 })
}

// An agent that dies inside a hot-plug leaves vm.json naming a disk QEMU
// may not have: the driver that takes the VM back keeps what QEMU has,
// and removes a block node no device uses, which holds the image open
// and its node name, which the disk's next attach needs.
func TestTakeBackDisks(t *testing.T) {
	needQEMU(t)
	run, shared := runDir(t), t.TempDir()
	images(t, shared, "a", "b", "c")
	d := newTestDriver(t, "n1", run, shared)
	spec := driver.VMSpec{ID: web, Epoch: 3, VCPUs: 1, MemoryBytes: 64 << 20, Disks: []driver.DiskSpec{disk("a", 0)}}
	if err := d.Start(context.Background(), spec, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := d.AttachDisk(t.Context(), web, 3, disk("b", 1)); err != nil {
		t.Fatal(err)
	}
	// An attach cut short after blockdev-add: recorded, its image open,
	// no device.
	v := d.lookup(web)
	_, mon, _, _ := v.snapshot()
	c := disk("c", 2)
	if err := v.setDisks(append(v.disksNow(), c)); err != nil {
		t.Fatal(err)
	}
	if err := mon.BlockdevAdd(t.Context(), blockdevArgs(shared, c)); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(blockNodes(t, d, web), "drive-2") {
		t.Fatal("no block node drive-2 after blockdev-add: the test proves nothing")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d2 := newTestDriver(t, "n1", run, shared)
	got, err := d2.Disks(web)
	if err != nil {
		t.Fatal(err)
	}
	if want := []driver.DiskSpec{disk("a", 0), disk("b", 1)}; !slices.Equal(got, want) {
		t.Errorf("the VM taken back has disks %v, want %v", got, want)
	}
	if slices.Contains(blockNodes(t, d2, web), "drive-2") {
		t.Error("the block node of the cut-short attach stayed")
	}
	// The attach, asked again, goes through.
	if err := d2.AttachDisk(t.Context(), web, 3, c); err != nil {
		t.Errorf("the attach asked again: %v", err)
	}
}

// A QEMU that could not lock a disk image at its start says which image,
// in words an operator reads in the group's reason, without the
// supervisor's own log lines around QEMU's.
func TestExitNamesAHeldImage(t *testing.T) {
	log := filepath.Join(t.TempDir(), "qemu.log")
	if err := os.WriteFile(log, []byte(`time=2026-12-01T02:55:29.300Z level=INFO msg="child started" sub=supervise pid=27672
qemu-system-x86_64: -device {"drive":"drive-0","driver":"scsi-hd","id":"disk-0","lun":0}: Failed to get "write" lock
Is another process using the image [/shared/held/root.img]?
time=2026-12-01T02:55:29.384Z level=INFO msg="child exited" sub=supervise pid=27672 how="exit status 1"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	words := lastWords(log)
	if strings.Contains(words, "time=") || !strings.HasPrefix(words, "qemu-system-x86_64: -device") {
		t.Errorf("last words %q: want QEMU's lines only", words)
	}
	err := exitError(supervise.Exit{Code: 1}, words)
	if want := "disk image /shared/held/root.img is in use by another process"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("exit error %q, want it to begin %q", err, want)
	}
	if err := exitError(supervise.Exit{Code: 1}, "qemu-system-x86_64: -machine foo: unsupported machine type"); strings.Contains(err.Error(), "in use") {
		t.Errorf("another exit reads as a held image: %q", err)
	}
}
