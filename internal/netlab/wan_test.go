//go:build linux

package netlab

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

// The WAN tests measure with UDP from the test process itself: sockets
// created inside the host namespaces (Host.DialContext, Host.ListenPacket)
// and served by goroutines here, so sender and echo server share one
// monotonic clock and Go, not ping, sets the pace.

// datagram is the payload of every test datagram.
type datagram struct {
	run  uint32 // one per ping call, so runs on one server don't mix
	flow uint32 // the sending socket
	seq  uint32 // within the flow
	idx  uint32 // within the run, in send order across flows
	sent time.Duration
}

const datagramLen = 24

var clock = time.Now()

func (p datagram) encode(b []byte) {
	binary.BigEndian.PutUint32(b[0:], p.run)
	binary.BigEndian.PutUint32(b[4:], p.flow)
	binary.BigEndian.PutUint32(b[8:], p.seq)
	binary.BigEndian.PutUint32(b[12:], p.idx)
	binary.BigEndian.PutUint64(b[16:], uint64(p.sent))
}

func decodeDatagram(b []byte) datagram {
	return datagram{
		run:  binary.BigEndian.Uint32(b[0:]),
		flow: binary.BigEndian.Uint32(b[4:]),
		seq:  binary.BigEndian.Uint32(b[8:]),
		idx:  binary.BigEndian.Uint32(b[12:]),
		sent: time.Duration(binary.BigEndian.Uint64(b[16:])),
	}
}

// maxArrivals bounds what an echo server remembers.
const maxArrivals = 100_000

// udpEcho echoes datagrams in a host's namespace and notes, per run, the
// order in which the probes came.
type udpEcho struct {
	addr     string
	mu       sync.Mutex
	arrivals map[uint32][]datagram
	n        int
}

func startUDPEcho(t *testing.T, h *Host) *udpEcho {
	t.Helper()
	pc, err := h.ListenPacket("udp", net.JoinHostPort(h.IP(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	// Bursts of released packets must not overflow the socket.
	pc.(*net.UDPConn).SetReadBuffer(4 << 20)
	e := &udpEcho{addr: pc.LocalAddr().String(), arrivals: map[uint32][]datagram{}}
	done := make(chan struct{})
	// Registered after New's cleanup, so it runs before the lab goes.
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < datagramLen {
				continue
			}
			p := decodeDatagram(buf)
			e.mu.Lock()
			if e.n < maxArrivals {
				e.arrivals[p.run] = append(e.arrivals[p.run], p)
				e.n++
			}
			e.mu.Unlock()
			pc.WriteTo(buf[:n], from)
		}
	}()
	return e
}

// pingOpts shapes one run: flows sockets each sending perFlow probes,
// interval apart, the flows evenly staggered; replies are awaited for wait
// after the last send.
type pingOpts struct {
	flows, perFlow int
	interval, wait time.Duration
	// underWay, if set, is closed once a third of the probes are out.
	underWay chan struct{}
}

type pingResult struct {
	sent     int
	rtt      []time.Duration // one per reply, sorted
	arrivals []datagram      // at the server, in arrival order
	// replyInversions counts replies that came after a later probe's
	// reply of the same flow.
	replyInversions int
}

var runSeq atomic.Uint32

// ping runs probes from host h to the echo server. It returns an error
// rather than failing the test, so it can run beside lab calls made from
// the test goroutine.
func (e *udpEcho) ping(h *Host, o pingOpts) (pingResult, error) {
	if o.flows*o.perFlow > maxArrivals/4 {
		return pingResult{}, fmt.Errorf("ping: %d probes is too many", o.flows*o.perFlow)
	}
	run := runSeq.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conns := make([]net.Conn, o.flows)
	for f := range conns {
		c, err := h.DialContext(ctx, "udp", e.addr)
		if err != nil {
			return pingResult{}, err
		}
		defer c.Close()
		c.(*net.UDPConn).SetReadBuffer(1 << 20)
		conns[f] = c
	}
	var mu sync.Mutex
	var res pingResult
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, 2048)
			last := -1
			for got := 0; got < o.perFlow; got++ {
				n, err := c.Read(buf)
				if err != nil {
					return // the deadline after the last send
				}
				rtt := time.Since(clock)
				p := decodeDatagram(buf[:n])
				mu.Lock()
				res.rtt = append(res.rtt, rtt-p.sent)
				if int(p.seq) < last {
					res.replyInversions++
				}
				mu.Unlock()
				last = max(last, int(p.seq))
			}
		})
	}
	start := time.Now()
	step := o.interval / time.Duration(o.flows)
	buf := make([]byte, datagramLen)
	var sendErr error
	for k := range o.flows * o.perFlow {
		if d := time.Until(start.Add(time.Duration(k) * step)); d > 0 {
			time.Sleep(d)
		}
		f := k % o.flows
		datagram{run: run, flow: uint32(f), seq: uint32(k / o.flows), idx: uint32(k), sent: time.Since(clock)}.encode(buf)
		if _, err := conns[f].Write(buf); err != nil {
			sendErr = err
			break
		}
		res.sent++
		if o.underWay != nil && res.sent == o.flows*o.perFlow/3 {
			close(o.underWay)
		}
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(o.wait))
	}
	wg.Wait()
	slices.Sort(res.rtt)
	e.mu.Lock()
	res.arrivals = slices.Clone(e.arrivals[run])
	delete(e.arrivals, run)
	e.mu.Unlock()
	return res, sendErr
}

func (r pingResult) quantile(q float64) time.Duration {
	if len(r.rtt) == 0 {
		return -1
	}
	return r.rtt[int(q*float64(len(r.rtt)-1))]
}

func (r pingResult) String() string {
	return fmt.Sprintf("%d/%d replies, rtt min/median/max %v/%v/%v", len(r.rtt), r.sent,
		r.quantile(0).Round(10*time.Microsecond), r.quantile(0.5).Round(10*time.Microsecond), r.quantile(1).Round(10*time.Microsecond))
}

// flowInversions counts probes that reached the server after a later probe
// of their own flow.
func flowInversions(arrivals []datagram) int {
	last := map[uint32]int{}
	n := 0
	for _, p := range arrivals {
		l, ok := last[p.flow]
		if ok && int(p.seq) < l {
			n++
		}
		if !ok || int(p.seq) > l {
			last[p.flow] = int(p.seq)
		}
	}
	return n
}

// crossInversions counts adjacent arrivals in the opposite order of their
// sending, whatever their flows.
func crossInversions(arrivals []datagram) int {
	n := 0
	for i := 1; i < len(arrivals); i++ {
		if arrivals[i].idx < arrivals[i-1].idx {
			n++
		}
	}
	return n
}

func mustPing(t *testing.T, e *udpEcho, h *Host, o pingOpts) pingResult {
	t.Helper()
	r, err := e.ping(h, o)
	if err != nil {
		t.Fatalf("ping from %s: %v", h.Name(), err)
	}
	return r
}

// Bounds of the tests' WAN: 30 ms ± 10 ms each way.
const (
	wanDelay  = 30 * time.Millisecond
	wanJitter = 10 * time.Millisecond
	// undelayed is the most a median round trip that crosses no WAN may
	// take on a busy two-core machine; a delayed one takes at least
	// 2*(wanDelay-wanJitter) = 40 ms.
	undelayed = 5 * time.Millisecond
)

// checkDelayed checks round trips across the test WAN: never below the
// smallest delay, the median near 2*delay (two uniform delays, each
// centred on the delay), none far beyond the largest.
func checkDelayed(t *testing.T, what string, r pingResult) {
	t.Helper()
	t.Logf("%s: %v", what, r)
	if len(r.rtt) != r.sent {
		t.Errorf("%s: %d of %d replies: the WAN lost packets it was given no loss for", what, len(r.rtt), r.sent)
	}
	if len(r.rtt) == 0 {
		return
	}
	// The release time of a packet is never before arrival+delay-jitter;
	// 1 ms covers clock reading order between this process and the delayer.
	if lo := 2*(wanDelay-wanJitter) - time.Millisecond; r.quantile(0) < lo {
		t.Errorf("%s: min rtt %v < %v", what, r.quantile(0), lo)
	}
	// Generous: `go test ./integration/...` runs this beside the cluster
	// tests on two cores, and a late timer or reader only ever adds.
	if hi := 2*(wanDelay+wanJitter) + 60*time.Millisecond; r.quantile(1) > hi {
		t.Errorf("%s: max rtt %v > %v", what, r.quantile(1), hi)
	}
	// With n samples of the sum of two uniform delays (a triangle over
	// 40-80 ms) the median's standard deviation is about 10 ms/sqrt(n):
	// under 1 ms here. Above 2*delay allow for the timers' lateness too
	// (Go's sleeps end up to 1 ms late: about +2 ms measured on an idle
	// machine, +2.7 ms at a load of 3.3 on two cores) and for a busy CPU.
	if m := r.quantile(0.5); m < 2*wanDelay-4*time.Millisecond || m > 2*wanDelay+8*time.Millisecond {
		t.Errorf("%s: median rtt %v, want within -4/+8 ms of %v", what, m, 2*wanDelay)
	}
}

func checkUndelayed(t *testing.T, what string, r pingResult) {
	t.Helper()
	t.Logf("%s: %v", what, r)
	if len(r.rtt) != r.sent {
		t.Errorf("%s: %d of %d replies", what, len(r.rtt), r.sent)
	}
	if m := r.quantile(0.5); m > undelayed || m < 0 {
		t.Errorf("%s: median rtt %v, want under %v: delayed", what, m, undelayed)
	}
}

// Spread probes so that jitter cannot reorder a flow's probes or replies
// (4*jitter apart): the samples are then independent draws, unaffected by
// the flow ordering, which holds a packet back behind a slow predecessor.
var spread = pingOpts{flows: 10, perFlow: 20, interval: 50 * time.Millisecond, wait: time.Second}

// quick checks reachability and delay with few packets.
var quick = pingOpts{flows: 4, perFlow: 10, interval: 5 * time.Millisecond, wait: time.Second}

type wanLab struct {
	l                    *Lab
	a, b, c              *Site
	a1, a2, b1, c1       *Host
	echoB, echoA2, echoC *udpEcho
}

func newWANLab(t *testing.T) *wanLab {
	t.Helper()
	w := &wanLab{l: newLab(t)}
	w.a, w.b, w.c = newSite(t, w.l, "a"), newSite(t, w.l, "b"), newSite(t, w.l, "c")
	w.a1, w.a2, w.b1, w.c1 = newHost(t, w.a, "a1"), newHost(t, w.a, "a2"), newHost(t, w.b, "b1"), newHost(t, w.c, "c1")
	w.echoB, w.echoA2, w.echoC = startUDPEcho(t, w.b1), startUDPEcho(t, w.a2), startUDPEcho(t, w.c1)
	return w
}

func (w *wanLab) link(t *testing.T) *wanLink {
	t.Helper()
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	key, err := w.l.linkKey(w.a, w.b)
	must(t, err)
	return w.l.wans[key]
}

func TestWAN(t *testing.T) {
	w := newWANLab(t)
	checkUndelayed(t, "a1→b1 before SetWAN", mustPing(t, w.echoB, w.a1, quick))

	timed(t, "SetWAN(a, b, 30ms±10ms)", func() error { return w.l.SetWAN(w.a, w.b, WAN{Delay: wanDelay, Jitter: wanJitter}) })
	checkDelayed(t, "a1→b1", mustPing(t, w.echoB, w.a1, spread))
	checkUndelayed(t, "a1→c1 (no WAN)", mustPing(t, w.echoC, w.a1, quick))
	checkUndelayed(t, "a1→a2 (same site)", mustPing(t, w.echoA2, w.a1, quick))

	// Two flows, a probe every millisecond between them: far closer than
	// the 20 ms spread of the jitter.
	r := mustPing(t, w.echoB, w.a1, pingOpts{flows: 2, perFlow: 300, interval: 2 * time.Millisecond, wait: time.Second})
	t.Logf("a1→b1 two flows at 500/s each: %v; order across flows broken %d times", r, crossInversions(r.arrivals))
	if len(r.arrivals) != r.sent || len(r.rtt) != r.sent {
		t.Errorf("%d sent, %d arrived, %d replies: the WAN lost packets", r.sent, len(r.arrivals), len(r.rtt))
	}
	if n := flowInversions(r.arrivals); n != 0 {
		t.Errorf("%d probes reached b1 after a later probe of their flow", n)
	}
	if r.replyInversions != 0 {
		t.Errorf("%d replies reached a1 after a later reply of their flow", r.replyInversions)
	}
	// Proof that the jitter is real and the order above is the delayer's
	// doing: between flows it does reorder. With 600 probes 1 ms apart
	// and 20 ms of jitter, no inversion at all would take a miracle.
	if crossInversions(r.arrivals) == 0 {
		t.Errorf("no reordering across flows: is there any jitter?")
	}
	// What the delay program cost so far is read from its own process.
	if pids := w.l.DelayerPids(); len(pids) != 1 {
		t.Errorf("delay programs %v, want one", pids)
	}
	if cpu, err := w.l.DelayerCPU(); err != nil {
		t.Errorf("DelayerCPU: %v", err)
	} else {
		t.Logf("the delay program used %s of CPU", cpu)
	}

	must(t, w.l.SetWAN(w.b, w.a, WAN{Delay: wanDelay, Jitter: wanJitter})) // same link, same WAN
	if k := w.link(t); k.queue != 1 {
		t.Errorf("SetWAN with the same WAN restarted the delayer (queue %d)", k.queue)
	}
	wantRules(t, w.l, "SetWAN", 2)

	// ClearWAN while a flow runs: rules go first, then the delayer lets its
	// packets go, so none is lost.
	w.lossless(t, "ClearWAN(a, b)", func() error { return w.l.ClearWAN(w.a, w.b) })
	wantRules(t, w.l, "ClearWAN", 0)
	checkUndelayed(t, "a1→b1 after ClearWAN", mustPing(t, w.echoB, w.a1, quick))
	must(t, w.l.ClearWAN(w.b, w.a)) // idempotent
}

func TestWANLoss(t *testing.T) {
	w := newWANLab(t)
	const loss = 0.02
	must(t, w.l.SetWAN(w.a, w.b, WAN{Delay: wanDelay, Jitter: wanJitter, Loss: loss}))
	wantRules(t, w.l, "SetWAN with loss", 4)
	// 2000 probes over 8 flows in a second; counted where they arrive, so
	// this is one direction's loss.
	r := mustPing(t, w.echoB, w.a1, pingOpts{flows: 8, perFlow: 250, interval: 4 * time.Millisecond, wait: time.Second})
	lost := r.sent - len(r.arrivals)
	mean := float64(r.sent) * loss
	sd := math.Sqrt(float64(r.sent) * loss * (1 - loss))
	t.Logf("a1→b1: %d of %d probes lost one way (%.2f%%); expected %.0f ± %.1f", lost, r.sent, 100*float64(lost)/float64(r.sent), mean, sd)
	// ±4 standard deviations: a false alarm once in about 16,000 runs.
	if float64(lost) < mean-4*sd || float64(lost) > mean+4*sd {
		t.Errorf("lost %d, want within %.0f ± %.0f", lost, mean, 4*sd)
	}
	if n := flowInversions(r.arrivals); n != 0 {
		t.Errorf("%d probes reached b1 after a later probe of their flow", n)
	}

	// Changing the loss alone keeps the delayer.
	must(t, w.l.SetWAN(w.a, w.b, WAN{Delay: wanDelay, Jitter: wanJitter, Loss: 0.5}))
	if k := w.link(t); k.queue != 1 {
		t.Errorf("changing only the loss restarted the delayer (queue %d)", k.queue)
	}
	// Loss without delay needs no delayer.
	must(t, w.l.SetWAN(w.a, w.b, WAN{Loss: loss}))
	if k := w.link(t); k.queue != 0 || k.d != nil {
		t.Errorf("loss alone: queue %d, delayer %v", k.queue, k.d)
	}
	wantRules(t, w.l, "loss alone", 2)
	checkUndelayed(t, "a1→b1 with loss alone", pingQuickLossy(t, w.echoB, w.a1))
}

// pingQuickLossy pings over a lossy link and keeps only the delay check's
// input: the replies that came.
func pingQuickLossy(t *testing.T, e *udpEcho, h *Host) pingResult {
	t.Helper()
	r := mustPing(t, e, h, quick)
	r.sent = len(r.rtt)
	return r
}

// TestWANChange changes the delay while a flow runs: the new delayer binds
// a fresh queue before the rules point at it and the old one lets its
// packets go only then, so nothing is lost.
func TestWANChange(t *testing.T) {
	w := newWANLab(t)
	must(t, w.l.SetWAN(w.a, w.b, WAN{Delay: wanDelay, Jitter: wanJitter}))
	const d2 = 10 * time.Millisecond
	w.lossless(t, "SetWAN(a, b, 10ms)", func() error { return w.l.SetWAN(w.a, w.b, WAN{Delay: d2}) })
	if k := w.link(t); k.queue != 2 {
		t.Errorf("after the change: queue %d, want 2", k.queue)
	}
	r := mustPing(t, w.echoB, w.a1, quick)
	t.Logf("a1→b1 at 10 ms each way: %v", r)
	if r.quantile(0) < 2*d2-time.Millisecond || r.quantile(0.5) > 2*d2+8*time.Millisecond {
		t.Errorf("rtt min %v median %v, want about %v", r.quantile(0), r.quantile(0.5), 2*d2)
	}
}

// TestWANKilled SIGKILLs the delay program, as a crash would: --queue-bypass lets
// packets through undelayed instead of dropping them all.
func TestWANKilled(t *testing.T) {
	w := newWANLab(t)
	must(t, w.l.SetWAN(w.a, w.b, WAN{Delay: wanDelay, Jitter: wanJitter}))
	if r := mustPing(t, w.echoB, w.a1, quick); r.quantile(0) < 2*(wanDelay-wanJitter)-time.Millisecond {
		t.Fatalf("not delayed before the kill: %v", r)
	}
	p, ok := w.link(t).d.(*delayerProc)
	if !ok {
		t.Fatalf("delayer is %T, not a delay program's process", w.link(t).d)
	}
	if err := p.kill(); err != nil {
		t.Fatal(err)
	}
	checkUndelayed(t, "a1→b1 after SIGKILL", mustPing(t, w.echoB, w.a1, quick))
	must(t, w.l.ClearWAN(w.a, w.b))
}

// TestWANPartition: a partition cuts a WAN link, and healing it gives the
// delayed link back.
func TestWANPartition(t *testing.T) {
	w := newWANLab(t)
	must(t, w.l.SetWAN(w.a, w.b, WAN{Delay: wanDelay, Jitter: wanJitter, Loss: 0.01}))
	must(t, w.l.Partition([]*Host{w.a1}, []*Host{w.b1}))
	rules, err := w.l.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 6 || !strings.Contains(rules[0], "-j DROP") || strings.Contains(rules[0], "statistic") ||
		!strings.Contains(rules[1], "-j DROP") || strings.Contains(rules[1], "statistic") {
		t.Errorf("want the partition's 2 DROP rules first, then the WAN's 4:\n%s", strings.Join(rules, "\n"))
	}
	r := mustPing(t, w.echoB, w.a1, pingOpts{flows: 2, perFlow: 20, interval: 10 * time.Millisecond, wait: 300 * time.Millisecond})
	if len(r.arrivals) != 0 || len(r.rtt) != 0 {
		t.Errorf("a1→b1 across a partition: %d probes arrived, %d replies", len(r.arrivals), len(r.rtt))
	}
	must(t, w.l.Heal([]*Host{w.a1}, []*Host{w.b1}))
	r = mustPing(t, w.echoB, w.a1, quick)
	t.Logf("a1→b1 healed: %v", r)
	if len(r.rtt) == 0 || r.quantile(0) < 2*(wanDelay-wanJitter)-time.Millisecond {
		t.Errorf("after Heal: %v, want the WAN's delay back", r)
	}
}

// inProcessDelayer runs wan.Delayer in the test binary, so `go test -race`
// sees its goroutines under real traffic.
type inProcessDelayer struct{ d *wan.Delayer }

func (p inProcessDelayer) stop() (string, error) {
	err := p.d.Stop()
	var lines []string
	for _, s := range p.d.Stats().Links {
		lines = append(lines, s.String())
	}
	return strings.Join(lines, "; "), err
}

func TestWANInProcess(t *testing.T) {
	w := newWANLab(t)
	var last *wan.Delayer
	w.l.newDelayer = func(name string, k wan.Link) (delayer, error) {
		d, err := wan.New(wan.Config{NetNS: w.l.router, Links: []wan.Link{k}})
		if err != nil {
			return nil, err
		}
		if err := d.Start(context.Background()); err != nil {
			return nil, err
		}
		last = d
		return inProcessDelayer{d}, nil
	}
	must(t, w.l.SetWAN(w.a, w.b, WAN{Delay: wanDelay, Jitter: wanJitter}))
	r := mustPing(t, w.echoB, w.a1, pingOpts{flows: 4, perFlow: 100, interval: 2 * time.Millisecond, wait: time.Second})
	t.Logf("a1→b1: %v; stats %+v", r, last.Stats())
	if len(r.arrivals) != r.sent || len(r.rtt) != r.sent {
		t.Errorf("%d sent, %d arrived, %d replies", r.sent, len(r.arrivals), len(r.rtt))
	}
	if n := flowInversions(r.arrivals); n != 0 || r.replyInversions != 0 {
		t.Errorf("reordered within flows: %d at b1, %d at a1", n, r.replyInversions)
	}
	if r.quantile(0) < 2*(wanDelay-wanJitter)-time.Millisecond {
		t.Errorf("min rtt %v", r.quantile(0))
	}
	s := last.Stats()
	if len(s.Links) != 1 || s.Links[0].Packets < uint64(2*r.sent) || s.Links[0].MaxHeld == 0 {
		t.Errorf("stats %+v: want both directions of %d probes counted", s, r.sent)
	}
	must(t, w.l.ClearWAN(w.a, w.b))
	s = last.Stats()
	if s.Links[0].Held != 0 || s.Flows != 0 || s.Links[0].KernelDropped != 0 || s.Links[0].UserDropped != 0 {
		t.Errorf("after stop: %+v, want nothing held and nothing dropped", s)
	}
	if err := last.Err(); err != nil {
		t.Errorf("delayer: %v", err)
	}
}

func TestRulesFor(t *testing.T) {
	l := &Lab{}
	a, b, c := &Site{lab: l, name: "a", index: 1}, &Site{lab: l, name: "b", index: 2}, &Site{lab: l, name: "c", index: 3}
	blocked := map[pair]bool{{"10.77.1.2", "10.77.2.2"}: true, {"10.77.2.2", "10.77.1.2"}: true}
	wans := map[[2]int]*wanLink{
		{2, 3}: {a: b, b: c, wan: WAN{Loss: 0.5}},
		{1, 2}: {a: a, b: b, wan: WAN{Delay: wanDelay, Jitter: wanJitter, Loss: 0.02}, queue: 7},
	}
	want := `*filter
:HAVEN_LAB - [0:0]
-A HAVEN_LAB -s 10.77.1.2/32 -d 10.77.2.2/32 -j DROP
-A HAVEN_LAB -s 10.77.2.2/32 -d 10.77.1.2/32 -j DROP
-A HAVEN_LAB -s 10.77.1.0/24 -d 10.77.2.0/24 -m statistic --mode random --probability 0.02 -j DROP
-A HAVEN_LAB -s 10.77.1.0/24 -d 10.77.2.0/24 -j NFQUEUE --queue-num 7 --queue-bypass
-A HAVEN_LAB -s 10.77.2.0/24 -d 10.77.1.0/24 -m statistic --mode random --probability 0.02 -j DROP
-A HAVEN_LAB -s 10.77.2.0/24 -d 10.77.1.0/24 -j NFQUEUE --queue-num 7 --queue-bypass
-A HAVEN_LAB -s 10.77.2.0/24 -d 10.77.3.0/24 -m statistic --mode random --probability 0.5 -j DROP
-A HAVEN_LAB -s 10.77.3.0/24 -d 10.77.2.0/24 -m statistic --mode random --probability 0.5 -j DROP
COMMIT
`
	if got := rulesFor(blocked, wans); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestDelayerNetns(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		ns   string
		ok   bool
	}{
		{[]string{"/tmp/haven-lab-bin-1-2-3/havenwan", "--netns", "hvab12c-r", "--link", "queue=1,delay=1ms"}, "hvab12c-r", true},
		{[]string{"havenwan", "--link", "queue=1,delay=1ms", "-netns=hvab12c-r"}, "hvab12c-r", true},
		{[]string{"havenwan", "--netns", "production"}, "production", false},
		{[]string{"havenwan", "--netns"}, "", false},
		{[]string{"/usr/bin/ip", "--netns", "hvab12c-r"}, "", false},
		{[]string{"havenwan"}, "", false},
		{[]string{"/usr/local/bin/haven", "lab-wan", "--netns", "hvab12c-r", "--link", "queue=1,delay=1ms"}, "hvab12c-r", true},
		{[]string{"/tmp/go-build1/b001/netlab.test", "lab-wan", "--netns=hvab12c-r"}, "hvab12c-r", true},
		{[]string{"/usr/local/bin/haven", "agent", "--netns", "hvab12c-r"}, "", false},
		{[]string{"/usr/local/bin/haven", "--netns", "hvab12c-r", "lab-wan"}, "", false},
		{nil, "", false},
	} {
		ns, ok := delayerNetns(tc.argv)
		if ns != tc.ns || ok != tc.ok {
			t.Errorf("delayerNetns(%q) = %q, %v; want %q, %v", tc.argv, ns, ok, tc.ns, tc.ok)
		}
	}
}

// lossless runs change once a1 is a third into a flow of 300 packets to
// b1, 1 ms apart, and fails the test if any of them or its reply is lost.
func (w *wanLab) lossless(t *testing.T, what string, change func() error) {
	t.Helper()
	type result struct {
		r   pingResult
		err error
	}
	ch := make(chan result, 1)
	underWay := make(chan struct{})
	go func() {
		r, err := w.echoB.ping(w.a1, pingOpts{flows: 1, perFlow: 300, interval: time.Millisecond, wait: time.Second, underWay: underWay})
		ch <- result{r, err}
	}()
	var res result
	select {
	case <-underWay: // the change strikes the flow midway
		timed(t, what, change)
		res = <-ch
	case res = <-ch:
		t.Fatalf("the flow ended before a third of it was out: %v", res.err)
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	t.Logf("a1→b1 across %s: %v", what, res.r)
	if len(res.r.arrivals) != res.r.sent || len(res.r.rtt) != res.r.sent {
		t.Errorf("across %s: %d sent, %d arrived, %d replies: packets lost", what, res.r.sent, len(res.r.arrivals), len(res.r.rtt))
	}
}
