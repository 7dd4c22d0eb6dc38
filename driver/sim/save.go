package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/haven-ha/haven/driver"
)

// SaveState implements driver.QuickMigrator. The file is the migration
// stream of wire.go without rounds: header, the non-zero pages with their
// page numbers (so a mostly empty guest makes a small file), device
// state, checksum. It is written beside its final name and renamed there
// once synced, so a file at path is always whole.
func (d *Driver) SaveState(ctx context.Context, id driver.VMID, epoch uint64, path string, progress func(driver.Progress)) (driver.MigrateResult, error) {
	if err := ctx.Err(); err != nil {
		return driver.MigrateResult{}, err
	}
	if !filepath.IsLocal(path) {
		return driver.MigrateResult{}, fmt.Errorf("save %s: path %q must be relative and inside the shared directory", id, path)
	}
	if progress == nil {
		progress = func(driver.Progress) {}
	}
	v, m, err := d.beginMove("save", id, epoch, false)
	if err != nil {
		return driver.MigrateResult{}, err
	}
	res, err := d.save(ctx, v, m, filepath.Join(d.cfg.SharedDir, path), progress)
	if err != nil {
		err = fmt.Errorf("save %s at epoch %d to %s: %w", id, epoch, path, err)
		v.log.Warn("save failed", "err", err)
	}
	v.endMove(m, err)
	return res, err
}

func (d *Driver) save(ctx context.Context, v *vm, m *memory, path string, progress func(driver.Progress)) (_ driver.MigrateResult, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return driver.MigrateResult{}, err
	}
	// The file first: a guest need not pause for a save that cannot start.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return driver.MigrateResult{}, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	v.mu.Lock()
	if err := v.pause(); err != nil {
		v.mu.Unlock()
		return driver.MigrateResult{}, fmt.Errorf("%w: %v", errVMGone, err)
	}
	paused := time.Now()
	dev := v.device()
	v.mu.Unlock()

	out := &link{ctx: ctx, w: f}
	fw := newFrameWriter(out, 1<<20)
	report := func() {
		progress(driver.Progress{Phase: "save", Round: 1, MemoryBytes: m.size(), BytesSent: out.sent})
	}
	report()
	sumc := make(chan uint64, 1)
	go func() {
		sums := make([]uint64, m.pages())
		m.pageSums(sums)
		sumc <- sumOfSums(sums)
	}()
	all := newBitmap(m.pages())
	all.setAll(m.pages())
	h := header{pageSize: PageSize, memBytes: m.size(), epoch: v.spec.Epoch, id: v.spec.ID}
	err = fw.frame(frameHeader, h.encode(), nil)
	if err == nil {
		err = newPageSender(m, fw, batchPages).send(all, unlocked, ctx.Err)
	}
	if err == nil {
		err = fw.frame(frameDevice, dev.encode(), nil)
	}
	sum := <-sumc // before any return: a resume would race the hash
	if err != nil {
		return driver.MigrateResult{}, err
	}
	v.log.Info("vm paused for switchover", "checksum", sum, "counter", dev.counter)
	if err := fw.frame(frameChecksum, le64(sum), nil); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := fw.flush(); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := f.Sync(); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := f.Close(); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return driver.MigrateResult{}, err
	}
	// The rename is durable only once the directory is.
	if err := syncDir(dir); err != nil {
		return driver.MigrateResult{}, err
	}
	report()
	return driver.MigrateResult{Rounds: 1, BytesSent: out.sent, Checksum: sum, Paused: time.Since(paused)}, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// RestoreState implements driver.QuickMigrator: it reads the file as
// MigrateIn reads a stream, so the same checks hold, the checksum above
// all, and a file cut short is refused like a broken connection.
func (d *Driver) RestoreState(ctx context.Context, spec driver.VMSpec, path string) error {
	if !filepath.IsLocal(path) {
		return fmt.Errorf("restore %s: path %q must be relative and inside the shared directory", spec.ID, path)
	}
	f, err := os.Open(filepath.Join(d.cfg.SharedDir, path))
	if err != nil {
		return fmt.Errorf("restore %s: %w", spec.ID, err)
	}
	defer f.Close()
	err = d.receive(ctx, spec, newFrameReader(f, 64<<10), newFrameWriter(io.Discard, 64))
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("%w: the file ends before the checksum", err)
	}
	if err != nil {
		return fmt.Errorf("restore %s at epoch %d from %s: %w", spec.ID, spec.Epoch, path, err)
	}
	return nil
}
