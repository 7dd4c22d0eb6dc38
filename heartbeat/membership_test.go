package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"log/slog"
)

// fast keeps the suite quick: a dead node is noticed in about 350ms.
func fast() Profile {
	return Profile{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond, SuspicionMult: 2, GossipInterval: 50 * time.Millisecond}
}

// slow is clearly slower than fast (about 2s) without making the suite slow.
func slow() Profile {
	return Profile{ProbeInterval: 600 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond, SuspicionMult: 2, GossipInterval: 100 * time.Millisecond}
}

const settle = 10 * time.Second // deadline for anything the cluster should do

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v still waiting for %s: %v", settle, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logWriter sends logs to t.Log until the test is over; memberlist's
// goroutines may still log while shutting down, and t.Log after the end of
// a test panics.
type logWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
	all  strings.Builder
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *logWriter) logged(s string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !strings.Contains(w.all.String(), s) {
		return fmt.Errorf("%q not logged yet", s)
	}
	return nil
}

func (w *logWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

type stamped struct {
	Event
	at time.Time
}

// recorder keeps the events a node delivered.
type recorder struct {
	mu     sync.Mutex
	events []stamped
}

func (r *recorder) about(name string) []stamped {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []stamped
	for _, e := range r.events {
		if e.Member.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func (r *recorder) types(name string) []EventType {
	var out []EventType
	for _, e := range r.about(name) {
		out = append(out, e.Type)
	}
	return out
}

// wait returns the n-th (1-based) event of type typ about name.
func (r *recorder) wait(t *testing.T, typ EventType, name string, n int) stamped {
	t.Helper()
	var found stamped
	waitFor(t, fmt.Sprintf("event %v #%d about %s", typ, n, name), func() error {
		seen := 0
		for _, e := range r.about(name) {
			if e.Type == typ {
				if seen++; seen == n {
					found = e
					return nil
				}
			}
		}
		return fmt.Errorf("events so far: %v", r.types(name))
	})
	return found
}

type node struct {
	*Membership
	cfg Config
	rec *recorder
	log *logWriter
}

func testConfig(name, site string) Config {
	return Config{
		Name:      name,
		Site:      site,
		BindAddr:  "127.0.0.1",
		SameSite:  fast(),
		CrossSite: fast(),
		Meta:      Meta{Version: "1", RaftAddr: "127.0.0.1:1", Expect: 3},
	}
}

func start(t *testing.T, name, site string, mods ...func(*Config)) *node {
	t.Helper()
	cfg := testConfig(name, site)
	for _, mod := range mods {
		mod(&cfg)
	}
	return startConfig(t, cfg)
}

func startConfig(t *testing.T, cfg Config) *node {
	t.Helper()
	w := &logWriter{t: t}
	cfg.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", cfg.Name)
	ch := make(chan Event)
	cfg.Events = ch
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Name, err)
	}
	rec := &recorder{}
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case e := <-ch:
				rec.mu.Lock()
				rec.events = append(rec.events, stamped{e, time.Now()})
				rec.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		if err := m.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s): %v", cfg.Name, err)
		}
		close(stop)
		w.close()
	})
	return &node{m, cfg, rec, w}
}

func (n *node) join(t *testing.T, to *node) {
	t.Helper()
	if _, err := n.Join([]string{to.WANAddr()}); err != nil {
		t.Fatalf("%s joining %s: %v", n.name, to.name, err)
	}
}

// sees checks that n's Members are exactly want, all alive.
func (n *Membership) sees(want ...string) error {
	var got []string
	for _, m := range n.Members() {
		if m.State != StateAlive {
			return fmt.Errorf("%s sees %s %v", n.name, m.Name, m.State)
		}
		got = append(got, m.Name)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s sees %v, want %v", n.name, got, want)
	}
	return nil
}

func (n *Membership) poolSizes(lan, wan int) error {
	if l, w := n.lan.NumMembers(), n.wan.NumMembers(); l != lan || w != wan {
		return fmt.Errorf("%s: LAN pool %d alive, WAN pool %d; want %d and %d", n.name, l, w, lan, wan)
	}
	return nil
}

// twoSites starts a1 and a2 in site A and b1 in site B, all joined through a1.
func twoSites(t *testing.T, mods ...func(*Config)) (a1, a2, b1 *node) {
	a1 = start(t, "a1", "A", mods...)
	a2 = start(t, "a2", "A", mods...)
	b1 = start(t, "b1", "B", mods...)
	a2.join(t, a1)
	b1.join(t, a1)
	waitFor(t, "a converged cluster", func() error {
		return errors.Join(
			a1.sees("a1", "a2", "b1"), a2.sees("a1", "a2", "b1"), b1.sees("a1", "a2", "b1"),
			a1.poolSizes(2, 3), a2.poolSizes(2, 3), b1.poolSizes(1, 3))
	})
	return a1, a2, b1
}

func TestOneSiteJoinThroughOneAddress(t *testing.T) {
	a1 := start(t, "a1", "A")
	a2 := start(t, "a2", "A")
	a3 := start(t, "a3", "A")
	a2.join(t, a1)
	a3.join(t, a1)
	nodes := []*node{a1, a2, a3}
	waitFor(t, "everyone to see 3 alive in both pools", func() error {
		var errs []error
		for _, n := range nodes {
			errs = append(errs, n.sees("a1", "a2", "a3"), n.poolSizes(3, 3))
		}
		return errors.Join(errs...)
	})
	for _, n := range nodes {
		for _, other := range nodes {
			// A node is in both pools, but joins once.
			if got := n.rec.types(other.name); !slices.Equal(got, []EventType{EventJoin}) {
				t.Errorf("%s's events about %s: %v, want one join", n.name, other.name, got)
			}
		}
		if m, _ := a1.Member(n.name); m.Addr != n.WANAddr() || m.Meta.LANAddr != n.LANAddr() || m.Meta.Site != "A" {
			t.Errorf("a1 sees %+v, want Addr %s, LANAddr %s, site A", m, n.WANAddr(), n.LANAddr())
		}
	}
	if got := a2.LocalMember(); got.Name != "a2" || got.State != StateAlive || got.Addr != a2.WANAddr() || got.Meta.Version != "1" {
		t.Errorf("LocalMember() = %+v", got)
	}
}

func TestTwoSitesHaveSeparateLANPools(t *testing.T) {
	a1, _, b1 := twoSites(t)
	if m, _ := a1.Member("b1"); m.Meta.Site != "B" {
		t.Errorf("a1 sees b1 in site %q, want B", m.Meta.Site)
	}
	// Labels keep the pools apart even if someone joins across them.
	if _, err := a1.lan.Join([]string{b1.LANAddr()}); err == nil {
		t.Error("a1's LAN pool (site A) joined b1's LAN pool (site B)")
	}
	if _, err := a1.Join([]string{b1.LANAddr()}); err == nil {
		t.Error("a1's WAN pool joined a LAN pool")
	}
	if err := errors.Join(a1.poolSizes(2, 3), b1.poolSizes(1, 3)); err != nil {
		t.Error(err)
	}
}

// A same-site peer is declared failed by the LAN pool's fast profile, well
// before a cross-site observer with a slow profile does, and only once
// even when the WAN pool catches up.
func TestFailureSameSiteBeforeCrossSite(t *testing.T) {
	a1, a2, b1 := twoSites(t, func(c *Config) { c.CrossSite = slow() })
	down := time.Now()
	if err := a2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	sameSite := a1.rec.wait(t, EventFailed, "a2", 1)
	crossSite := b1.rec.wait(t, EventFailed, "a2", 1)
	t.Logf("a2 failed: seen by a1 (LAN) after %v, by b1 (WAN) after %v",
		sameSite.at.Sub(down), crossSite.at.Sub(down))
	if !sameSite.at.Before(crossSite.at) {
		t.Fatalf("same-site observer saw the failure at %v, not before the cross-site one at %v", sameSite.at, crossSite.at)
	}
	if sameSite.Member.State != StateDead || sameSite.Member.Meta.Site != "A" {
		t.Errorf("failed member = %+v", sameSite.Member)
	}

	waitFor(t, "a1's WAN pool to drop a2 too", func() error { return a1.poolSizes(1, 2) })
	for _, n := range []*node{a1, b1} {
		if got := n.rec.types("a2"); !slices.Equal(got, []EventType{EventJoin, EventFailed}) {
			t.Errorf("%s's events about a2: %v, want join, failed", n.name, got)
		}
		if m, _ := n.Member("a2"); m.State != StateDead {
			t.Errorf("%s sees a2 %v, want dead", n.name, m.State)
		}
	}
}

func TestLeaveIsNotFailure(t *testing.T) {
	a1, a2, b1 := twoSites(t)
	if err := a2.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	a1.rec.wait(t, EventLeave, "a2", 1) // through the LAN pool
	b1.rec.wait(t, EventLeave, "a2", 1) // through the WAN pool
	if err := a2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// A left node is never probed again, so nothing more should happen;
	// wait for both pools of a1 to agree before checking.
	waitFor(t, "a2 gone from a1's pools", func() error { return a1.poolSizes(1, 2) })
	for _, n := range []*node{a1, b1} {
		if got := n.rec.types("a2"); !slices.Equal(got, []EventType{EventJoin, EventLeave}) {
			t.Errorf("%s's events about a2: %v, want join, leave", n.name, got)
		}
		if m, _ := n.Member("a2"); m.State != StateLeft {
			t.Errorf("%s sees a2 %v, want left", n.name, m.State)
		}
	}
	if got := a2.LocalMember().State; got != StateLeft {
		t.Errorf("a2 sees itself %v, want left", got)
	}
}

func TestRestartWithSameNameAndPorts(t *testing.T) {
	a1, a2, b1 := twoSites(t)
	if err := a2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	a1.rec.wait(t, EventFailed, "a2", 1)
	b1.rec.wait(t, EventFailed, "a2", 1)

	cfg := a2.cfg
	cfg.LANPort, cfg.WANPort = port(t, a2.LANAddr()), port(t, a2.WANAddr())
	cfg.Meta.Version = "2"
	again := startConfig(t, cfg)
	again.join(t, a1)
	for _, n := range []*node{a1, b1} {
		e := n.rec.wait(t, EventJoin, "a2", 2)
		if e.Member.Meta.Version != "2" {
			t.Errorf("%s saw a2 rejoin with %+v, want version 2", n.name, e.Member.Meta)
		}
	}
	waitFor(t, "the restarted node back in both pools", func() error {
		return errors.Join(
			a1.sees("a1", "a2", "b1"), again.sees("a1", "a2", "b1"), b1.sees("a1", "a2", "b1"),
			a1.poolSizes(2, 3), again.poolSizes(2, 3), b1.poolSizes(1, 3))
	})
}

func port(t *testing.T, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestUpdateMeta(t *testing.T) {
	a1, a2, b1 := twoSites(t)
	want := Meta{Site: "A", Version: "2", RaftAddr: "127.0.0.1:1", CPUMillis: 4000, MemoryBytes: 8 << 30, LANAddr: a1.LANAddr()}
	if err := a1.UpdateMeta(Meta{Version: "2", RaftAddr: "127.0.0.1:1", CPUMillis: 4000, MemoryBytes: 8 << 30}); err != nil {
		t.Fatal(err)
	}
	if got := a1.LocalMember().Meta; got != want {
		t.Errorf("LocalMember().Meta = %+v, want %+v", got, want)
	}
	for _, n := range []*node{a1, a2, b1} {
		if e := n.rec.wait(t, EventUpdate, "a1", 1); e.Member.Meta != want || e.Member.State != StateAlive {
			t.Errorf("%s got update %+v, want meta %+v", n.name, e.Member, want)
		}
	}

	if err := a1.UpdateMeta(Meta{Site: "B"}); err == nil {
		t.Error("UpdateMeta moved a node to another site")
	}
	if err := a1.UpdateMeta(Meta{Version: strings.Repeat("v", 600)}); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("UpdateMeta(oversize) = %v, want ErrMetaTooLarge", err)
	}
	if got := a1.LocalMember().Meta; got != want {
		t.Errorf("refused updates changed the meta to %+v", got)
	}
}

func TestRetryJoinWaitsForPeer(t *testing.T) {
	// Learn a free pair of ports, then free them: the peer starts later.
	early := start(t, "a1", "A")
	lanPort, wanPort := port(t, early.LANAddr()), port(t, early.WANAddr())
	if err := early.Shutdown(); err != nil {
		t.Fatal(err)
	}

	b1 := start(t, "b1", "B")
	joined := make(chan struct{})
	go func() {
		b1.RetryJoin(t.Context(), []string{early.WANAddr()}, 50*time.Millisecond)
		close(joined)
	}()
	waitFor(t, "a failed attempt", func() error { return b1.log.logged("join failed, will retry") })
	a1 := start(t, "a1", "A", func(c *Config) { c.LANPort, c.WANPort = lanPort, wanPort })
	select {
	case <-joined:
	case <-time.After(settle):
		t.Fatal("RetryJoin did not return after the peer started")
	}
	waitFor(t, "both nodes to see each other", func() error {
		return errors.Join(a1.sees("a1", "b1"), b1.sees("a1", "b1"))
	})
}

func TestRetryJoinStopsWithContext(t *testing.T) {
	n := start(t, "a1", "A")
	ctx, cancel := context.WithCancel(t.Context())
	returned := make(chan struct{})
	go func() {
		n.RetryJoin(ctx, []string{"127.0.0.1:1"}, 20*time.Millisecond)
		close(returned)
	}()
	cancel()
	select {
	case <-returned:
	case <-time.After(settle):
		t.Fatal("RetryJoin ignored its context")
	}
}

// Nobody reads the Events channel of a2: memberlist must not notice, and
// Shutdown must not hang on the pending sends.
func TestUnreadEventsDoNotBlock(t *testing.T) {
	a1 := start(t, "a1", "A")
	cfg := testConfig("a2", "A")
	cfg.Events = make(chan Event)
	a2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a2.Shutdown() })
	if _, err := a2.Join([]string{a1.WANAddr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both pools formed", func() error {
		return errors.Join(a1.sees("a1", "a2"), a1.poolSizes(2, 2), a2.poolSizes(2, 2))
	})
	done := make(chan error, 1)
	go func() { done <- a2.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(settle):
		t.Fatal("Shutdown hung on undelivered events")
	}
}

func TestAfterShutdown(t *testing.T) {
	n := start(t, "a1", "A")
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if _, err := n.Join([]string{"127.0.0.1:1"}); !errors.Is(err, ErrShutdown) {
		t.Errorf("Join = %v, want ErrShutdown", err)
	}
	if err := n.Leave(time.Second); !errors.Is(err, ErrShutdown) {
		t.Errorf("Leave = %v, want ErrShutdown", err)
	}
	if err := n.UpdateMeta(Meta{}); !errors.Is(err, ErrShutdown) {
		t.Errorf("UpdateMeta = %v, want ErrShutdown", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "Name"},
		{"no site", func(c *Config) { c.Site = "" }, "Site"},
		{"bad bind", func(c *Config) { c.BindAddr = "localhost" }, "BindAddr"},
		{"wildcard bind, no advertise", func(c *Config) { c.BindAddr = "0.0.0.0" }, "AdvertiseAddr"},
		{"bad port", func(c *Config) { c.WANPort = 70000 }, "WANPort"},
		{"same ports", func(c *Config) { c.LANPort, c.WANPort = 7946, 7946 }, "LANPort and Config.WANPort"},
		{"bad same-site profile", func(c *Config) { c.SameSite.ProbeTimeout = time.Hour }, "SameSite.ProbeTimeout"},
		{"bad cross-site profile", func(c *Config) { c.CrossSite.SuspicionMult = -1 }, "CrossSite.SuspicionMult"},
		{"meta in another site", func(c *Config) { c.Meta.Site = "B" }, "Meta.Site"},
		{"meta too large", func(c *Config) { c.Meta.Version = strings.Repeat("v", 600) }, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig("a1", "A")
			tt.mod(&cfg)
			m, err := New(cfg)
			if err == nil {
				_ = m.Shutdown()
				t.Fatalf("New accepted the config, want an error about %s", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: %v, want it to mention %s", err, tt.wantErr)
			}
		})
	}
}

// Restarted before anyone noticed it was gone: the peers still hold the old
// incarnation as alive; memberlist makes the new process refute it.
func TestQuickRestart(t *testing.T) {
	a1, a2, b1 := twoSites(t)
	if err := a2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	cfg := a2.cfg
	cfg.LANPort, cfg.WANPort = port(t, a2.LANAddr()), port(t, a2.WANAddr())
	cfg.Meta.Version = "2"
	again := startConfig(t, cfg)
	again.join(t, a1)
	waitFor(t, "everyone to see the restarted node alive with its new meta", func() error {
		var errs []error
		for _, n := range []*node{a1, again, b1} {
			errs = append(errs, n.sees("a1", "a2", "b1"))
			if m, _ := n.Member("a2"); m.Meta.Version != "2" {
				errs = append(errs, fmt.Errorf("%s sees a2 version %q", n.name, m.Meta.Version))
			}
		}
		return errors.Join(append(errs, a1.poolSizes(2, 3), again.poolSizes(2, 3), b1.poolSizes(1, 3))...)
	})
	for _, n := range []*node{a1, b1} {
		// Whether the peers saw a failure depends on timing; the last word
		// must be that a2 is alive.
		evs := n.rec.about("a2")
		if last := evs[len(evs)-1]; last.Type != EventJoin && last.Type != EventUpdate {
			t.Errorf("%s's events about a2: %v, want to end alive", n.name, n.rec.types("a2"))
		}
		t.Logf("%s's events about a2: %v", n.name, n.rec.types("a2"))
	}
}

// TestJoiningOnlyItselfIsNotJoined: every node gets the same join list,
// its own address included. A node that starts before the others must keep
// retrying instead of counting itself as contact.
func TestJoiningOnlyItselfIsNotJoined(t *testing.T) {
	a := start(t, "a", "s1")
	// b's WAN port is reserved now and listened on only when b starts.
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.LocalAddr().(*net.UDPAddr).Port
	l.Close()
	bAddr := fmt.Sprintf("127.0.0.1:%d", port)
	if n, err := a.Join([]string{a.WANAddr()}); n != 0 || err != nil {
		t.Fatalf("joining only itself: contacted %d, %v; want 0, nil", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.RetryJoin(ctx, []string{a.WANAddr(), bAddr}, 50*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // a's first attempts find nobody but itself
	start(t, "b", "s1", func(c *Config) { c.WANPort = port })
	waitFor(t, "a and b see each other", func() error { return a.sees("a", "b") })
}

// TestNewcomerJoinsLANOnce: one LAN join is a push/pull of the whole
// pool's state, so a node joining a formed site must need one, and the
// site's members must not each join it as well. At 100 agents they did
// both, some hundred exchanges of the whole state at once.
func TestNewcomerJoinsLANOnce(t *testing.T) {
	const size = 8
	// The fast profile declares false deaths among this many nodes under
	// the race detector on a busy machine.
	calm := func(c *Config) { c.SameSite, c.CrossSite = slow(), slow() }
	var nodes []*node
	var names []string
	for i := range size {
		n := start(t, fmt.Sprintf("a%d", i), "A", calm)
		if i > 0 {
			n.join(t, nodes[0])
		}
		nodes, names = append(nodes, n), append(names, n.name)
	}
	converged := func(nodes []*node, names []string) func() error {
		return func() error {
			var errs []error
			for _, n := range nodes {
				errs = append(errs, n.sees(names...), n.poolSizes(len(nodes), len(nodes)))
			}
			return errors.Join(errs...)
		}
	}
	waitFor(t, "a formed site", converged(nodes, names))
	before := make([]int64, size)
	for i, n := range nodes {
		before[i] = n.lanJoins.Load()
	}

	late := start(t, "late", "A", calm)
	late.join(t, nodes[size/2])
	waitFor(t, "the newcomer in both pools everywhere", converged(append(nodes, late), append(names, "late")))
	// Let every member's ticker fire at least once more after that.
	time.Sleep(6 * late.cfg.SameSite.ProbeInterval) // deliberate: the retry ticker's period is 5 probe intervals
	// None when a member's ticker joined it first.
	if got := late.lanJoins.Load(); got > 1 {
		t.Errorf("the newcomer made %d LAN joins, want at most 1", got)
	}
	var others int64
	for i, n := range nodes {
		others += n.lanJoins.Load() - before[i]
	}
	// A member joins it only if its retry ticker fired between the
	// newcomer's WAN and LAN alive reaching it.
	if total := late.lanJoins.Load() + others; total > 2 {
		t.Errorf("%d LAN joins in all for one newcomer (its own %d), want at most 2", total, late.lanJoins.Load())
	}
	t.Logf("LAN joins for one newcomer: its own %d, the %d members' %d", late.lanJoins.Load(), size, others)
}
