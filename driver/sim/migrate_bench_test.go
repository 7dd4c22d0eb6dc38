package sim

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

var benchDowntime = flag.Duration("migrate.downtime", 50*time.Millisecond, "BenchmarkMigrate: the downtime target")

// BenchmarkMigrate moves a 256 MiB VM whose every page holds data over
// loopback TCP, with a guest that dirties none of it or 64 MiB/s at
// random pages of all of it, and reports the link's MB/s over the whole
// move, the rounds, what was sent, the pause, the throttle, and how long
// the source's checksum of its memory takes:
//
//	go test -run '^$' -bench BenchmarkMigrate -benchtime 3x ./driver/sim
func BenchmarkMigrate(b *testing.B) {
	for _, dirty := range []int64{0, 64 << 20} {
		b.Run(fmt.Sprintf("256MiB/dirty=%dMiBps", dirty>>20), func(b *testing.B) {
			benchMigrate(b, 256<<20, dirty)
		})
	}
}

func benchMigrate(b *testing.B, memBytes, dirty int64) {
	dir := b.TempDir()
	guest := Guest{WorkingSetBytes: memBytes, DirtyRateBytesPerSec: dirty, Tick: 5 * time.Millisecond}
	n1 := New(Config{Node: "n1", SharedDir: dir, Guest: guest})
	n2 := New(Config{Node: "n2", SharedDir: dir, Guest: guest})
	defer n1.Close()
	defer n2.Close()
	var elapsed, paused, hashing time.Duration
	var sent, rounds, throttle int64
	for i := range b.N {
		b.StopTimer()
		id := driver.VMID{Group: fmt.Sprintf("g%d", i), Resource: "vm"}
		spec := driver.VMSpec{ID: id, Epoch: 1, VCPUs: 1, MemoryBytes: memBytes}
		if err := n1.Start(context.Background(), spec, time.Now().Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		fill(b, n1, id)
		src, dst := connPair(b, "tcp")
		target := spec
		target.Epoch = 2
		b.StartTimer()
		t0 := time.Now()
		mig := migrate(context.Background(), b, n1, n2, 1, target, src, dst, driver.MigrateOptions{DowntimeTarget: *benchDowntime}, nil)
		elapsed += time.Since(t0)
		b.StopTimer()
		if mig.outErr != nil || mig.inErr != nil {
			b.Fatalf("out: %v, in: %v", mig.outErr, mig.inErr)
		}
		sent += mig.res.BytesSent
		rounds += int64(mig.res.Rounds)
		throttle += int64(mig.res.ThrottlePercent)
		paused += mig.res.Paused
		v := n1.lookup(id)
		t1 := time.Now()
		_ = v.mem.checksum() // paused: no one writes it
		hashing += time.Since(t1)
		_ = n1.Kill(id, 1)
		_ = n2.Kill(id, 2)
		_ = n1.Forget(id, 1)
		_ = n2.Forget(id, 2)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(sent)/elapsed.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(sent)/n/(1<<20), "sent-MiB")
	b.ReportMetric(float64(rounds)/n, "rounds")
	b.ReportMetric(float64(throttle)/n, "throttle-%")
	b.ReportMetric(float64(paused.Milliseconds())/n, "paused-ms")
	b.ReportMetric(float64(hashing.Microseconds())/n/1e3, "checksum-ms")
}

// fill writes every page of id's memory, as a guest that has touched all
// of it, but the counter (FillMemory).
func fill(t testing.TB, d *Driver, id driver.VMID) {
	t.Helper()
	if _, err := d.FillMemory(id); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkChecksum hashes 1 GiB of guest memory that holds data, as the
// source of a migration does in its pause.
func BenchmarkChecksum(b *testing.B) {
	m, err := newMemory(1 << 30)
	if err != nil {
		b.Fatal(err)
	}
	defer m.free()
	for i := range m.pages() {
		copy(m.page(i), pattern)
		binary.LittleEndian.PutUint64(m.page(i)[8:], uint64(i))
	}
	b.SetBytes(m.size())
	for b.Loop() {
		_ = m.checksum()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1e3, "ms/GiB")
}
