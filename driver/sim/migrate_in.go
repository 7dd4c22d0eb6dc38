package sim

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/haven-ha/haven/driver"
)

// MigrateIn implements driver.LiveMigrator. The caller ends conn when it
// returns (a gRPC handler returning does): that is how a source waiting
// for an ack learns that the target gave up.
func (d *Driver) MigrateIn(ctx context.Context, spec driver.VMSpec, conn io.ReadWriter) error {
	stop := unblockOnCancel(ctx, conn)
	defer stop()
	// A reader buffer smaller than a page frame: most of a frame's payload
	// is then read straight into the frame, not copied through the buffer.
	err := d.receive(ctx, spec, newFrameReader(conn, 64<<10), newFrameWriter(conn, 4<<10))
	if err = cause(ctx, err); err != nil {
		return fmt.Errorf("migrate %s in at epoch %d: %w", spec.ID, spec.Epoch, err)
	}
	return nil
}

// receive makes an incoming VM for spec and fills it from a stream,
// answering on fw; MigrateIn and RestoreState share it. On error the
// incoming VM is discarded.
func (d *Driver) receive(ctx context.Context, spec driver.VMSpec, fr *frameReader, fw *frameWriter) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.guestErr != nil {
		return fmt.Errorf("%w: sim guest %v", driver.ErrInvalidSpec, d.guestErr)
	}
	spec, err := d.normalize(spec)
	if err != nil {
		return fmt.Errorf("%w: %v", driver.ErrInvalidSpec, err)
	}
	kind, p, err := fr.next()
	if err != nil {
		return err
	}
	h, err := decodeStreamHeader(kind, p)
	if err == nil {
		err = h.accepts(spec)
	}
	if err != nil {
		_ = fw.ack(0, err)
		return err
	}
	v, m, err := d.admit(spec)
	if err != nil {
		_ = fw.ack(0, err)
		return err
	}
	in := &incoming{v: v, m: m, sums: make([]uint64, m.pages())}
	for i := range in.sums {
		in.sums[i] = zeroSumOf(len(m.page(int64(i))))
	}
	if err = fw.ack(0, nil); err == nil {
		err = in.fill(ctx, fr, fw)
	}
	if err != nil {
		d.discard(v, err)
	}
	v.unpin(m)
	return err
}

// admit adds an incoming VM for spec to the table, replacing one of an
// older epoch or one that holds no guest, as Start does.
func (d *Driver) admit(spec driver.VMSpec) (*vm, *memory, error) {
	d.life.Lock()
	defer d.life.Unlock()
	if d.isClosed() {
		return nil, nil, errClosed
	}
	if old := d.lookup(spec.ID); old != nil {
		old.mu.Lock()
		holds, st := old.holds(), old.state
		old.mu.Unlock()
		switch {
		case old.spec.Epoch > spec.Epoch:
			return nil, nil, fmt.Errorf("%w: known at epoch %d", driver.ErrStaleEpoch, old.spec.Epoch)
		case old.spec.Epoch == spec.Epoch && holds:
			return nil, nil, fmt.Errorf("%w: it is %s here at the same epoch", driver.ErrInvalidState, st)
		}
		old.stop(false, driver.StateStopped, fmt.Sprintf("replaced by epoch %d", spec.Epoch))
	}
	v, err := d.newVM(spec, driver.StateIncoming)
	if err != nil {
		return nil, nil, err
	}
	m := v.pin() // v is not shared yet: no lock to hold
	d.mu.Lock()
	d.vms[spec.ID] = v
	d.changes.Add(1)
	d.mu.Unlock()
	return v, m, nil
}

// discard removes an incoming VM whose stream failed. One that was ended
// meanwhile (Kill, Stop, Close, a newer Start) stays as that left it: a
// stopped VM's entry keeps its epoch, so a stale Start is still refused.
func (d *Driver) discard(v *vm, err error) {
	d.life.Lock()
	defer d.life.Unlock()
	v.mu.Lock()
	incoming := v.state == driver.StateIncoming
	if incoming {
		v.halt(driver.StateStopped, "incoming migration failed: "+err.Error())
	}
	v.mu.Unlock()
	if !incoming {
		return
	}
	d.mu.Lock()
	if d.vms[v.spec.ID] == v {
		delete(d.vms, v.spec.ID)
		d.changes.Add(1)
	}
	d.mu.Unlock()
}

// incoming is the target of a stream. It writes the memory without the
// VM's mutex: nothing else writes it before Activate, which takes the
// mutex after fill has set complete under it. For the same reason sums,
// each page's hash taken right after the page was written, stays true
// until the end, and the check there hashes only the sums.
type incoming struct {
	v    *vm
	m    *memory
	sums []uint64
	dev  *device
}

func (in *incoming) fill(ctx context.Context, fr *frameReader, fw *frameWriter) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		kind, p, err := fr.next()
		if err != nil {
			return err
		}
		// A VM ended meanwhile (Kill, Forget, a newer Start) ends the
		// stream now, not at the round's end, which on a slow link or
		// for a large VM may be minutes of copying into nothing away.
		// One lock per frame of up to half a MiB costs nothing.
		if err := in.stillIncoming(); err != nil {
			return err
		}
		switch kind {
		case framePages:
			err = in.pages(p)
		case frameZero:
			err = in.zeros(p)
		case frameRoundEnd:
			if len(p) != 4 {
				return fmt.Errorf("%w: round end of %d bytes", errProtocol, len(p))
			}
			err = fw.ack(binary.LittleEndian.Uint32(p), nil)
		case frameDevice:
			var dev device
			dev, err = decodeDevice(p)
			in.dev = &dev
		case frameChecksum:
			if len(p) != 8 {
				return fmt.Errorf("%w: checksum of %d bytes", errProtocol, len(p))
			}
			return in.finish(binary.LittleEndian.Uint64(p), fw)
		case frameAbort:
			dec := decoder{b: p}
			return fmt.Errorf("the source gave up: %s", dec.str())
		default:
			return fmt.Errorf("%w: frame %q", errProtocol, kind)
		}
		if err != nil {
			return err
		}
	}
}

// pageNumbers splits a 'P' or 'Z' payload into its page numbers and the
// rest, checking each number against the memory.
func (in *incoming) pageNumbers(p []byte) ([]byte, []byte, error) {
	if len(p) < 4 {
		return nil, nil, fmt.Errorf("%w: page frame of %d bytes", errProtocol, len(p))
	}
	n := int(binary.LittleEndian.Uint32(p))
	if n > batchPages || len(p) < 4+8*n {
		return nil, nil, fmt.Errorf("%w: %d pages in a frame of %d bytes", errProtocol, n, len(p))
	}
	nums := p[4 : 4+8*n]
	for k := 0; k < len(nums); k += 8 {
		if i := binary.LittleEndian.Uint64(nums[k:]); i >= uint64(in.m.pages()) {
			return nil, nil, fmt.Errorf("%w: page %d of a memory of %d", errProtocol, i, in.m.pages())
		}
	}
	return nums, p[4+8*n:], nil
}

func (in *incoming) pages(p []byte) error {
	nums, data, err := in.pageNumbers(p)
	if err != nil {
		return err
	}
	for k := 0; k < len(nums); k += 8 {
		i := int64(binary.LittleEndian.Uint64(nums[k:]))
		pg := in.m.page(i)
		if len(data) < len(pg) {
			return fmt.Errorf("%w: page %d cut short", errProtocol, i)
		}
		data = data[copy(pg, data):]
		in.sums[i] = pageSum(pg)
	}
	if len(data) != 0 {
		return fmt.Errorf("%w: %d bytes after the pages", errProtocol, len(data))
	}
	return nil
}

func (in *incoming) zeros(p []byte) error {
	nums, rest, err := in.pageNumbers(p)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d bytes after the zero pages", errProtocol, len(rest))
	}
	for k := 0; k < len(nums); k += 8 {
		i := int64(binary.LittleEndian.Uint64(nums[k:]))
		pg := in.m.page(i)
		clear(pg)
		in.sums[i] = pageSum(pg)
	}
	return nil
}

// stillIncoming fails if the VM was stopped, forgotten or replaced while
// its state was on the way.
func (in *incoming) stillIncoming() error {
	in.v.mu.Lock()
	defer in.v.mu.Unlock()
	if in.v.state != driver.StateIncoming {
		return fmt.Errorf("%w: it is %s", errVMGone, in.v.state)
	}
	return nil
}

// finish checks the copy against the source's checksum and the device
// state against the memory, completes the VM, and acks. The VM is
// complete before the ack goes out, so an Activate that the source's
// success prompts cannot find it unfinished.
func (in *incoming) finish(want uint64, fw *frameWriter) error {
	sum := sumOfSums(in.sums)
	var err error
	switch {
	case in.dev == nil:
		err = fmt.Errorf("%w: no device state before the checksum", errProtocol)
	case sum != want:
		err = fmt.Errorf("memory checksum %#x, the source's %#x: the copy is not the guest's memory", sum, want)
	case in.m.uint64At(0) != in.dev.counter:
		err = fmt.Errorf("guest counter %d in memory, %d in the device state", in.m.uint64At(0), in.dev.counter)
	}
	if err == nil {
		err = in.complete(sum)
	}
	if err != nil {
		_ = fw.ack(ackDone, err)
		return err
	}
	return fw.ack(ackDone, nil)
}

func (in *incoming) complete(sum uint64) error {
	v := in.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != driver.StateIncoming {
		return fmt.Errorf("%w: it is %s", errVMGone, v.state)
	}
	if err := v.dirt.src.UnmarshalBinary(in.dev.rng); err != nil {
		return fmt.Errorf("%w: guest random state: %v", errProtocol, err)
	}
	v.dirt.carry, v.dirt.carryNano = in.dev.carry, in.dev.carryNano
	v.counter, v.sum, v.complete = in.dev.counter, sum, true
	v.log.Info("vm incoming complete", "checksum", sum, "counter", v.counter)
	return nil
}
