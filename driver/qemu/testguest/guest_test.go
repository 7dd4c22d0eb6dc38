//go:build linux

package testguest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// bootTimeout bounds the boot to the first tick: about 6 s under TCG on
// an idle two-core machine, more when other tests share the cores.
const bootTimeout = 60 * time.Second

func (v *vm) waitBoot() {
	v.t.Helper()
	start := time.Now()
	v.wait(bootTimeout, "the first tick", func(s *Serial) bool { return s.Ticks() > 0 })
	v.t.Logf("first tick %.1f s after QEMU answered QMP", time.Since(start).Seconds())
	for _, prefix := range []string{"haven-error", "haven-note"} {
		for _, m := range v.serial.Messages(prefix) {
			v.t.Errorf("guest: %s", m.Text)
		}
	}
}

func TestGuestTicksAndSeesHotAddedDisks(t *testing.T) {
	v := boot(t, Options{TickMs: 50})
	v.waitBoot()
	ready := v.waitMessage(time.Second, "haven-ready")
	// The defaults, but for the tick.
	for _, want := range []string{"mem_mib=64", "dirty_mib_per_s=0", "tick_ms=50", "watchdog_s=10", "dirty_pattern=random"} {
		if !strings.Contains(ready.Text, want) {
			t.Errorf("%q: want %s", ready.Text, want)
		}
	}
	v.waitTicks(10*time.Second, 20)

	// The disk modules (virtio_scsi, sd_mod, virtio_blk) are loaded: a
	// SCSI disk on the virtio-scsi controller and a virtio-blk disk on
	// the PCIe root port, both added while the guest runs, show up.
	add := func(id, device string, props map[string]any) {
		t.Helper()
		img := filepath.Join(v.dir, id+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 64<<20); err != nil {
			t.Fatal(err)
		}
		node := "drive-" + id
		if _, err := v.qmp.execute("blockdev-add", map[string]any{
			"driver": "raw", "node-name": node,
			"file": map[string]any{"driver": "file", "filename": img},
		}); err != nil {
			t.Fatal(err)
		}
		props["driver"], props["id"], props["drive"] = device, id, node
		if _, err := v.qmp.execute("device_add", props); err != nil {
			t.Fatal(err)
		}
	}
	hasDisk := func(name string) func(*Serial) bool {
		return func(s *Serial) bool {
			m, ok := s.LastMessage("haven-disks")
			return ok && slices.Contains(strings.Fields(m.Text)[1:], name)
		}
	}
	add("d1", "scsi-hd", map[string]any{"bus": "scsi0.0", "channel": 0, "scsi-id": 0, "lun": 1})
	v.wait(30*time.Second, "the guest to see sda", hasDisk("sda"))
	add("d2", "virtio-blk-pci", map[string]any{"bus": "rp1"})
	v.wait(30*time.Second, "the guest to see vda", hasDisk("vda"))

	v.waitTicks(10*time.Second, 5)
	if err := v.serial.Increasing(); err != nil {
		t.Error(err)
	}
}

func TestWatchdogFiresWhenGuestHangs(t *testing.T) {
	const timeout = 3 * time.Second
	v := boot(t, Options{MemMiB: 16, TickMs: 100, WatchdogSec: int(timeout / time.Second)})
	v.waitBoot()
	if ready := v.waitMessage(time.Second, "haven-ready"); !strings.Contains(ready.Text, "watchdog_s=3") {
		t.Fatalf("%q: the guest did not arm the watchdog for 3 s", ready.Text)
	}

	// Fed, the watchdog never fires: the guest outlives two timeouts
	// (v.wait fails if QEMU exits).
	first := v.serial.First()
	v.wait(30*time.Second, "ticks over two watchdog timeouts", func(s *Serial) bool {
		return s.Last().Seen.Sub(first.Seen) > 2*timeout
	})

	sent := time.Now()
	v.send("hang")
	ack := v.waitMessage(10*time.Second, "haven-cmd hang")
	select {
	case <-v.exited:
	case <-time.After(timeout + 20*time.Second):
		t.Fatalf("QEMU still runs %v after the guest hung", time.Since(sent))
	}
	fired := time.Since(sent)
	t.Logf("QEMU exited %.1f s after hang (watchdog timeout %v)", fired.Seconds(), timeout)
	if v.waitErr != nil {
		t.Errorf("QEMU exited with %v", v.waitErr)
	}
	ev, err := v.qmp.event("WATCHDOG", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var data struct{ Action string }
	if err := json.Unmarshal(ev.Data, &data); err != nil || data.Action != "poweroff" {
		t.Errorf("WATCHDOG event data %s: want action poweroff", ev.Data)
	}
	// The last feed was at most a tick before the hang.
	if fired < timeout/2 {
		t.Errorf("the watchdog fired %v after the hang: sooner than its timeout %v allows", fired, timeout)
	}
	if err := v.serial.Poll(); err != nil {
		t.Fatal(err)
	}
	if last := v.serial.Last(); last.N != ack.AfterTick {
		t.Errorf("tick %d after haven-cmd hang, which came after tick %d", last.N, ack.AfterTick)
	}
}

func TestGuestDirtiesAtItsRate(t *testing.T) {
	const rate = 16 // MiB/s: every page of 32 MiB twice over the 4 s measured
	v := boot(t, Options{MemMiB: 32, DirtyMiBPerSec: rate, TickMs: 100})
	v.waitBoot()
	v.waitTicks(10*time.Second, 5)

	from := v.serial.Last()
	v.wait(30*time.Second, "4 s of ticks", func(s *Serial) bool { return s.Last().Seen.Sub(from.Seen) >= 4*time.Second })
	to := v.serial.Last()
	got := float64(to.DirtiedMiB-from.DirtiedMiB) / to.Seen.Sub(from.Seen).Seconds()
	t.Logf("dirtied %.1f MiB/s (set %d)", got, rate)
	if got < rate/2 || got > rate*3/2 {
		t.Errorf("dirtied %.1f MiB/s; set %d", got, rate)
	}

	v.send("dirty 0")
	v.waitMessage(10*time.Second, "haven-cmd dirty 0")
	// A step of the dirtier may have been under way at the old rate.
	still := v.waitTicks(10*time.Second, 3)
	if after := v.waitTicks(10*time.Second, 10); after.DirtiedMiB != still.DirtiedMiB {
		t.Errorf("dirtied %d MiB more at rate 0", after.DirtiedMiB-still.DirtiedMiB)
	}
}

// The counter is in guest memory: on the target of a live migration it
// carries on from where it was on the source, and the watchdog, fed on
// the target, does not fire there.
func TestCounterCarriesOnAcrossMigration(t *testing.T) {
	const watchdog = 3 * time.Second
	o := Options{MemMiB: 32, DirtyMiBPerSec: 8, TickMs: 100, WatchdogSec: int(watchdog / time.Second)}
	src := boot(t, o)
	src.waitBoot()
	src.waitTicks(10*time.Second, 5)

	dst := boot(t, o, "-incoming", "defer")
	if _, err := dst.qmp.execute("migrate-incoming", map[string]any{"uri": "tcp:127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	var in struct {
		SocketAddress []struct{ Host, Port string } `json:"socket-address"`
	}
	if r, err := dst.qmp.execute("query-migrate", nil); err != nil || json.Unmarshal(r, &in) != nil || len(in.SocketAddress) == 0 {
		t.Fatalf("query-migrate on the target: %s, %v", r, err)
	}
	// The default 128 MiB/s throttles loopback.
	if _, err := src.qmp.execute("migrate-set-parameters", map[string]any{"max-bandwidth": 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.qmp.execute("migrate", map[string]any{"uri": "tcp:127.0.0.1:" + in.SocketAddress[0].Port}); err != nil {
		t.Fatal(err)
	}
	var status struct{ Status string }
	src.wait(60*time.Second, "the migration to complete", func(*Serial) bool {
		r, err := src.qmp.execute("query-migrate", nil)
		if err != nil || json.Unmarshal(r, &status) != nil {
			t.Fatalf("query-migrate: %s, %v", r, err)
		}
		if status.Status == "failed" || status.Status == "cancelled" {
			t.Fatalf("migration %s", status.Status)
		}
		return status.Status == "completed"
	})
	if err := src.serial.Poll(); err != nil {
		t.Fatal(err)
	}
	before := src.serial.Last()

	dst.wait(30*time.Second, "a tick on the target", func(s *Serial) bool { return s.Ticks() > 0 })
	resumed := dst.serial.First()
	t.Logf("last tick on the source %d, first on the target %d", before.N, resumed.N)
	// The guest stood still from the source's stop to the target's
	// start: the counter goes on with the next tick, or the one after if
	// the switchover cut a line in two; 10 is loose.
	if resumed.N <= before.N || resumed.N > before.N+10 {
		t.Errorf("the target's first tick is %d; the source's last was %d", resumed.N, before.N)
	}
	dst.wait(30*time.Second, "ticks on the target over two watchdog timeouts", func(s *Serial) bool {
		return s.Last().Seen.Sub(resumed.Seen) > 2*watchdog
	})
	if err := dst.serial.Increasing(); err != nil {
		t.Error(err)
	}
	if last := dst.serial.Last(); last.DirtiedMiB <= before.DirtiedMiB {
		t.Errorf("the target dirtied nothing: %d MiB after %d on the source", last.DirtiedMiB, before.DirtiedMiB)
	}
}
