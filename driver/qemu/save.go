package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/qmp"
)

// A state file is a header of stateHeaderSize bytes, then QEMU's
// migration stream of the stopped guest. The header names the VM, its
// machine and the epoch it was saved at, for RestoreState's refusals, and
// the stream's length and CRC-32C, which QEMU's stream lacks: QEMU checks
// its sections' framing but not the pages' contents, and a file on shared
// storage can come back cut short or changed. The header is written last,
// once the stream is in and its checksum known.
const (
	stateMagic      = "haven-qemu-state 1\n"
	stateHeaderSize = 4096
	// Names of the descriptors handed to QEMU (getfd).
	saveFD    = "haven-save"
	restoreFD = "haven-restore"
)

type stateHeader struct {
	VM          shape  `json:"vm"`
	StreamBytes int64  `json:"stream_bytes"`
	CRC32C      uint32 `json:"crc32c"`
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (h stateHeader) encode() ([]byte, error) {
	j, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	b := make([]byte, stateHeaderSize)
	n := copy(b, stateMagic)
	if n+len(j)+1 > len(b) {
		return nil, fmt.Errorf("state header of %d bytes: more than %d", n+len(j)+1, stateHeaderSize)
	}
	copy(b[n:], append(j, '\n'))
	return b, nil
}

func readStateHeader(f *os.File) (stateHeader, error) {
	b := make([]byte, stateHeaderSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		return stateHeader{}, fmt.Errorf("not a state file: %w", err)
	}
	rest, ok := bytes.CutPrefix(b, []byte(stateMagic))
	if !ok {
		return stateHeader{}, errors.New("not a state file, or of another version")
	}
	var h stateHeader
	if err := json.NewDecoder(bytes.NewReader(rest)).Decode(&h); err != nil {
		return stateHeader{}, fmt.Errorf("state file header: %w", err)
	}
	return h, nil
}

// streamSum is the CRC-32C of the n bytes of stream after the header.
func streamSum(f *os.File, n int64) (uint32, error) {
	h := crc32.New(castagnoli)
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, stateHeaderSize, n), make([]byte, 1<<20)); err != nil {
		return 0, err
	}
	return h.Sum32(), nil
}

// checkSize refuses a file cut short, or longer than its header says,
// before QEMU reads it.
func (h stateHeader) checkSize(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != stateHeaderSize+h.StreamBytes {
		return fmt.Errorf("state file of %d bytes, its header says %d", st.Size(), stateHeaderSize+h.StreamBytes)
	}
	return nil
}

// verify checks the file against its header.
func (h stateHeader) verify(f *os.File) error {
	if err := h.checkSize(f); err != nil {
		return err
	}
	sum, err := streamSum(f, h.StreamBytes)
	if err != nil {
		return err
	}
	if sum != h.CRC32C {
		return checksumError(sum, h.CRC32C)
	}
	return nil
}

func checksumError(got, want uint32) error {
	return fmt.Errorf("state file checksum %08x, its header says %08x: the file changed after it was saved", got, want)
}

// SaveState implements driver.QuickMigrator: the guest stopped, QEMU's
// migration stream written to a file through a descriptor (QEMU 7.2 has
// no file: URI), synced, and renamed to path, so that a file at path is
// always whole.
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
	v, mon, err := d.beginMove("save", id, epoch)
	if err != nil {
		return driver.MigrateResult{}, err
	}
	res, err := d.save(ctx, v, mon, filepath.Join(d.cfg.SharedDir, path), progress)
	if err != nil {
		d.rollBack(v, mon)
		err = fmt.Errorf("save %s at epoch %d to %s: %w", id, epoch, path, err)
		d.log.Warn("save failed; the vm runs on here", "vm", id.String(), "error", err)
	} else {
		d.log.Info("vm saved, paused", "vm", id.String(), "epoch", epoch, "path", path, "bytes", res.BytesSent, "took", res.Paused)
	}
	v.endMove(err != nil)
	return res, err
}

func (d *Driver) save(ctx context.Context, v *vm, mon *qmp.Client, path string, progress func(driver.Progress)) (_ driver.MigrateResult, err error) {
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
	// QEMU writes at the descriptor's offset, which it shares with f:
	// after the header's room.
	if _, err := f.Seek(stateHeaderSize, io.SeekStart); err != nil {
		return driver.MigrateResult{}, err
	}
	sub := mon.Subscribe(qmp.EventMigration)
	defer sub.Close()
	err = bounded(ctx, qmpTimeout, func(ctx context.Context) error {
		if err := mon.MigrateSetCapabilities(ctx, moveCaps(false, driver.MigrateOptions{})); err != nil {
			return err
		}
		if err := mon.MigrateSetParameters(ctx, d.plainStream(qmp.MigrationParameters{MaxBandwidth: new(unlimited)})); err != nil {
			return err
		}
		return mon.Stop(ctx)
	})
	if err != nil {
		return driver.MigrateResult{}, err
	}
	stopped := time.Now()
	v.paused(mon)
	mem := v.spec.MemoryBytes
	report := func(sent, left int64) {
		progress(driver.Progress{Phase: "save", Round: 1, MemoryBytes: mem, BytesSent: sent, RemainingBytes: left})
	}
	report(0, mem)
	if err := ctx.Err(); err != nil {
		return driver.MigrateResult{}, err // a report that blocked past the cancellation
	}
	err = bounded(ctx, qmpTimeout, func(ctx context.Context) error {
		if err := mon.Getfd(ctx, saveFD, f); err != nil {
			return err
		}
		if err := mon.Migrate(ctx, "fd:"+saveFD); err != nil {
			_ = mon.Closefd(ctx, saveFD)
			return err
		}
		return nil
	})
	if err != nil {
		return driver.MigrateResult{}, err
	}
	if err := awaitSaved(ctx, mon, sub, report); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := waitRunState(ctx, mon, qmp.StatusPostMigrate); err != nil {
		return driver.MigrateResult{}, err
	}

	st, err := f.Stat()
	if err != nil {
		return driver.MigrateResult{}, err
	}
	n := st.Size() - stateHeaderSize
	sum, err := streamSum(f, n)
	if err != nil {
		return driver.MigrateResult{}, err
	}
	hdr, err := stateHeader{VM: v.shape(), StreamBytes: n, CRC32C: sum}.encode()
	if err != nil {
		return driver.MigrateResult{}, err
	}
	if _, err := f.WriteAt(hdr, 0); err != nil {
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
	report(n, 0)
	return driver.MigrateResult{Rounds: 1, BytesSent: n, Checksum: uint64(sum), Paused: time.Since(stopped)}, nil
}

// awaitSaved waits for QEMU to have written the whole stream, reporting
// how far it got meanwhile.
func awaitSaved(ctx context.Context, mon *qmp.Client, sub *qmp.Subscription, report func(sent, left int64)) error {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-sub.C():
			if !ok {
				return fmt.Errorf("qemu: %w", mon.Err())
			}
			var data qmp.MigrationEventData
			if err := ev.Decode(&data); err != nil {
				return err
			}
			switch data.Status {
			case qmp.MigrationCompleted:
				return nil
			case qmp.MigrationFailed, qmp.MigrationCancelled:
				info, err := within(ctx, qmpTimeout, mon.QueryMigrate)
				if err == nil && info.ErrorDesc != "" {
					return fmt.Errorf("qemu's save %s: %s", data.Status, info.ErrorDesc)
				}
				return fmt.Errorf("qemu's save %s", data.Status)
			}
		case <-tick.C:
			info, err := within(ctx, qmpTimeout, mon.QueryMigrate)
			if err != nil {
				return err
			}
			if info.RAM != nil {
				report(info.RAM.Transferred, info.RAM.Remaining)
			}
		}
	}
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// RestoreState implements driver.QuickMigrator: a QEMU started as
// MigrateIn's is reads the stream through a pipe, from the driver, which
// checks it against the header's checksum on the way. The VM is complete
// only once both QEMU and the checksum are done, so a changed file is
// refused before anything ran, and the file is read once, not once for
// the check and again by QEMU: the guest waits through all of it.
func (d *Driver) RestoreState(ctx context.Context, spec driver.VMSpec, path string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !filepath.IsLocal(path) {
		return fmt.Errorf("restore %s: path %q must be relative and inside the shared directory", spec.ID, path)
	}
	err := d.restoreState(ctx, spec, filepath.Join(d.cfg.SharedDir, path))
	if err != nil {
		d.log.Warn("restore failed", "vm", spec.ID.String(), "epoch", spec.Epoch, "path", path, "error", err)
		return fmt.Errorf("restore %s at epoch %d from %s: %w", spec.ID, spec.Epoch, path, err)
	}
	d.log.Info("vm restored, waiting for activation", "vm", spec.ID.String(), "epoch", spec.Epoch, "path", path)
	return nil
}

func (d *Driver) restoreState(ctx context.Context, spec driver.VMSpec, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h, err := readStateHeader(f)
	if err != nil {
		return err
	}
	v, err := d.admitIncoming(spec, h.VM, func() error { return h.checkSize(f) })
	if err != nil {
		return err
	}
	if err := d.restore(ctx, v, f, h); err != nil {
		d.discard(v)
		if ctx.Err() == nil {
			// QEMU may have choked on a changed file before the
			// checksum could say so: the root cause, if it is.
			if verr := h.verify(f); verr != nil {
				return verr
			}
		}
		return err
	}
	return nil
}

// restore fills the incoming VM from the file. v.cmd is held and
// released.
func (d *Driver) restore(ctx context.Context, v *vm, f *os.File, h stateHeader) error {
	mon, err := d.launchIncoming(ctx, v, false)
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	growPipe(pw)
	err = mon.Getfd(ctx, restoreFD, pr)
	pr.Close() // QEMU holds its own
	if err != nil {
		pw.Close()
		return err
	}
	// The feeder ends when it has sent the stream, or when QEMU, or the
	// discard of a failed restore, closes the pipe's other end.
	type fed struct {
		sum uint32
		err error
	}
	done := make(chan fed, 1)
	go func() {
		sum, err := feed(pw, f, h.StreamBytes)
		done <- fed{sum, err}
	}()
	sub := mon.Subscribe(qmp.EventMigration)
	defer sub.Close()
	if err := mon.MigrateIncoming(ctx, "fd:"+restoreFD); err != nil {
		return err
	}
	return d.awaitIncoming(ctx, v, mon, sub, nil, func() error {
		r := <-done
		switch {
		case r.err != nil:
			return fmt.Errorf("sending the state file to qemu: %w", r.err)
		case r.sum != h.CRC32C:
			return checksumError(r.sum, h.CRC32C)
		}
		return nil
	})
}

// feed writes the n bytes of stream after the header into w, QEMU's end
// of a pipe, and closes it; it returns their checksum.
func feed(w, f *os.File, n int64) (uint32, error) {
	defer w.Close()
	crc := crc32.New(castagnoli)
	_, err := io.CopyBuffer(io.MultiWriter(w, crc), io.NewSectionReader(f, stateHeaderSize, n), make([]byte, 1<<20))
	return crc.Sum32(), err
}
