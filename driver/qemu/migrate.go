package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/qmp"
)

const (
	// pollEvery is how often a move asks QEMU how far it got: often
	// enough for progress, rarely enough to cost nothing.
	pollEvery = 50 * time.Millisecond
	// unlimited is max-bandwidth for "no cap": QEMU has no such value,
	// and its default of 128 MiB/s throttles even loopback.
	unlimited = int64(1) << 40
	// qmpTimeout bounds one QMP command of a move's source. Its QEMU
	// stops answering when its supervisor freezes it at the lease end,
	// and a move must then fail, not wait for a thaw.
	qmpTimeout = 5 * time.Second
)

// moveCaps are the migration capabilities of a move's source. QEMU keeps
// them from one migration to the next, so every move sets all of them.
//
// Live: return-path, so that QEMU reports completed only once the
// target has loaded the state (without it a target that fails to load
// leaves the source paused and reporting success); pause-before-switchover,
// so that the switchover waits for the driver, which checks that the move
// is still wanted, reports the pause, and lets it go on; auto-converge,
// which throttles the guest only past throttle-trigger-threshold, set to
// 100 % (outgoing.params): once, twice over, the guest dirtied more in a
// pass than went over the link in it, that is when what is left stops
// shrinking. QEMU refuses to switch a capability on while a migration
// runs, so this is how auto-converge stays off until the guest outruns
// the link.
//
// multifd and postcopy-ram come from the move's options (streamCaps),
// and the target's QEMU sets them too.
//
// A save to a file has no return path to wait for and stops the guest
// itself.
func moveCaps(live bool, opts driver.MigrateOptions) map[string]bool {
	caps := map[string]bool{
		qmp.CapEvents:                true,
		qmp.CapReturnPath:            live,
		qmp.CapPauseBeforeSwitchover: live,
		qmp.CapAutoConverge:          live,
	}
	for c, on := range streamCaps(live, opts.Channels, opts.Postcopy) {
		caps[c] = on
	}
	return caps
}

// streamCaps are the capabilities both ends of a live move must agree
// on: multifd for more than one channel, postcopy-ram when the move may
// end in post-copy. QEMU 7.2 refuses the two together; the leader refuses
// such a move first.
func streamCaps(live bool, channels int, postcopy bool) map[string]bool {
	return map[string]bool{
		qmp.CapMultifd:     live && channels > 1,
		qmp.CapPostcopyRAM: live && postcopy,
	}
}

// streamParams are the parameters both ends of a live move must agree on.
func streamParams(channels int) qmp.MigrationParameters {
	if channels <= 1 {
		return qmp.MigrationParameters{}
	}
	return qmp.MigrationParameters{MultifdChannels: new(int64(channels))}
}

// beginMove starts an outgoing move (MigrateOut, SaveState) of the VM at
// epoch: it must be running and not already moving.
func (d *Driver) beginMove(op string, id driver.VMID, epoch uint64) (*vm, *qmp.Client, error) {
	v := d.lookup(id)
	if v == nil {
		return nil, nil, fmt.Errorf("%s %s: %w", op, id, driver.ErrNotFound)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch st := v.stateLocked(); {
	case epoch != v.epoch:
		return nil, nil, fmt.Errorf("%s %s at epoch %d: %w: the VM is at epoch %d", op, id, epoch, driver.ErrStaleEpoch, v.epoch)
	case v.moving:
		return nil, nil, fmt.Errorf("%s %s: %w: a move of it is already running", op, id, driver.ErrInvalidState)
	case v.plugging:
		return nil, nil, fmt.Errorf("%s %s: %w: a disk hot-plug of it is running", op, id, driver.ErrInvalidState)
	case st != driver.StateRunning || v.mon == nil:
		// A frozen VM's node has lost its lease: the group is the
		// leader's to restart, not this node's to move.
		return nil, nil, fmt.Errorf("%s %s: %w: it is %s", op, id, driver.ErrInvalidState, st)
	}
	v.moving = true
	return v, v.mon, nil
}

// paused records that the move stopped the guest.
func (v *vm) paused(mon *qmp.Client) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mon == mon && v.state == driver.StateRunning {
		v.setStateLocked(driver.StatePaused)
	}
}

// endMove ends a move begun by beginMove. After a failure the guest runs
// again (rollBack saw to it), or is frozen by its supervisor if its lease
// ended meanwhile, which Status then says.
func (v *vm) endMove(failed bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.moving = false
	if failed && v.state == driver.StatePaused {
		v.setStateLocked(driver.StateRunning)
	}
}

// rollBack ends a failed outgoing move so that the guest runs on here:
// QEMU's migration cancelled (QEMU then restarts vCPUs that the migration
// stopped), and a guest paused by a completed migration or a save
// continued. A QEMU frozen at its lease end cannot answer: the commands
// still go, each with a short wait, and QEMU runs them when a renewal
// thaws it, which only a valid lease does.
func (d *Driver) rollBack(v *vm, mon *qmp.Client) {
	v.mu.Lock()
	wait := qmpTimeout
	if !time.Now().Before(v.leaseEnd) {
		wait = 200 * time.Millisecond
	}
	v.mu.Unlock()
	bg := context.Background()
	if err := cancelMove(bg, wait, mon); err != nil {
		d.log.Warn("cancelling a failed move", "vm", v.id.String(), "error", err)
	}
	qs, err := settled(bg, wait, mon)
	if err != nil || qs.Status == qmp.StatusPaused || qs.Status == qmp.StatusPostMigrate {
		if err := bounded(bg, wait, mon.Cont); err != nil {
			d.log.Warn("resuming the guest after a failed move", "vm", v.id.String(), "error", err)
		}
	}
}

// cancelMove cancels QEMU's outgoing migration, if one runs, and waits
// for it to end; each command waits at most wait. One whose status
// cannot be read is cancelled all the same: a frozen QEMU runs the
// command once thawed.
func cancelMove(ctx context.Context, wait time.Duration, mon *qmp.Client) error {
	info, err := within(ctx, wait, mon.QueryMigrate)
	if err == nil && !migrating(info.Status) {
		return nil
	}
	if err := bounded(ctx, wait, mon.MigrateCancel); err != nil {
		return err
	}
	for deadline := time.Now().Add(wait); err == nil && migrating(info.Status); {
		if !time.Now().Before(deadline) {
			return fmt.Errorf("the migration is still %s", info.Status)
		}
		time.Sleep(5 * time.Millisecond)
		info, err = within(ctx, wait, mon.QueryMigrate)
	}
	return err
}

// settled is QEMU's run state once a migration cancelled at its
// switchover has restarted the vCPUs, which QEMU does a moment after it
// reports cancelled: until then the run state stays finish-migrate.
// Each query waits at most wait.
func settled(ctx context.Context, wait time.Duration, mon *qmp.Client) (qmp.StatusInfo, error) {
	qs, err := within(ctx, wait, mon.QueryStatus)
	for deadline := time.Now().Add(wait); err == nil && qs.Status == qmp.StatusFinishMigrate && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		qs, err = within(ctx, wait, mon.QueryStatus)
	}
	return qs, err
}

// migrating says whether QEMU's migration status is one of a migration
// under way, which migrate_cancel ends.
func migrating(status string) bool {
	switch status {
	case "", qmp.MigrationNone, qmp.MigrationCompleted, qmp.MigrationFailed, qmp.MigrationCancelled:
		return false
	}
	return true
}

// MigrateOut implements driver.LiveMigrator. The stream is QEMU's, from
// this QEMU to the target's over TCP; conn carries control.go's messages.
func (d *Driver) MigrateOut(ctx context.Context, id driver.VMID, epoch uint64, conn io.ReadWriter, opts driver.MigrateOptions, progress func(driver.Progress)) (driver.MigrateResult, error) {
	if err := ctx.Err(); err != nil {
		return driver.MigrateResult{}, err
	}
	if opts.Postcopy && !postcopySupported {
		return driver.MigrateResult{}, fmt.Errorf("migrate %s: post-copy: %w", id, driver.ErrUnsupported)
	}
	v, mon, err := d.beginMove("migrate", id, epoch)
	if err != nil {
		return driver.MigrateResult{}, err
	}
	stop := unblockOnCancel(ctx, conn)
	ctl := newControl(conn)
	o := newOutgoing(v, mon, ctl, conn, opts, progress)
	o.log = d.log
	o.tls = func(ctx context.Context) (qmp.MigrationParameters, error) { return d.armTLS(ctx, mon, "client") }
	res, err := o.run(ctx)
	stop()
	if err != nil {
		err = cause(ctx, err)
		ctl.tell(message{Type: msgFailed, Error: err.Error()})
		d.rollBack(v, mon)
		err = fmt.Errorf("migrate %s at epoch %d: %w", id, epoch, err)
		d.log.Warn("migration failed; the vm runs on here", "vm", id.String(), "error", err)
	} else {
		d.log.Info("vm migrated out, paused", "vm", id.String(), "epoch", epoch, "tls", d.cfg.TLSDir != "", "rounds", res.Rounds,
			"bytes", res.BytesSent, "downtime", res.Paused, "throttle", res.ThrottlePercent)
	}
	ctl.close()
	v.endMove(err != nil)
	return res, err
}

// outgoing is one MigrateOut at work.
type outgoing struct {
	v        *vm
	mon      *qmp.Client
	ctl      *control
	conn     io.ReadWriter
	opts     driver.MigrateOptions
	progress func(driver.Progress)
	log      *slog.Logger
	// tls arms the stream's TLS and returns its parameters; nil: none.
	tls      func(context.Context) (qmp.MigrationParameters, error)
	start    time.Time
	mem      int64
	throttle int // the most the guest was slowed
	// Post-copy: stall watches the pre-copy's passes; postcopy says that
	// migrate-start-postcopy went, so that the next pause is the
	// switchover to post-copy, and handover that the move stopped there,
	// its source paused, for the commit.
	stall              stall
	postcopy, handover bool
}

// stall tells a pre-copy that no longer converges: once QEMU throttles
// the guest (auto-converge: it dirtied more in a pass than the link
// carried, twice over), stallPasses passes over memory that leave no
// less to send than the best pass before them (less by a sixteenth: a
// guest rewriting its working set leaves about the same each pass).
type stall struct {
	pass, bestPass int64
	best           int64
}

// stallPasses is how many passes without progress, once throttled, make
// a pre-copy stalled: auto-converge gets that many to help first.
const stallPasses = 2

// sample takes the remaining bytes at the first poll of each pass, just
// after QEMU synced the dirty bitmap, and says whether the pre-copy has
// stalled.
func (s *stall) sample(pass, remaining int64, throttled bool) bool {
	if pass == s.pass {
		return false
	}
	s.pass = pass
	if s.bestPass == 0 || remaining < s.best-s.best/16 {
		s.best, s.bestPass = remaining, pass
	}
	return throttled && pass-s.bestPass >= stallPasses
}

func newOutgoing(v *vm, mon *qmp.Client, ctl *control, conn io.ReadWriter, opts driver.MigrateOptions, progress func(driver.Progress)) *outgoing {
	if opts.DowntimeTarget <= 0 {
		opts.DowntimeTarget = driver.DefaultDowntimeTarget
	}
	if opts.MaxDuration <= 0 {
		opts.MaxDuration = driver.DefaultMaxDuration
	}
	if progress == nil {
		progress = func(driver.Progress) {}
	}
	return &outgoing{v: v, mon: mon, ctl: ctl, conn: conn, opts: opts, progress: progress, start: time.Now(), mem: v.spec.MemoryBytes}
}

func (o *outgoing) run(ctx context.Context) (driver.MigrateResult, error) {
	sh := o.v.shape()
	if err := o.ctl.send(message{Type: msgHello, VM: &sh, Channels: o.opts.Channels, Postcopy: o.opts.Postcopy}); err != nil {
		return driver.MigrateResult{}, err
	}
	m, err := o.ctl.next(ctx)
	switch {
	case err != nil:
		return driver.MigrateResult{}, err
	case m.Type == msgRefuse:
		return driver.MigrateResult{}, refused(m)
	case m.Type != msgListen:
		return driver.MigrateResult{}, unexpected(m, msgListen)
	}
	uri := "tcp:" + net.JoinHostPort(o.targetHost(m.Host), m.Port)
	// The target waits with its empty VM. The report may block (a
	// test's hold): a cancellation meanwhile ends the move here.
	o.progress(driver.Progress{Phase: "setup", MemoryBytes: o.mem, RemainingBytes: o.mem})
	if err := ctx.Err(); err != nil {
		return driver.MigrateResult{}, err
	}
	sub := o.mon.Subscribe(qmp.EventMigration)
	defer sub.Close()
	if err := bounded(ctx, qmpTimeout, func(ctx context.Context) error { return o.begin(ctx, uri) }); err != nil {
		return driver.MigrateResult{}, err
	}
	if err := o.follow(ctx, sub); err != nil {
		return driver.MigrateResult{}, err
	}
	return o.result(ctx)
}

// begin sets the migration's capabilities and parameters, and starts it.
func (o *outgoing) begin(ctx context.Context, uri string) error {
	if err := o.mon.MigrateSetCapabilities(ctx, moveCaps(true, o.opts)); err != nil {
		return err
	}
	var p qmp.MigrationParameters
	if o.tls != nil {
		var err error
		if p, err = o.tls(ctx); err != nil {
			return err
		}
	}
	p = o.params(p)
	if err := o.mon.MigrateSetParameters(ctx, p); err != nil {
		return err
	}
	return o.mon.Migrate(ctx, uri)
}

// targetHost is where the source's QEMU connects: the target's listening
// address, or, when that is a wildcard (the target listens on all its
// addresses), the address conn reaches the target at.
func (o *outgoing) targetHost(host string) string {
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		return host
	}
	if c, ok := o.conn.(interface{ RemoteAddr() net.Addr }); ok {
		if h, _, err := net.SplitHostPort(c.RemoteAddr().String()); err == nil {
			return h
		}
	}
	return host
}

func (o *outgoing) params(p qmp.MigrationParameters) qmp.MigrationParameters {
	bw := o.opts.BandwidthLimit
	if bw <= 0 {
		bw = unlimited
	}
	p.MultifdChannels = streamParams(o.opts.Channels).MultifdChannels
	p.DowntimeLimit = new(max(o.opts.DowntimeTarget.Milliseconds(), 1))
	p.MaxBandwidth = new(bw)
	p.ThrottleTriggerThreshold = new(int64(100))
	// The operator's cap holds in post-copy too; QEMU's 0 is none.
	p.MaxPostcopyBandwidth = new(max(o.opts.BandwidthLimit, 0))
	return p
}

// follow waits until QEMU has completed the migration and the target has
// verified its copy, reporting progress on the way, and gives up past
// MaxDuration. A move that switches to post-copy ends at the pause
// before it, once the target confirmed that it waits for the rest.
func (o *outgoing) follow(ctx context.Context, sub *qmp.Subscription) error {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var completed, verified, paused bool
	peer := o.ctl.in
	for (!completed || !verified) && (!o.handover || !verified) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-peer:
			switch {
			case r.err != nil:
				return fmt.Errorf("before the target verified its copy: %w", r.err)
			case r.m.Type == msgFailed:
				return fmt.Errorf("the target failed: %s", r.m.Error)
			case r.m.Type != msgVerified:
				return unexpected(r.m, msgVerified)
			}
			// The target's QEMU may report completed before ours does;
			// its caller then ends conn, which is no failure.
			verified, peer = true, nil
		case ev, ok := <-sub.C():
			if !ok {
				return fmt.Errorf("qemu: %w", o.mon.Err())
			}
			var data qmp.MigrationEventData
			if err := ev.Decode(&data); err != nil {
				return err
			}
			switch data.Status {
			case qmp.MigrationPreSwitchover:
				paused = true
				if o.postcopy {
					if err := o.pauseForPostcopy(ctx); err != nil {
						return err
					}
					continue
				}
				if err := o.switchover(ctx); err != nil {
					return err
				}
			case qmp.MigrationCompleted:
				completed = true
			case qmp.MigrationFailed, qmp.MigrationCancelled:
				return o.failed(ctx, data.Status)
			}
		case <-tick.C:
			if paused {
				continue // nothing to report until it completes
			}
			if err := o.poll(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// poll reports the pre-copy's progress and gives up past MaxDuration.
func (o *outgoing) poll(ctx context.Context) error {
	info, err := within(ctx, qmpTimeout, o.mon.QueryMigrate)
	if err != nil {
		return err
	}
	if info.Status == qmp.MigrationActive && info.RAM != nil {
		o.report("precopy", int(info.RAM.DirtySyncCount), info)
		if err := ctx.Err(); err != nil {
			return err // a report that blocked past the cancellation
		}
		if o.opts.Postcopy && !o.postcopy && o.stall.sample(info.RAM.DirtySyncCount, info.RAM.Remaining, o.throttle > 0) {
			// QEMU stops the guest at its next pass, in the pause
			// before the switchover (pauseForPostcopy).
			if err := bounded(ctx, qmpTimeout, o.mon.MigrateStartPostcopy); err != nil {
				return err
			}
			o.postcopy = true
			o.log.Info("the pre-copy does not converge: switching to post-copy", "vm", o.v.id.String(),
				"pass", info.RAM.DirtySyncCount, "remaining_mib", info.RAM.Remaining>>20, "throttle", o.throttle)
		}
	}
	if time.Since(o.start) <= o.opts.MaxDuration {
		return nil
	}
	why := fmt.Sprintf("the pre-copy ran past its limit of %s", o.opts.MaxDuration)
	if ram := info.RAM; ram != nil {
		why += fmt.Sprintf(": in pass %d over the memory, %d MiB of %d left, the link carries %.0f Mbit/s",
			ram.DirtySyncCount, ram.Remaining>>20, ram.Total>>20, ram.Mbps)
		if ram.DirtyPagesRate > 0 { // measured from the second pass on
			why += fmt.Sprintf(", the guest dirties %d MiB/s", ram.DirtyPagesRate*ram.PageSize>>20)
		}
		if o.throttle > 0 {
			why += fmt.Sprintf(" slowed by %d %%", o.throttle)
		}
	}
	return &driver.GiveUpError{Reason: why}
}

// switchover runs while QEMU holds the guest stopped before the last
// pass (pause-before-switchover): the pause is reported, and the move
// goes on only if it is still wanted.
func (o *outgoing) switchover(ctx context.Context) error {
	if err := o.reportPause(ctx); err != nil {
		return err
	}
	return bounded(ctx, qmpTimeout, o.mon.MigrateContinue)
}

// reportPause records that QEMU stopped the guest for a switchover and
// reports it, with the last pass (made in the pause) as its round; an
// error if the move is no longer wanted.
func (o *outgoing) reportPause(ctx context.Context) error {
	o.v.paused(o.mon)
	info, err := within(ctx, qmpTimeout, o.mon.QueryMigrate)
	if err != nil {
		return err
	}
	round := 1
	if info.RAM != nil {
		round = int(info.RAM.DirtySyncCount) + 1
	}
	o.report("switchover", round, info)
	return ctx.Err()
}

// pauseForPostcopy runs while QEMU holds the guest stopped before its
// switchover to post-copy. Post-copy runs the target before all of the
// state has arrived, so the move cannot wait for a verified copy before
// its commit, as a pre-copy does: it stops here instead, paused, tells
// the target, and returns once the target confirms that it waits. The
// commit follows, and only then does Kill (the executor ending the
// source, which the commit made another node's) let QEMU go on
// (handOver). Until the commit the move can still roll back: the
// source holds all of the guest. From it on, a failure of either side
// loses the guest.
func (o *outgoing) pauseForPostcopy(ctx context.Context) error {
	if err := o.reportPause(ctx); err != nil {
		return err
	}
	if err := o.ctl.send(message{Type: msgPostcopy}); err != nil {
		return err
	}
	o.handover = true
	return nil
}

// failed says why QEMU's migration failed.
func (o *outgoing) failed(ctx context.Context, status string) error {
	info, err := within(ctx, qmpTimeout, o.mon.QueryMigrate)
	if err == nil && info.ErrorDesc != "" {
		return fmt.Errorf("qemu's migration %s: %s", status, info.ErrorDesc)
	}
	return fmt.Errorf("qemu's migration %s", status)
}

// result reads the completed migration's figures. QEMU computes them
// together with the run state postmigrate, a moment after it reports
// completed.
func (o *outgoing) result(ctx context.Context) (driver.MigrateResult, error) {
	o.v.paused(o.mon)
	if o.handover {
		return o.handoverResult(ctx)
	}
	if err := waitRunState(ctx, o.mon, qmp.StatusPostMigrate); err != nil {
		return driver.MigrateResult{}, err
	}
	info, err := within(ctx, qmpTimeout, o.mon.QueryMigrate)
	if err != nil {
		return driver.MigrateResult{}, err
	}
	if info.RAM == nil {
		return driver.MigrateResult{}, errors.New("qemu reports no figures of the completed migration")
	}
	res := driver.MigrateResult{
		Rounds:    int(info.RAM.DirtySyncCount),
		BytesSent: info.RAM.Transferred,
		// No checksum: QEMU checks its own stream (section markers and
		// the return path's acknowledgement), and hashing the guest's
		// memory on both ends would lengthen the pause by a read of all
		// of it.
		Checksum:        0,
		ThrottlePercent: o.throttle,
	}
	if info.Downtime != nil {
		res.Paused = time.Duration(*info.Downtime) * time.Millisecond
	}
	// Counted sent: the last report's bytes are the move's.
	info.RAM.Remaining, info.ExpectedDowntime = 0, nil
	o.report("switchover", res.Rounds, info)
	return res, nil
}

// handoverResult is the figures of a move stopped before its switchover
// to post-copy: what went so far; the pause has not ended.
func (o *outgoing) handoverResult(ctx context.Context) (driver.MigrateResult, error) {
	info, err := within(ctx, qmpTimeout, o.mon.QueryMigrate)
	if err != nil {
		return driver.MigrateResult{}, err
	}
	res := driver.MigrateResult{ThrottlePercent: o.throttle}
	if info.RAM != nil {
		res.Rounds, res.BytesSent = int(info.RAM.DirtySyncCount)+1, info.RAM.Transferred
	}
	o.v.mu.Lock()
	o.v.handover = o.mon
	o.v.mu.Unlock()
	return res, nil
}

func (o *outgoing) report(phase string, round int, info qmp.MigrationInfo) {
	p := driver.Progress{Phase: phase, Round: round, MemoryBytes: o.mem}
	if info.CPUThrottlePercentage != nil {
		o.throttle = max(o.throttle, int(*info.CPUThrottlePercentage))
		p.ThrottlePercent = int(*info.CPUThrottlePercentage)
	}
	if ram := info.RAM; ram != nil {
		p.BytesSent, p.RemainingBytes = ram.Transferred, ram.Remaining
		p.RateBytesPerSec = int64(ram.Mbps * 1e6 / 8)
	}
	if info.ExpectedDowntime != nil {
		p.ExpectedDowntime = time.Duration(*info.ExpectedDowntime) * time.Millisecond
	}
	o.progress(p)
}

// bounded runs one QMP command within d, so that a QEMU that does not
// answer (frozen at its lease end) fails it rather than holding it up.
func bounded(ctx context.Context, d time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(ctx)
}

// within is bounded for a command with a reply.
func within[T any](ctx context.Context, d time.Duration, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(ctx)
}

// waitRunState waits, briefly, for QEMU's run state to be status.
func waitRunState(ctx context.Context, mon *qmp.Client, status string) error {
	ctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	for {
		qs, err := mon.QueryStatus(ctx)
		switch {
		case err != nil:
			return err
		case qs.Status == status:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu's run state is %s, not %s: %w", qs.Status, status, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
