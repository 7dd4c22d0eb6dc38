package sim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/haven-ha/haven/driver"
)

var _ driver.DiskHotPlugger = (*Driver)(nil)

// AttachDisk implements driver.DiskHotPlugger. The checks, the claim and
// the new file all happen under the VM's mutex, the one its guest loop
// takes: the guest's next tick writes the disk, and no tick sees half an
// attach. The claim's fsync is taken with the mutex held, so the guest
// waits for it, as a real guest waits for a hot-plug.
func (d *Driver) AttachDisk(ctx context.Context, id driver.VMID, epoch uint64, disk driver.DiskSpec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := disk.Validate(); err != nil {
		return fmt.Errorf("attach disk to %s: %w: %v", id, driver.ErrInvalidSpec, err)
	}
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("attach disk %s to %s: %w", disk.Name, id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.hotPluggable("attach disk "+disk.Name+" to", epoch); err != nil {
		return err
	}
	for _, dk := range v.spec.Disks {
		switch {
		case dk.Name == disk.Name && dk.SameFile(disk) && format(dk) == format(disk):
			return nil // attached already: the caller repeats itself
		case dk.Name == disk.Name:
			return fmt.Errorf("attach disk %s to %s: %w: a disk of that name is attached (%s, %s)", disk.Name, id, driver.ErrInvalidSpec, dk.Path, format(dk))
		case dk.SameFile(disk):
			return fmt.Errorf("attach disk %s to %s: %w: %s is attached already, as disk %s", disk.Name, id, driver.ErrInvalidSpec, disk.Path, dk.Name)
		}
	}
	p := filepath.Join(d.cfg.SharedDir, disk.Path)
	if err := ClaimDisk(p, v.spec.Node, epoch); err != nil {
		// A *FencedError is driver.ErrStaleEpoch, and an I/O error may
		// pass; anything else is a file that is no sim disk, which this
		// driver cannot use.
		var fenced *FencedError
		var io *os.PathError
		if errors.As(err, &fenced) || errors.As(err, &io) {
			return fmt.Errorf("attach disk %s to %s at epoch %d: %w", disk.Name, id, epoch, err)
		}
		return fmt.Errorf("attach disk %s to %s: %w: %v", disk.Name, id, driver.ErrInvalidSpec, err)
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("attach disk %s to %s: %w", disk.Name, id, err)
	}
	// New slices: nothing may hold the old ones, but a reader that does
	// keeps what it read.
	v.spec.Disks = append(slices.Clip(v.spec.Disks), disk)
	v.paths = append(slices.Clip(v.paths), p)
	v.disks = append(slices.Clip(v.disks), f)
	v.log.Info("disk attached", "disk", disk.Name, "path", disk.Path, "counter", v.counter)
	return nil
}

// DetachDisk implements driver.DiskHotPlugger: the file is closed under
// the VM's mutex, so the tick after the call writes the disk no more.
func (d *Driver) DetachDisk(ctx context.Context, id driver.VMID, epoch uint64, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("detach disk %s from %s: %w", name, id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.hotPluggable("detach disk "+name+" from", epoch); err != nil {
		return err
	}
	i := slices.IndexFunc(v.spec.Disks, func(dk driver.DiskSpec) bool { return dk.Name == name })
	if i < 0 {
		return nil // not attached: the caller repeats itself
	}
	// A running VM has opened every disk of its spec (attach), in order.
	v.disks[i].Close()
	v.spec.Disks = slices.Concat(v.spec.Disks[:i], v.spec.Disks[i+1:])
	v.paths = slices.Concat(v.paths[:i], v.paths[i+1:])
	v.disks = slices.Concat(v.disks[:i], v.disks[i+1:])
	v.log.Info("disk detached", "disk", name, "counter", v.counter)
	return nil
}

// Disks implements driver.DiskHotPlugger.
func (d *Driver) Disks(id driver.VMID) ([]driver.DiskSpec, error) {
	v := d.lookup(id)
	if v == nil {
		return nil, fmt.Errorf("disks of %s: %w", id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.spec.Disks), nil
}

// hotPluggable refuses a hot-plug of a VM not running at epoch, with mu
// held. The gate is applied first, so a VM past its lease reads frozen.
func (v *vm) hotPluggable(op string, epoch uint64) error {
	v.gate()
	switch {
	case epoch != v.spec.Epoch:
		return fmt.Errorf("%s %s at epoch %d: %w: vm is at epoch %d", op, v.spec.ID, epoch, driver.ErrStaleEpoch, v.spec.Epoch)
	case v.state != driver.StateRunning:
		return fmt.Errorf("%s %s: %w: it is %s", op, v.spec.ID, driver.ErrInvalidState, v.state)
	case v.moving:
		return fmt.Errorf("%s %s: %w: a migration of it is under way", op, v.spec.ID, driver.ErrInvalidState)
	}
	return nil
}

// format is a disk's image format, raw when empty.
func format(d driver.DiskSpec) string {
	if d.Format == "" {
		return "raw"
	}
	return d.Format
}
