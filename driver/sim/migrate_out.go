package sim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/haven-ha/haven/driver"
)

// errVMGone is a move whose VM was stopped or crashed under it.
var errVMGone = errors.New("vm stopped during the migration")

// MigrateOut implements driver.LiveMigrator: iterative pre-copy over the
// dirty log (dirtylog.go), the convergence rule of converge.go, and a
// switchover that pauses the guest, sends the last pages and its device
// state while hashing its memory, and waits for the target's verdict. The
// stream is wire.go's. It has one stream, so opts.Channels changes
// nothing, and no post-copy: a move that asks for it is refused
// (driver.ErrUnsupported), as the leader does for a node that does not
// report Capabilities.Postcopy.
func (d *Driver) MigrateOut(ctx context.Context, id driver.VMID, epoch uint64, conn io.ReadWriter, opts driver.MigrateOptions, progress func(driver.Progress)) (driver.MigrateResult, error) {
	if err := ctx.Err(); err != nil {
		return driver.MigrateResult{}, err
	}
	if opts.Postcopy {
		return driver.MigrateResult{}, fmt.Errorf("migrate %s: post-copy: %w", id, driver.ErrUnsupported)
	}
	v, m, err := d.beginMove("migrate", id, epoch, true)
	if err != nil {
		return driver.MigrateResult{}, err
	}
	// The tracking an earlier move left on must be off before this one
	// registers its own (normally lifted already, by the resume).
	v.untrack(m)
	sums, terr := newSourceSums(m)
	if terr != nil {
		untracked.Do(func() {
			v.log.Warn("the kernel cannot track guest writes: a live migration's pause hashes all of the memory", "err", terr)
		})
	}
	stop := unblockOnCancel(ctx, conn)
	o := newOutgoing(ctx, v, m, sums, conn, opts, progress)
	res, err := o.run()
	stop()
	// Lifting the write protection walks the whole mapping with the
	// process's memory map locked: about 0.1 s for 512 MiB, during which
	// every thread of the agent that faults a page waits (its Raft, its
	// gRPC, the result that is the leader's cue to commit). A move that
	// ended ready leaves it to the guest's end here: after the commit the
	// memory is unmapped first, which leaves nothing to lift, and after a
	// rollback the resume lifts it beside the running guest. Nothing
	// reads the sums after run.
	if err == nil {
		v.keepTracking(m, sums)
	} else {
		go sums.close()
	}
	if err = cause(ctx, err); err != nil {
		err = fmt.Errorf("migrate %s at epoch %d: %w", id, epoch, err)
		v.log.Warn("migration failed", "err", err)
	}
	v.endMove(m, err)
	return res, err
}

// untracked warns once that pauses hash all of the memory.
var untracked sync.Once

// outgoing is one MigrateOut at work.
type outgoing struct {
	ctx      context.Context
	v        *vm
	m        *memory
	sums     *sourceSums
	opts     driver.MigrateOptions
	progress func(driver.Progress)
	link     *link
	fw       *frameWriter
	fr       *frameReader
	ps       *pageSender
	meter    rateMeter
	plan     *planner
	start    time.Time
	last     roundStats
}

func newOutgoing(ctx context.Context, v *vm, m *memory, sums *sourceSums, conn io.ReadWriter, opts driver.MigrateOptions, progress func(driver.Progress)) *outgoing {
	if opts.DowntimeTarget <= 0 {
		opts.DowntimeTarget = driver.DefaultDowntimeTarget
	}
	if opts.MaxDuration <= 0 {
		opts.MaxDuration = driver.DefaultMaxDuration
	}
	if progress == nil {
		progress = func(driver.Progress) {}
	}
	l := &link{ctx: ctx, w: conn, limit: max(opts.BandwidthLimit, 0)}
	// Under a limit, a write sleeps until the limit allows it; batches and
	// buffer of ~20 ms of the limit keep cancellation and MaxDuration,
	// checked between batches, that prompt on a slow link.
	buf, batch := 256<<10, batchPages
	if l.limit > 0 {
		slice := l.limit / 50
		buf = int(min(max(slice, 4<<10), int64(buf)))
		batch = int(min(max(slice/PageSize, 1), int64(batch)))
	}
	fw := newFrameWriter(l, buf)
	// The first round reads every page: kept sums start from what it read.
	ps := newPageSender(m, fw, batch)
	if sums.kept() {
		ps.seen = sums.note
	}
	return &outgoing{
		ctx: ctx, v: v, m: m, sums: sums, opts: opts, progress: progress,
		link: l, fw: fw, fr: newFrameReader(conn, 4<<10), ps: ps,
		meter: rateMeter{window: 100 * time.Millisecond},
		plan:  newPlanner(opts.DowntimeTarget, pauseFixed(sums, m, opts.DowntimeTarget), m.size()), start: time.Now(),
	}
}

// pauseFixed is the part of the guest's gap that no round shortens: the
// commit and the activation after the pause (switchoverCost), and hashing
// all of the memory in it, unless its sums are kept.
func pauseFixed(s *sourceSums, m *memory, target time.Duration) time.Duration {
	if s.kept() {
		return switchoverCost(target)
	}
	return switchoverCost(target) + pauseHashTime(m.size())
}

func (o *outgoing) run() (driver.MigrateResult, error) {
	res, err := o.migrate()
	var gu *driver.GiveUpError
	if errors.As(err, &gu) || errors.Is(err, errVMGone) {
		// The link still works: tell the target why, so it discards its
		// copy now rather than when the stream ends.
		if o.fw.frame(frameAbort, appendString(nil, err.Error()), nil) == nil {
			_ = o.fw.flush()
		}
	}
	return res, err
}

func (o *outgoing) migrate() (driver.MigrateResult, error) {
	h := header{pageSize: PageSize, memBytes: o.m.size(), epoch: o.v.spec.Epoch, id: o.v.spec.ID}
	if err := o.fw.frame(frameHeader, h.encode(), nil); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := o.fw.flush(); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := o.fr.awaitAck(0); err != nil {
		return driver.MigrateResult{}, err
	}
	// The target has its empty VM. The report may block (a test's hold):
	// a cancellation meanwhile ends the move here.
	o.progress(driver.Progress{Phase: "setup", MemoryBytes: o.m.size(), RemainingBytes: o.m.size()})
	if err := o.between(); err != nil {
		return driver.MigrateResult{}, err
	}
	pages := o.m.pages()
	set, spare := newBitmap(pages), newBitmap(pages)
	set.setAll(pages) // round 1: everything
	collected := o.start
	for round := 1; ; round++ {
		t0, b0 := time.Now(), o.link.sent
		if err := o.ps.send(set, o.locked, o.between); err != nil {
			return driver.MigrateResult{}, err
		}
		if err := o.fw.frame(frameRoundEnd, le32(uint32(round)), nil); err != nil {
			return driver.MigrateResult{}, err
		}
		if err := o.fw.flush(); err != nil {
			return driver.MigrateResult{}, err
		}
		if err := o.fr.awaitAck(uint32(round)); err != nil {
			return driver.MigrateResult{}, err
		}
		o.meter.add(o.link.sent-b0, time.Since(t0))
		o.ps.seen = nil

		clear(spare)
		o.v.mu.Lock()
		dirty := o.m.takeDirty(spare)
		o.v.mu.Unlock()
		if err := o.sums.refresh(o.locked); errors.Is(err, errVMGone) {
			return driver.MigrateResult{}, err
		} else if err != nil {
			o.v.log.Warn("tracking the guest's writes failed: the pause will hash all of the memory", "err", err)
			o.plan.fixed = pauseFixed(o.sums, o.m, o.opts.DowntimeTarget)
		}
		now := time.Now()
		set, spare = dirty, set
		remaining := set.count() * PageSize
		o.last = roundStats{
			remaining: remaining, link: o.meter.rate(),
			dirty: int64(float64(remaining) / now.Sub(collected).Seconds()),
		}
		collected = now
		verdict, why := o.plan.next(o.last)
		o.report("precopy", round, o.last)
		switch verdict {
		case switchOver:
			return o.switchover(round+1, set, spare)
		case throttleMore:
			o.v.mu.Lock()
			o.v.throttle = o.plan.throttle()
			o.v.mu.Unlock()
			o.v.log.Info("migration throttles the guest", "percent", o.plan.throttle(),
				"dirty_rate", o.last.dirty, "link_rate", o.last.link, "remaining", remaining)
		case giveUp:
			return driver.MigrateResult{}, &driver.GiveUpError{Reason: why}
		}
		if err := o.between(); err != nil {
			return driver.MigrateResult{}, err
		}
	}
}

// locked runs f with the guest's mutex held, if the guest is still there
// to read.
func (o *outgoing) locked(f func()) error {
	o.v.mu.Lock()
	defer o.v.mu.Unlock()
	if !o.v.live() {
		return errVMGone
	}
	f()
	return nil
}

// between ends the pre-copy early: on cancellation, or past MaxDuration.
func (o *outgoing) between() error {
	if err := o.ctx.Err(); err != nil {
		return context.Cause(o.ctx)
	}
	if time.Since(o.start) <= o.opts.MaxDuration {
		return nil
	}
	why := fmt.Sprintf("the pre-copy ran past its limit of %s", o.opts.MaxDuration)
	if o.last.link > 0 {
		why += fmt.Sprintf(": %s left, the link carries %s, the guest dirties %s", size(o.last.remaining), rate(o.last.link), rate(o.last.dirty))
		if t := o.plan.throttle(); t > 0 {
			why += fmt.Sprintf(" slowed by %d %%", t)
		}
	} else {
		why += fmt.Sprintf(" within its first round (%s of %s sent)", size(o.link.sent), size(o.m.size()))
	}
	return &driver.GiveUpError{Reason: why}
}

// switchover pauses the guest and sends the rest: the pages dirtied since
// set was taken and those of set, the device state, and the checksum of
// the whole memory, hashed meanwhile on every core. It returns once the
// target has verified it.
func (o *outgoing) switchover(round int, set, spare bitmap) (driver.MigrateResult, error) {
	clear(spare)
	o.v.mu.Lock()
	if err := o.v.pause(); err != nil {
		o.v.mu.Unlock()
		return driver.MigrateResult{}, fmt.Errorf("%w: %v", errVMGone, err)
	}
	paused := time.Now()
	final := o.m.takeDirty(spare)
	dev := o.v.device()
	o.v.mu.Unlock()

	final.or(set)
	o.report("switchover", round, roundStats{remaining: final.count() * PageSize, link: o.meter.rate()})
	// From the pause on no one writes the memory (Resume waits for this
	// move; a Kill leaves it mapped to us), so it is read without the lock.
	sumc := make(chan uint64, 1)
	go func() {
		t0 := time.Now()
		sum, all := o.sums.final()
		if all {
			notePauseHash(o.m.size(), time.Since(t0))
		}
		sumc <- sum
	}()
	err := o.ps.send(final, unlocked, o.ctx.Err)
	if err == nil {
		err = o.fw.frame(frameDevice, dev.encode(), nil)
	}
	sum := <-sumc // also on error: the hash must be done before a resume
	if err != nil {
		return driver.MigrateResult{}, err
	}
	o.v.log.Info("vm paused for switchover", "checksum", sum, "counter", dev.counter, "sums_kept", o.sums.kept())
	if err := o.fw.frame(frameChecksum, le64(sum), nil); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := o.fw.flush(); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := o.fr.awaitAck(ackDone); err != nil {
		return driver.MigrateResult{}, err
	}
	res := driver.MigrateResult{
		Rounds: round, BytesSent: o.link.sent, Checksum: sum,
		ThrottlePercent: o.plan.throttle(), Paused: time.Since(paused),
	}
	o.v.mu.Lock()
	st := o.v.state
	o.v.mu.Unlock()
	if st != driver.StatePaused {
		return driver.MigrateResult{}, fmt.Errorf("%w: it is %s", errVMGone, st)
	}
	// The report at the pause could only say what was left; this one
	// counts it sent, so the last report's bytes are the move's.
	o.report("switchover", round, roundStats{link: o.meter.rate()})
	return res, nil
}

func (o *outgoing) report(phase string, round int, r roundStats) {
	o.progress(driver.Progress{
		Phase: phase, Round: round, MemoryBytes: o.m.size(), BytesSent: o.link.sent,
		RemainingBytes: r.remaining, RateBytesPerSec: r.link,
		ExpectedDowntime: r.expectedDowntime(), ThrottlePercent: o.plan.throttle(),
	})
}

// device is the guest's state outside memory, with mu held.
func (v *vm) device() device {
	rng, _ := v.dirt.src.MarshalBinary() // a PCG always marshals
	return device{counter: v.counter, carry: v.dirt.carry, carryNano: v.dirt.carryNano, rng: rng}
}

func le32(x uint32) []byte { return binary.LittleEndian.AppendUint32(nil, x) }
func le64(x uint64) []byte { return binary.LittleEndian.AppendUint64(nil, x) }
