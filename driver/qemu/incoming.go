package qemu

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/qmp"
)

// MigrateIn implements driver.LiveMigrator: a target QEMU started with
// -incoming defer and -S under an unarmed supervisor, so that it answers
// QMP but runs no guest code until Activate, listening on the node's
// migration address for the source's QEMU.
func (d *Driver) MigrateIn(ctx context.Context, spec driver.VMSpec, conn io.ReadWriter) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := unblockOnCancel(ctx, conn)
	defer stop()
	ctl := newControl(conn)
	defer ctl.close()
	if err := cause(ctx, d.migrateIn(ctx, spec, ctl)); err != nil {
		d.log.Warn("incoming migration failed", "vm", spec.ID.String(), "epoch", spec.Epoch, "error", err)
		return fmt.Errorf("migrate %s in at epoch %d: %w", spec.ID, spec.Epoch, err)
	}
	d.log.Info("vm migrated in, waiting for activation", "vm", spec.ID.String(), "epoch", spec.Epoch)
	return nil
}

func (d *Driver) migrateIn(ctx context.Context, spec driver.VMSpec, ctl *control) error {
	m, err := ctl.next(ctx)
	if err != nil {
		return err
	}
	if m.Type != msgHello || m.VM == nil {
		err := unexpected(m, msgHello)
		ctl.tell(message{Type: msgRefuse, Error: err.Error()})
		return err
	}
	v, err := d.admitIncoming(spec, *m.VM, nil)
	if err != nil {
		ctl.tell(message{Type: msgRefuse, Code: refusalCode(err), Error: err.Error()})
		return err
	}
	if err := d.receiveLive(ctx, v, ctl, m); err != nil {
		ctl.tell(message{Type: msgFailed, Error: err.Error()})
		d.discard(v)
		return err
	}
	return nil
}

// receiveLive has the incoming VM's QEMU listen, with the stream's
// capabilities that hello asks for, tells the source where, and waits
// for the state. v.cmd is held and released.
func (d *Driver) receiveLive(ctx context.Context, v *vm, ctl *control, hello message) error {
	mon, err := d.launchIncoming(ctx, v, true)
	if err != nil {
		return err
	}
	if err := mon.MigrateSetCapabilities(ctx, streamCaps(true, hello.Channels, hello.Postcopy)); err != nil {
		return err
	}
	p, err := d.armTLS(ctx, mon, "server")
	if err != nil {
		return err
	}
	p.MultifdChannels = streamParams(hello.Channels).MultifdChannels
	if p != (qmp.MigrationParameters{}) {
		if err := mon.MigrateSetParameters(ctx, p); err != nil {
			return err
		}
	}
	sub := mon.Subscribe(qmp.EventMigration)
	defer sub.Close()
	if err := mon.MigrateIncoming(ctx, "tcp:"+net.JoinHostPort(d.cfg.MigrationAddr, "0")); err != nil {
		return err
	}
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return err
	}
	var addr *qmp.SocketAddress
	for i, a := range info.SocketAddress {
		if a.Type == "inet" {
			addr = &info.SocketAddress[i]
			break
		}
	}
	if addr == nil {
		return fmt.Errorf("qemu listens on %+v, no inet address", info.SocketAddress)
	}
	if err := ctl.send(message{Type: msgListen, Host: addr.Host, Port: addr.Port}); err != nil {
		return err
	}
	if err := d.awaitIncoming(ctx, v, mon, sub, ctl.in, nil); err != nil {
		return err
	}
	// Complete before the acknowledgement goes out, so that an Activate
	// that the source's success prompts finds it so.
	return ctl.send(message{Type: msgVerified})
}

// admitIncoming checks an incoming VM's spec and its source's shape
// against each other, runs verify if given (RestoreState's look at its
// file), and enters the VM in the table,
// incoming and not yet complete, replacing one of an older epoch or one
// that ended, as Start does. v.cmd is held on return, for launchIncoming.
func (d *Driver) admitIncoming(spec driver.VMSpec, src shape, verify func() error) (*vm, error) {
	machine, err := d.check(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", driver.ErrInvalidSpec, err)
	}
	spec.Node = d.cfg.Node
	if err := accepts(spec, machine, src); err != nil {
		return nil, err
	}
	if verify != nil {
		if err := verify(); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, errClosed
	}
	old := d.vms[spec.ID]
	if old != nil {
		_, _, ep, st := old.snapshot()
		switch {
		case ep > spec.Epoch:
			d.mu.Unlock()
			return nil, fmt.Errorf("%w: known here at epoch %d", driver.ErrStaleEpoch, ep)
		case ep == spec.Epoch && st != driver.StateStopped && st != driver.StateCrashed:
			d.mu.Unlock()
			return nil, fmt.Errorf("%w: it is %s here at the same epoch", driver.ErrInvalidState, st)
		}
	}
	v := &vm{id: spec.ID, dir: vmDir(d.cfg.RunDir, spec.ID), spec: spec, machine: machine, epoch: spec.Epoch, state: driver.StateIncoming, changes: &d.changes}
	v.cmd.Lock()
	d.vms[spec.ID] = v
	d.changes.Add(1)
	d.mu.Unlock()
	if old != nil {
		old.cmd.Lock()
		err := old.kill()
		old.cmd.Unlock()
		if err != nil {
			// As Start: listed crashed, and the directory left to the
			// older QEMU's supervisor.
			v.crashed("the older incarnation could not be killed: " + err.Error())
			v.cmd.Unlock()
			return nil, fmt.Errorf("the older incarnation could not be killed: %w", err)
		}
	}
	return v, nil
}

// launchIncoming starts the incoming VM's QEMU, unarmed, with -incoming
// defer and -S, and sets its capabilities: late-block-activate, so that
// the disk images' locks are taken only by Activate's cont, and for a
// live move return-path, which both ends need. It releases v.cmd.
func (d *Driver) launchIncoming(ctx context.Context, v *vm, live bool) (*qmp.Client, error) {
	defer v.cmd.Unlock()
	mon, err := d.launch(ctx, v, v.spec, v.machine, time.Time{}, true)
	if err != nil {
		return nil, err
	}
	caps := map[string]bool{qmp.CapEvents: true, qmp.CapReturnPath: live, qmp.CapLateBlockActivate: true}
	if err := mon.MigrateSetCapabilities(ctx, caps); err != nil {
		return nil, err
	}
	return mon, nil
}

// awaitIncoming waits for the incoming QEMU to load all of the state,
// checks that the guest has not run, and that check, if given, passes,
// and completes the VM. peer, if not nil, is the source's control
// messages: one now is a failure, but for postcopy, which completes the
// VM with what it holds (the source paused for the commit before its
// switchover to post-copy).
func (d *Driver) awaitIncoming(ctx context.Context, v *vm, mon *qmp.Client, sub *qmp.Subscription, peer <-chan received, check func() error) error {
	var postcopy bool
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-peer:
			switch {
			case r.err != nil:
				return fmt.Errorf("the source went away: %w", r.err)
			case r.m.Type == msgFailed:
				return fmt.Errorf("the source gave up: %s", r.m.Error)
			case r.m.Type == msgPostcopy:
				// The source waits, paused, for the commit before it
				// switches to post-copy: this QEMU has what came so far
				// and takes the rest once Activate runs it.
				done, postcopy = true, true
				continue
			}
			return unexpected(r.m, "nothing")
		case ev, ok := <-sub.C():
			if !ok {
				// A failed incoming migration makes QEMU exit.
				return fmt.Errorf("qemu exited: %s", lastWords(filepath.Join(v.dir, supervisorLog)))
			}
			var data qmp.MigrationEventData
			if err := ev.Decode(&data); err != nil {
				return err
			}
			switch data.Status {
			case qmp.MigrationCompleted:
				done = true
			case qmp.MigrationFailed, qmp.MigrationCancelled:
				return fmt.Errorf("qemu's incoming migration %s: %s", data.Status, lastWords(filepath.Join(v.dir, supervisorLog)))
			}
		}
	}
	qs, err := mon.QueryStatus(ctx)
	if err != nil {
		return err
	}
	if qs.Running {
		// -S must have prevented this: a second runner beside the
		// paused source.
		return fmt.Errorf("the target runs before its activation (qemu state %s)", qs.Status)
	}
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	v.mu.Lock()
	st, mine := v.state, v.mon == mon
	if st == driver.StateIncoming && mine {
		v.complete, v.postcopy = true, postcopy
		v.changes.Add(1) // Status's Complete
	}
	v.mu.Unlock()
	if st != driver.StateIncoming || !mine {
		return fmt.Errorf("%w: it is %s", driver.ErrInvalidState, st)
	}
	// From here a QEMU that dies makes the VM crashed, so that the
	// leader's check before the commit hears of it.
	d.watch(v, mon)
	return nil
}

// discard ends an incoming VM that failed, and leaves nothing of it: its
// QEMU, its entry, its directory. One that was ended meanwhile (Kill,
// Stop, a crash) stays as that left it, its entry keeping its epoch so
// that a stale Start is still refused; one that a newer VM replaced
// leaves its directory to the newer one.
func (d *Driver) discard(v *vm) {
	v.cmd.Lock()
	defer v.cmd.Unlock()
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		// Close let go of its supervisor, which Kill needs: the next
		// agent takes it back incomplete, for its executor to forget.
		return
	}
	v.mu.Lock()
	incoming := v.state == driver.StateIncoming
	v.mu.Unlock()
	if err := v.kill(); err != nil {
		// Listed still, so that Forget or Kill can try again.
		d.log.Warn("an incoming vm that failed could not be killed", "vm", v.id.String(), "error", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !incoming || d.vms[v.id] != v {
		return
	}
	delete(d.vms, v.id)
	d.changes.Add(1)
	// Under d.mu, so that a Start of the same id cannot make its files
	// in the directory while it goes.
	if err := os.RemoveAll(v.dir); err != nil {
		d.log.Warn("removing an incoming vm's directory", "vm", v.id.String(), "error", err)
	}
}
