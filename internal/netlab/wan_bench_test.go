//go:build linux

package netlab

import (
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/waitfor"
)

// BenchmarkWANCPU measures the CPU time (user+sys, all threads) the delay
// program (this test binary as `lab-wan`, wan.Command) spends per packet on one link of 30 ms ± 10 ms, at a fixed packet rate
// sent one way over 16 UDP flows. One op is one packet, so the rate sets
// the benchmark's length; a fixed count (5 s each) spares the ramp-up runs:
//
//	go test -run '^$' -bench 'WANCPU/pps=1000$' -benchtime 5000x ./internal/netlab/
//	go test -run '^$' -bench 'WANCPU/pps=20000$' -benchtime 100000x ./internal/netlab/
func BenchmarkWANCPU(b *testing.B) {
	for _, pps := range []int{1000, 20000} {
		b.Run(fmt.Sprintf("pps=%d", pps), func(b *testing.B) { benchWANCPU(b, pps) })
	}
}

func benchWANCPU(b *testing.B, pps int) {
	l := newLab(b)
	sa, sb := newSite(b, l, "a"), newSite(b, l, "b")
	a1, b1 := newHost(b, sa, "a1"), newHost(b, sb, "b1")
	must(b, l.SetWAN(sa, sb, WAN{Delay: wanDelay, Jitter: wanJitter}))
	key, err := l.linkKey(sa, sb)
	must(b, err)
	p, ok := l.wans[key].d.(*delayerProc)
	if !ok {
		b.Fatal("no delay program's process")
	}
	sink, err := b1.ListenPacket("udp", net.JoinHostPort(b1.IP(), "0"))
	if err != nil {
		b.Fatal(err)
	}
	sink.(*net.UDPConn).SetReadBuffer(8 << 20)
	var got atomic.Int64
	done := make(chan struct{})
	b.Cleanup(func() { sink.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	const flows = 16
	conns := make([]net.Conn, flows)
	for i := range conns {
		c, err := a1.DialContext(b.Context(), "udp", sink.LocalAddr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	payload := make([]byte, 64)

	cpu0, err := processCPU(p.pid())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for k := range b.N {
		// Sends are paced in bursts: sleeping per packet would need
		// timers finer than this VM gives.
		if d := time.Until(start.Add(time.Duration(k) * time.Second / time.Duration(pps))); d > time.Millisecond {
			time.Sleep(d)
		}
		if _, err := conns[k%flows].Write(payload); err != nil {
			b.Fatal(err)
		}
	}
	sent := time.Since(start)
	waitfor.Cond(b, 2*time.Second, fmt.Sprintf("all %d packets echoed (lost ones never are)", b.N), func() bool { return got.Load() >= int64(b.N) })
	b.StopTimer()
	cpu1, err := processCPU(p.pid())
	if err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	cpu := cpu1 - cpu0
	b.ReportMetric(float64(b.N)/sent.Seconds(), "pkts/s")
	b.ReportMetric(100*cpu.Seconds()/elapsed.Seconds(), "%cpu")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/pkt")
}

// processCPU is the user+system time of a process, all threads, from
// /proc/PID/stat (fields 14 and 15, in USER_HZ ticks, which the kernel ABI
// fixes at 100 per second).
func processCPU(pid int) (time.Duration, error) {
	f, err := statFields(pid, 15)
	if err != nil {
		return 0, err
	}
	var ticks int64
	for _, s := range f[14:16] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100), nil
}
