//go:build linux

package wan

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	// copyRange is how much of each packet the kernel copies to us: an
	// IPv4 header with the most options (60 bytes) and the two ports.
	copyRange = 64
	// queueLen bounds the packets the kernel holds per queue; beyond it
	// the kernel drops (counted as KernelDropped). 16384 is a second of
	// 16k packets/s at 1 s of delay, far above what the lab sends.
	queueLen = 16384
	// readBuffer is the socket's receive buffer. Packets the kernel cannot
	// fit in it are dropped (counted as UserDropped); 8 MiB holds over
	// 50,000 of our 64-byte copies with their headers.
	readBuffer = 8 << 20
	// verdictBatch bounds the verdicts sent in one sendmsg (32 bytes each).
	verdictBatch = 256

	// drainWait bounds how long stopping waits for the kernel's queues to
	// empty (see drain).
	drainWait = time.Second

	netnsDir = "/run/netns"
)

// Config is what a Delayer delays.
type Config struct {
	// NetNS names the network namespace (a file in /run/netns, or a path)
	// whose queues to bind; empty means the caller's namespace.
	NetNS string
	Links []Link
}

// Delayer holds the packets of its queues for their links' delays.
//
// Packets arrive on one goroutine per queue (go-nfqueue's reader), go into
// one min-heap ordered by release time, and one goroutine with one timer
// gives the verdicts as they come due. Stopping gives the ACCEPT verdict to
// everything still held before unbinding, so stopping heals the WAN instead
// of dropping what was in flight.
type Delayer struct {
	cfg  Config
	base time.Time // the clock's zero: times are durations since base

	wake chan struct{} // an earlier release time than the timer's was added

	mu            sync.Mutex
	sched         *sched
	queues        []*queue
	draining      bool // set once stopping: new packets are accepted at once
	verdictErrors uint64

	kstatsMu sync.Mutex
	kstats   *os.File // the namespace's /proc/net/netfilter/nfnetlink_queue

	// errMu, not mu: fail is called from accept, which may run under mu.
	errMu sync.Mutex
	err   error // the first fatal error

	cancel context.CancelFunc
	done   chan struct{}
}

// queue is one bound NFQUEUE queue; its counters are guarded by Delayer.mu.
type queue struct {
	link    Link
	nf      *nfqueue.Nfqueue
	unbind  context.CancelFunc
	packets uint64
	held    int
	maxHeld int
	kernel  kernelStats // last read, kept for Stats after the queue is gone
}

// Stats are a Delayer's counters.
type Stats struct {
	Links []LinkStats
	// Flows is the number of flows with packets held now.
	Flows int
	// VerdictErrors counts verdicts the kernel refused (unknown packet id).
	VerdictErrors uint64
}

// LinkStats are the counters of one link's queue.
type LinkStats struct {
	Queue   uint16
	Packets uint64 // packets received from the kernel
	Held    int    // packets held now
	MaxHeld int    // most packets held at once
	// The kernel's own counters, as last read: packets dropped because the
	// queue was full, and because they could not be passed to us (socket
	// buffer full). Both should stay 0.
	KernelDropped uint64
	UserDropped   uint64
}

func (s LinkStats) String() string {
	return fmt.Sprintf("queue=%d packets=%d held=%d maxheld=%d kernel_dropped=%d user_dropped=%d",
		s.Queue, s.Packets, s.Held, s.MaxHeld, s.KernelDropped, s.UserDropped)
}

// New checks the configuration; Start binds.
func New(cfg Config) (*Delayer, error) {
	if err := validateLinks(cfg.Links); err != nil {
		return nil, err
	}
	cfg.Links = append([]Link(nil), cfg.Links...)
	return &Delayer{
		cfg:   cfg,
		wake:  make(chan struct{}, 1),
		sched: newSched(func(n int64) int64 { return rand.Int64N(n + 1) }),
		done:  make(chan struct{}),
	}, nil
}

// Start binds every queue and returns once packets sent to them are
// delayed. The Delayer runs until ctx is cancelled, Stop is called or a
// queue's socket fails; then it accepts every packet it holds, unbinds and
// closes Done. Call it once.
func (d *Delayer) Start(ctx context.Context) error {
	err := d.start(ctx)
	if err != nil {
		d.errMu.Lock()
		d.err = err
		d.errMu.Unlock()
		close(d.done)
	}
	return err
}

func (d *Delayer) start(ctx context.Context) error {
	ns := -1
	if d.cfg.NetNS != "" {
		path := d.cfg.NetNS
		if !strings.Contains(path, "/") {
			path = filepath.Join(netnsDir, path)
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("network namespace: %w", err)
		}
		// The sockets keep the namespace; the file isn't needed after.
		defer f.Close()
		ns = int(f.Fd())
	}
	d.base = time.Now()
	ctx, d.cancel = context.WithCancel(ctx)
	for i, k := range d.cfg.Links {
		q, err := d.bind(i, k, ns)
		if err != nil {
			d.cancel()
			d.unbindAll()
			return fmt.Errorf("queue %d: %w", k.Queue, err)
		}
		d.mu.Lock()
		d.queues = append(d.queues, q)
		d.mu.Unlock()
	}
	f, err := openKernelStats(ns)
	if err != nil {
		d.cancel()
		d.unbindAll()
		return err
	}
	d.kstats = f
	go d.run(ctx)
	return nil
}

func (d *Delayer) bind(i int, k Link, ns int) (*queue, error) {
	cfg := nfqueue.Config{
		NfQueue:      k.Queue,
		MaxPacketLen: copyRange,
		MaxQueueLen:  queueLen,
		Copymode:     nfqueue.NfQnlCopyPacket,
		// GSO: take a TCP super-packet whole instead of having the kernel
		// segment it first, which costs CPU and multiplies the verdicts.
		Flags:    nfqueue.NfQaCfgFlagGSO,
		AfFamily: unix.AF_INET,
	}
	if ns >= 0 {
		cfg.NetNS = ns
	}
	nf, err := nfqueue.Open(&cfg)
	if err != nil {
		return nil, err
	}
	// Without this a full socket buffer makes reads fail with ENOBUFS;
	// the kernel counts the lost packets (UserDropped) either way.
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		nf.Close()
		return nil, err
	}
	if err := nf.Con.SetReadBuffer(readBuffer); err != nil {
		nf.Close()
		return nil, err
	}
	q := &queue{link: k, nf: nf}
	var bindCtx context.Context
	bindCtx, q.unbind = context.WithCancel(context.Background())
	err = nf.RegisterWithErrorFunc(bindCtx, d.hook(i, q), func(err error) int {
		if bindCtx.Err() != nil {
			return 1 // unbinding: the read was interrupted on purpose
		}
		if errors.Is(err, unix.ENOENT) {
			// A verdict for an id the kernel no longer holds; the
			// reply comes back on the reading side.
			d.mu.Lock()
			d.verdictErrors++
			d.mu.Unlock()
			return 0
		}
		var oe *netlink.OpError
		if errors.As(err, &oe) && oe.Timeout() {
			return 0
		}
		d.fail(fmt.Errorf("queue %d: %w", k.Queue, err))
		return 1
	})
	if err != nil {
		q.unbind()
		nf.Close()
		return nil, err
	}
	return q, nil
}

// hook receives the packets of queue i.
func (d *Delayer) hook(i int, q *queue) nfqueue.HookFunc {
	return func(a nfqueue.Attribute) int {
		if a.PacketID == nil {
			return 0
		}
		var p []byte
		if a.Payload != nil {
			p = *a.Payload
		}
		key := flowOf(p)
		now := time.Since(d.base)
		d.mu.Lock()
		q.packets++
		if d.draining {
			// After the held packets were flushed: under mu, so this
			// verdict cannot overtake the flush.
			d.accept([]entry{{id: *a.PacketID, queue: i}})
			d.mu.Unlock()
			return 0
		}
		at := d.sched.add(i, *a.PacketID, key, now, q.link.Delay, q.link.Jitter)
		q.held++
		q.maxHeld = max(q.maxHeld, q.held)
		next, _ := d.sched.next()
		d.mu.Unlock()
		if next == at {
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
		return 0
	}
}

// run gives the verdicts until ctx ends, then heals and unbinds.
func (d *Delayer) run(ctx context.Context) {
	defer close(d.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var batch []entry
	for {
		d.mu.Lock()
		batch = d.take(time.Since(d.base), batch[:0])
		next, ok := d.sched.next()
		d.mu.Unlock()
		// Outside the lock so arriving packets don't wait for the
		// syscall; this goroutine alone sends timed verdicts, in order.
		d.accept(batch)
		if ok {
			timer.Reset(next - time.Since(d.base))
		} else {
			timer.Stop()
		}
		select {
		case <-timer.C:
		case <-d.wake:
		case <-ctx.Done():
			d.drain()
			d.unbindAll()
			return
		}
	}
}

// take removes the packets due at now from the heap. Called with mu held.
func (d *Delayer) take(now time.Duration, out []entry) []entry {
	n := len(out)
	out = d.sched.due(now, out)
	for _, e := range out[n:] {
		d.queues[e.queue].held--
	}
	return out
}

// drain accepts every held packet in release order, then lets new arrivals
// through at once until the kernel holds nothing for us: unbinding drops
// whatever the kernel still holds, including packets already queued to our
// socket but not yet read. When the rules still send packets here that
// never happens, so the wait is bounded; whoever stops a Delayer should take
// its rules away first (the lab does).
func (d *Delayer) drain() {
	d.mu.Lock()
	d.draining = true
	batch := d.take(1<<63-1, nil)
	d.accept(batch)
	d.mu.Unlock()
	for deadline := time.Now().Add(drainWait); time.Now().Before(deadline); {
		if d.kernelHolds() == 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// kernelHolds reads the kernel's count of packets of our queues that await
// a verdict, and keeps its drop counters for Stats.
func (d *Delayer) kernelHolds() uint64 {
	ks, err := d.readKernelStats()
	if err != nil {
		return 0 // nothing to wait for that we could see
	}
	var held uint64
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, q := range d.queues {
		if s, ok := ks[q.link.Queue]; ok {
			q.kernel = s
			held += s.held
		}
	}
	return held
}

func (d *Delayer) unbindAll() {
	for _, q := range d.queues {
		q.unbind()
		// Closing the socket is what unbinds for sure: go-nfqueue's own
		// unbind request reads its reply with the read deadline it just
		// set in the past.
		q.nf.Close()
	}
	d.kstatsMu.Lock()
	if d.kstats != nil {
		d.kstats.Close()
		d.kstats = nil
	}
	d.kstatsMu.Unlock()
}

// Verdict messages, from linux/netfilter/nfnetlink_queue.h: go-nfqueue sends
// one per sendmsg; a batch of them in one sendmsg costs one syscall.
const (
	nfnlSubsysQueue = 3
	nfqnlMsgVerdict = 1
	nfqaVerdictHdr  = 2
	nfAccept        = 1
)

// accept gives the ACCEPT verdict to each entry, in order.
func (d *Delayer) accept(batch []entry) {
	for len(batch) > 0 {
		// Consecutive entries of one queue go in one sendmsg; order
		// across queues doesn't matter (different links).
		q := batch[0].queue
		n := 1
		for n < len(batch) && n < verdictBatch && batch[n].queue == q {
			n++
		}
		msgs := make([]netlink.Message, n)
		buf := make([]byte, 16*n)
		for i, e := range batch[:n] {
			b := buf[16*i : 16*(i+1)]
			// struct nfgenmsg: family, version, res_id (the queue).
			b[0], b[1] = unix.AF_INET, 0
			binary.BigEndian.PutUint16(b[2:], d.queues[q].link.Queue)
			// struct nlattr, then struct nfqnl_msg_verdict_hdr.
			binary.NativeEndian.PutUint16(b[4:], 12)
			binary.NativeEndian.PutUint16(b[6:], nfqaVerdictHdr)
			binary.BigEndian.PutUint32(b[8:], nfAccept)
			binary.BigEndian.PutUint32(b[12:], e.id)
			msgs[i] = netlink.Message{
				Header: netlink.Header{
					Type:  netlink.HeaderType(nfnlSubsysQueue<<8 | nfqnlMsgVerdict),
					Flags: netlink.Request,
				},
				Data: b,
			}
		}
		if _, err := d.queues[q].nf.Con.SendMessages(msgs); err != nil {
			d.fail(fmt.Errorf("queue %d: verdict: %w", d.queues[q].link.Queue, err))
		}
		batch = batch[n:]
	}
}

// fail records the first fatal error and stops the Delayer.
func (d *Delayer) fail(err error) {
	d.errMu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.errMu.Unlock()
	d.cancel()
}

// Stop heals and unbinds, waits for that, and returns the error that
// stopped the Delayer early (or Start's), if any. Call it after Start.
func (d *Delayer) Stop() error {
	if d.cancel != nil { // nil when Start failed early
		d.cancel()
	}
	<-d.done
	return d.Err()
}

// Done is closed once the Delayer has healed and unbound.
func (d *Delayer) Done() <-chan struct{} { return d.done }

// Err is the error that stopped the Delayer, or nil.
func (d *Delayer) Err() error {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.err
}

// Stats returns the counters now, with the kernel's as last read (they are
// read afresh here while the queues are bound).
func (d *Delayer) Stats() Stats {
	select {
	case <-d.done:
	default:
		d.kernelHolds()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{Flows: len(d.sched.flows), VerdictErrors: d.verdictErrors}
	for _, q := range d.queues {
		s.Links = append(s.Links, LinkStats{
			Queue:         q.link.Queue,
			Packets:       q.packets,
			Held:          q.held,
			MaxHeld:       q.maxHeld,
			KernelDropped: q.kernel.dropped,
			UserDropped:   q.kernel.userDropped,
		})
	}
	return s
}

// kernelStats is one line of /proc/net/netfilter/nfnetlink_queue.
type kernelStats struct {
	held, dropped, userDropped uint64
}

// openKernelStats opens the queue statistics of namespace ns (-1: ours).
// /proc/net files show the namespace of the thread that opened them, for as
// long as they stay open, so the file is opened on a thread switched into
// the namespace.
func openKernelStats(ns int) (*os.File, error) {
	const path = "/proc/thread-self/net/netfilter/nfnetlink_queue"
	if ns < 0 {
		return os.Open(path)
	}
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer home.Close()
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		f, err := os.Open(path)
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			// Otherwise the thread stays locked and dies with this
			// goroutine rather than run others in the wrong namespace.
			runtime.UnlockOSThread()
		}
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// readKernelStats reads the statistics of every queue bound in the
// namespace, by queue number.
func (d *Delayer) readKernelStats() (map[uint16]kernelStats, error) {
	d.kstatsMu.Lock()
	defer d.kstatsMu.Unlock()
	if d.kstats == nil {
		return nil, errors.New("closed")
	}
	if _, err := d.kstats.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(d.kstats)
	if err != nil {
		return nil, err
	}
	return parseKernelStats(string(b))
}

// parseKernelStats reads lines of "queue portid held copy_mode copy_range
// dropped user_dropped id_sequence 1" (net/netfilter/nfnetlink_queue.c,
// seq_show).
func parseKernelStats(s string) (map[uint16]kernelStats, error) {
	out := map[uint16]kernelStats{}
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) < 7 {
			return nil, fmt.Errorf("nfnetlink_queue: malformed line %q", line)
		}
		var v [7]uint64
		for _, i := range []int{0, 2, 5, 6} {
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("nfnetlink_queue: malformed line %q", line)
			}
			v[i] = n
		}
		out[uint16(v[0])] = kernelStats{held: v[2], dropped: v[5], userDropped: v[6]}
	}
	return out, nil
}
