package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/qmp"
)

// Disks on a running VM (driver.DiskHotPlugger): blockdev-add and
// device_add to attach; device_del, the DEVICE_DELETED event and
// blockdev-del to detach (QEMU.md). A disk's device and block node are
// named by its slot, which is also its LUN on the VM's SCSI bus, so a
// live move's target, started from the group's spec, builds the same
// devices at the same places as the source has after its hot-plugs.
//
// vm.json follows the disks, for an agent restarted while the VM runs:
// an attach is recorded before QEMU gets the disk, a detach once QEMU has
// let go of it, so the record names every disk QEMU may hold, and a
// taken-back VM keeps those QEMU still has (adoptDisks). QEMU's image
// locks stay on: a file another QEMU holds is refused by blockdev-add.

// maxLUN is the highest LUN virtio-scsi addresses.
const maxLUN = 16383

// unplugPoll is how often a detach looks for the device to be gone, in
// case its DEVICE_DELETED went to an earlier, abandoned call.
const unplugPoll = 200 * time.Millisecond

// diskIDs are the names QEMU knows the disk at slot by: its device and
// its block node.
func diskIDs(slot int) (device, node string) {
	s := strconv.Itoa(slot)
	return "disk-" + s, "drive-" + s
}

// blockdevArgs is blockdev-add's argument (and -blockdev's) for d.
func blockdevArgs(sharedDir string, d driver.DiskSpec) map[string]any {
	format := d.Format
	if format == "" {
		format = "raw"
	}
	_, node := diskIDs(d.Slot)
	return map[string]any{
		"driver": format, "node-name": node,
		"file": map[string]any{"driver": "file", "filename": filepath.Join(sharedDir, d.Path)},
	}
}

// deviceArgs is device_add's argument (and -device's) for d: a SCSI disk
// at LUN d.Slot of the VM's one virtio-scsi bus.
func deviceArgs(d driver.DiskSpec) map[string]any {
	dev, node := diskIDs(d.Slot)
	return map[string]any{
		"driver": "scsi-hd", "id": dev, "drive": node,
		"bus": "scsi0.0", "channel": 0, "scsi-id": 0, "lun": d.Slot,
	}
}

// checkDisks refuses disks QEMU cannot place: slots out of the bus's
// range or taken twice, a path QEMU's option syntax cannot take, a file
// missing on this node.
func (d *Driver) checkDisks(disks []driver.DiskSpec) error {
	slots := map[int]string{}
	for i, dk := range disks {
		switch other, taken := slots[dk.Slot]; {
		case dk.Slot < 0 || dk.Slot > maxLUN:
			return fmt.Errorf("disks[%d].slot %d: must be within 0..%d", i, dk.Slot, maxLUN)
		case taken:
			return fmt.Errorf("disks[%d].slot %d: disk %s is there already", i, dk.Slot, other)
		}
		slots[dk.Slot] = dk.Name
		if _, err := os.Stat(filepath.Join(d.cfg.SharedDir, dk.Path)); err != nil {
			return fmt.Errorf("disks[%d]: %w", i, err)
		}
	}
	return nil
}

// beginHotPlug checks that the VM at epoch runs and may change its disks
// now, and marks it so that no move begins meanwhile. v.cmd is held.
func (v *vm) beginHotPlug(op string, epoch uint64) (*qmp.Client, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch st := v.stateLocked(); {
	case epoch != v.epoch:
		return nil, fmt.Errorf("%s %s at epoch %d: %w: the VM is at epoch %d", op, v.id, epoch, driver.ErrStaleEpoch, v.epoch)
	case v.moving:
		// The move's target was prepared with the disks the VM has.
		return nil, fmt.Errorf("%s %s: %w: a move of it is running", op, v.id, driver.ErrInvalidState)
	case st != driver.StateRunning || v.mon == nil:
		// Frozen, the VM may do no I/O, and a disk's claim or release
		// is I/O; paused or incoming, it belongs to a move.
		return nil, fmt.Errorf("%s %s: %w: it is %s", op, v.id, driver.ErrInvalidState, st)
	}
	v.plugging = true
	return v.mon, nil
}

func (v *vm) endHotPlug() {
	v.mu.Lock()
	v.plugging = false
	v.mu.Unlock()
}

// setDisks records disks as the VM's, in memory and in vm.json.
func (v *vm) setDisks(disks []driver.DiskSpec) error {
	v.mu.Lock()
	v.spec.Disks = disks
	rec := record{Spec: v.spec, Machine: v.machine}
	v.mu.Unlock()
	return writeRecord(v.dir, rec)
}

func writeRecord(dir string, rec record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	// Renamed into place: an agent killed mid-write must not leave a
	// record that loses the VM.
	tmp := filepath.Join(dir, "vm.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "vm.json"))
}

// disksNow is a copy of the VM's disks.
func (v *vm) disksNow() []driver.DiskSpec {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.spec.Disks)
}

// hotPlug runs plug on the VM at epoch, with its slow-command lock held
// and no move able to begin meanwhile.
func (d *Driver) hotPlug(op string, id driver.VMID, epoch uint64, plug func(v *vm, mon *qmp.Client) error) error {
	v := d.lookup(id)
	if v == nil {
		return fmt.Errorf("%s %s: %w", op, id, driver.ErrNotFound)
	}
	v.cmd.Lock()
	defer v.cmd.Unlock()
	mon, err := v.beginHotPlug(op, epoch)
	if err != nil {
		return err
	}
	defer v.endHotPlug()
	return plug(v, mon)
}

// AttachDisk implements driver.DiskHotPlugger.
func (d *Driver) AttachDisk(ctx context.Context, id driver.VMID, epoch uint64, disk driver.DiskSpec) error {
	op := "attach disk " + disk.Name + " to"
	if err := disk.Validate(); err != nil {
		return fmt.Errorf("%s %s: %w: %v", op, id, driver.ErrInvalidSpec, err)
	}
	return d.hotPlug(op, id, epoch, func(v *vm, mon *qmp.Client) error {
		have := v.disksNow()
		for _, dk := range have {
			switch {
			case dk.Name == disk.Name && dk.SameFile(disk) && diskFormat(dk) == diskFormat(disk) && dk.Slot == disk.Slot:
				return nil // attached already: the caller repeats itself
			case dk.Name == disk.Name:
				return fmt.Errorf("%s %s: %w: a disk of that name is attached (%s, %s, slot %d)", op, id, driver.ErrInvalidSpec, dk.Path, diskFormat(dk), dk.Slot)
			case dk.SameFile(disk):
				return fmt.Errorf("%s %s: %w: %s is attached already, as disk %s", op, id, driver.ErrInvalidSpec, disk.Path, dk.Name)
			}
		}
		if err := d.checkDisks(append(slices.Clone(have), disk)); err != nil {
			return fmt.Errorf("%s %s: %w: %v", op, id, driver.ErrInvalidSpec, err)
		}
		if strings.Contains(disk.Path, ",") {
			return fmt.Errorf("%s %s: %w: path %q: QEMU's option syntax cannot take a comma", op, id, driver.ErrInvalidSpec, disk.Path)
		}
		// Recorded first: an agent that dies from here on finds QEMU
		// with the disk or without it, and keeps what QEMU has.
		if err := v.setDisks(append(slices.Clone(have), disk)); err != nil {
			return fmt.Errorf("%s %s: %w", op, id, err)
		}
		if err := d.plugIn(ctx, mon, disk); err != nil {
			if rerr := v.setDisks(have); rerr != nil {
				d.log.Warn("cannot record a failed attach", "vm", id.String(), "disk", disk.Name, "error", rerr)
			}
			return fmt.Errorf("%s %s at epoch %d: %w", op, id, epoch, err)
		}
		d.log.Info("disk attached", "vm", id.String(), "epoch", epoch, "disk", disk.Name, "path", disk.Path, "slot", disk.Slot)
		return nil
	})
}

// plugIn gives QEMU the disk's image and the guest its device. A block
// node left by an attach that never got its device (its agent died) is
// removed first; one a device uses stays, and blockdev-add then fails.
func (d *Driver) plugIn(ctx context.Context, mon *qmp.Client, disk driver.DiskSpec) error {
	dev, node := diskIDs(disk.Slot)
	_ = mon.BlockdevDel(ctx, node)
	if err := mon.BlockdevAdd(ctx, blockdevArgs(d.cfg.SharedDir, disk)); err != nil {
		return fmt.Errorf("blockdev-add %s: %w", node, imageHeld(disk.Path, err))
	}
	if err := mon.DeviceAdd(ctx, deviceArgs(disk)); err != nil {
		// The image goes back: nothing uses the node.
		if derr := mon.BlockdevDel(context.WithoutCancel(ctx), node); derr != nil {
			d.log.Warn("cannot remove the block node of a failed attach", "node", node, "error", derr)
		}
		return fmt.Errorf("device_add %s: %w", dev, err)
	}
	return nil
}

// DetachDisk implements driver.DiskHotPlugger.
func (d *Driver) DetachDisk(ctx context.Context, id driver.VMID, epoch uint64, name string) error {
	op := "detach disk " + name + " from"
	return d.hotPlug(op, id, epoch, func(v *vm, mon *qmp.Client) error {
		have := v.disksNow()
		i := slices.IndexFunc(have, func(dk driver.DiskSpec) bool { return dk.Name == name })
		if i < 0 {
			return nil // not attached: the caller repeats itself
		}
		if err := unplug(ctx, mon, have[i].Slot); err != nil {
			return fmt.Errorf("%s %s at epoch %d: %w", op, id, epoch, err)
		}
		if err := v.setDisks(slices.Delete(slices.Clone(have), i, i+1)); err != nil {
			return fmt.Errorf("%s %s: %w", op, id, err)
		}
		d.log.Info("disk detached", "vm", id.String(), "epoch", epoch, "disk", name, "slot", have[i].Slot)
		return nil
	})
}

// unplug takes the device at slot from the guest and, once QEMU says it
// is gone, the block node: from then on QEMU does no I/O to the image and
// holds no lock on it. A guest that keeps the device past ctx keeps it.
func unplug(ctx context.Context, mon *qmp.Client, slot int) error {
	dev, node := diskIDs(slot)
	sub := mon.Subscribe(qmp.EventDeviceDeleted)
	defer sub.Close()
	present, err := hasDevice(ctx, mon, dev)
	if err != nil {
		return err
	}
	if present {
		// A second device_del while the first is under way fails, and
		// the event may have gone to that first call: the device's
		// presence is what counts.
		_ = mon.DeviceDel(ctx, dev)
		tick := time.NewTicker(unplugPoll)
		defer tick.Stop()
		for present {
			wctx, cancel := context.WithTimeout(ctx, unplugPoll)
			_, werr := sub.Wait(wctx, qmp.DeviceDeleted(dev))
			cancel()
			if werr == nil {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("device %s still present: the guest has not released it: %w", dev, ctx.Err())
			}
			if present, err = hasDevice(ctx, mon, dev); err != nil {
				return err
			}
		}
	}
	if err := mon.BlockdevDel(ctx, node); err != nil && !isNotFound(err) {
		return fmt.Errorf("blockdev-del %s: %w", node, err)
	}
	return nil
}

// hasDevice reports whether QEMU has a device of that id.
func hasDevice(ctx context.Context, mon *qmp.Client, id string) (bool, error) {
	props, err := mon.QOMList(ctx, "/machine/peripheral")
	if err != nil {
		return false, fmt.Errorf("qom-list: %w", err)
	}
	return slices.ContainsFunc(props, func(p qmp.ObjectProperty) bool { return p.Name == id }), nil
}

// isNotFound is QMP's answer about a block node that does not exist.
func isNotFound(err error) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && (qe.Class == "DeviceNotFound" || strings.Contains(qe.Desc, "not found") || strings.Contains(qe.Desc, "Cannot find"))
}

// Disks implements driver.DiskHotPlugger.
func (d *Driver) Disks(id driver.VMID) ([]driver.DiskSpec, error) {
	v := d.lookup(id)
	if v == nil {
		return nil, fmt.Errorf("disks of %s: %w", id, driver.ErrNotFound)
	}
	return v.disksNow(), nil
}

// adoptDisks keeps, of the disks a taken-back VM's record names, those its
// QEMU has: an agent that died within a hot-plug recorded an attach before
// QEMU got the disk and a detach after QEMU let it go. The block node of a
// disk QEMU has no device for (an attach or a detach cut short) is
// removed, so that it holds no lock on an image the group let go of.
func (d *Driver) adoptDisks(ctx context.Context, v *vm, mon *qmp.Client) error {
	props, err := mon.QOMList(ctx, "/machine/peripheral")
	if err != nil {
		return fmt.Errorf("qom-list: %w", err)
	}
	have := v.disksNow()
	keep := have[:0:0]
	for _, dk := range have {
		dev, node := diskIDs(dk.Slot)
		if slices.ContainsFunc(props, func(p qmp.ObjectProperty) bool { return p.Name == dev }) {
			keep = append(keep, dk)
			continue
		}
		if err := mon.BlockdevDel(ctx, node); err != nil && !isNotFound(err) {
			return fmt.Errorf("blockdev-del %s: %w", node, err)
		}
		d.log.Warn("disk of a taken-back vm not in its QEMU; dropped", "vm", v.id.String(), "disk", dk.Name, "slot", dk.Slot)
	}
	if len(keep) == len(have) {
		return nil
	}
	return v.setDisks(keep)
}

// imageHeld names the image in QEMU's refusal to lock it: another process
// holds it (a VM started by hand, or the frozen QEMU of the group's last
// owner, which its supervisor kills after KillFrozenAfter), so a later
// try may succeed.
func imageHeld(path string, err error) error {
	if err != nil && strings.Contains(err.Error(), `Failed to get "write" lock`) {
		return fmt.Errorf("disk image %s is in use by another process (QEMU's image lock): %w", path, err)
	}
	return err
}

func diskFormat(d driver.DiskSpec) string {
	if d.Format == "" {
		return "raw"
	}
	return d.Format
}
