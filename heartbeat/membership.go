package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"log/slog"

	"github.com/hashicorp/memberlist"
	"github.com/haven-ha/haven/internal/logging"
)

// memberlist labels; a packet with another label is dropped, so the pools
// never merge even if someone joins a LAN address to the WAN pool.
const (
	wanLabel        = "haven-wan"
	siteLabelPrefix = "haven-site-"
)

// MaxLabel bounds Config.Label, leaving room in memberlist's 255 bytes for
// the pool's own label.
const MaxLabel = 128

// poolLabel is a pool's memberlist label: the cluster's, if any, then the
// pool's own.
func poolLabel(cluster, pool string) string {
	if cluster == "" {
		return pool
	}
	return cluster + "/" + pool
}

// Membership is this agent's place in the two gossip pools.
type Membership struct {
	name, site string
	log        *slog.Logger
	sameSite   Profile
	crossSite  Profile
	lan, wan   *memberlist.Memberlist
	lanAddr    string
	wanAddr    string

	meta atomic.Pointer[[]byte] // encoded, what NodeMeta advertises

	// keyring is both pools' keys, nil in plaintext; keyMu orders its
	// changes with the writes of keyringFile.
	keyring     *memberlist.Keyring
	keyMu       sync.Mutex
	keyringFile string

	mu    sync.Mutex // guards peers; taken inside memberlist callbacks
	peers map[string]*peer

	queue *eventQueue
	kick  chan struct{} // wakes the LAN joiner
	// lanJoins counts the LAN joins attempted, each a push/pull of the
	// whole pool's state.
	lanJoins atomic.Int64
	done     chan struct{} // closed by Shutdown
	wg       sync.WaitGroup

	// lifeMu orders UpdateMeta, Leave and Shutdown. Never taken in a
	// memberlist callback, so it may be held while calling memberlist.
	lifeMu sync.Mutex
	local  Meta
	left   atomic.Bool
	shut   atomic.Bool
}

// New starts both pools. It does not contact anyone: call Join or RetryJoin.
func New(cfg Config) (*Membership, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	m := &Membership{
		name:        cfg.Name,
		site:        cfg.Site,
		log:         cfg.Logger,
		sameSite:    cfg.SameSite,
		crossSite:   cfg.CrossSite,
		peers:       make(map[string]*peer),
		keyringFile: cfg.KeyringFile,
		kick:        make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	if cfg.Events != nil {
		m.queue = newEventQueue(cfg.Logger)
	}

	if len(cfg.Keys) > 0 {
		var err error
		if m.keyring, err = memberlist.NewKeyring(cfg.Keys[1:], cfg.Keys[0]); err != nil {
			return nil, fmt.Errorf("heartbeat: keyring: %w", err)
		}
		if cfg.KeyringFile != "" {
			if err := SaveKeyring(cfg.KeyringFile, m.keyring.GetKeys()); err != nil {
				return nil, fmt.Errorf("heartbeat: %w", err)
			}
		}
	}

	// Both transports are opened before either pool exists: with port 0 the
	// LAN port is only known once bound, and it must already be in the meta
	// each pool advertises from its first message.
	lanLog := stdLogger(cfg.Logger, "lan")
	wanLog := stdLogger(cfg.Logger, "wan")
	lanT, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{cfg.BindAddr}, BindPort: cfg.LANPort, Logger: lanLog})
	if err != nil {
		return nil, fmt.Errorf("heartbeat: LAN transport: %w", err)
	}
	wanT, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{cfg.BindAddr}, BindPort: cfg.WANPort, Logger: wanLog})
	if err != nil {
		_ = lanT.Shutdown()
		return nil, fmt.Errorf("heartbeat: WAN transport: %w", err)
	}
	m.lanAddr = net.JoinHostPort(cfg.AdvertiseAddr, strconv.Itoa(lanT.GetAutoBindPort()))
	m.wanAddr = net.JoinHostPort(cfg.AdvertiseAddr, strconv.Itoa(wanT.GetAutoBindPort()))

	meta := cfg.Meta
	meta.LANAddr = m.lanAddr
	if err := m.setMeta(meta); err != nil {
		_, _ = lanT.Shutdown(), wanT.Shutdown()
		return nil, err
	}

	lanConf := poolConfig(memberlist.DefaultLANConfig(), cfg, cfg.SameSite, lanT, poolLabel(cfg.Label, siteLabelPrefix+cfg.Site), lanLog)
	lanConf.Keyring = m.keyring
	lanConf.Delegate, lanConf.Events = &poolDelegate{m, lanPool}, &poolDelegate{m, lanPool}
	if m.lan, err = memberlist.Create(lanConf); err != nil {
		_, _ = lanT.Shutdown(), wanT.Shutdown()
		return nil, fmt.Errorf("heartbeat: LAN pool: %w", err)
	}
	wanConf := poolConfig(memberlist.DefaultWANConfig(), cfg, cfg.CrossSite, wanT, poolLabel(cfg.Label, wanLabel), wanLog)
	wanConf.Keyring = m.keyring
	wanConf.Delegate, wanConf.Events = &poolDelegate{m, wanPool}, &poolDelegate{m, wanPool}
	if m.wan, err = memberlist.Create(wanConf); err != nil {
		_, _ = m.lan.Shutdown(), wanT.Shutdown()
		return nil, fmt.Errorf("heartbeat: WAN pool: %w", err)
	}

	if m.queue != nil {
		m.wg.Go(func() { m.queue.run(cfg.Events, m.done) })
	}
	m.wg.Go(m.joinLAN)
	m.log.Info("gossip pools started", "lan", m.lanAddr, "wan", m.wanAddr, "site", m.site,
		"encrypted", m.keyring != nil, "label", cfg.Label)
	return m, nil
}

func (c *Config) setDefaults() error {
	if c.Name == "" {
		return errors.New("heartbeat: Config.Name is required")
	}
	if c.Site == "" {
		return errors.New("heartbeat: Config.Site is required")
	}
	if len(c.Label) > MaxLabel {
		return fmt.Errorf("heartbeat: Config.Label is longer than %d bytes", MaxLabel)
	}
	if len(poolLabel(c.Label, siteLabelPrefix+c.Site)) > memberlist.LabelMaxSize {
		return fmt.Errorf("heartbeat: Config.Site is longer than %d bytes", memberlist.LabelMaxSize-len(poolLabel(c.Label, siteLabelPrefix)))
	}
	for i, k := range c.Keys {
		if err := ValidateKey(k); err != nil {
			return fmt.Errorf("heartbeat: Config.Keys[%d]: %w", i, err)
		}
	}
	if c.KeyringFile != "" && len(c.Keys) == 0 {
		return errors.New("heartbeat: Config.KeyringFile without Config.Keys")
	}
	if net.ParseIP(c.BindAddr) == nil {
		return fmt.Errorf("heartbeat: Config.BindAddr %q is not an IP address", c.BindAddr)
	}
	if c.AdvertiseAddr == "" {
		c.AdvertiseAddr = c.BindAddr
	}
	if ip := net.ParseIP(c.AdvertiseAddr); ip == nil || ip.IsUnspecified() {
		// Peers need a routable address, and it goes into the meta too.
		return fmt.Errorf("heartbeat: Config.AdvertiseAddr %q must be a specific IP address", c.AdvertiseAddr)
	}
	if c.LANPort < 0 || c.LANPort > 65535 {
		return fmt.Errorf("heartbeat: Config.LANPort %d is out of range", c.LANPort)
	}
	if c.WANPort < 0 || c.WANPort > 65535 {
		return fmt.Errorf("heartbeat: Config.WANPort %d is out of range", c.WANPort)
	}
	if c.LANPort != 0 && c.LANPort == c.WANPort {
		return fmt.Errorf("heartbeat: Config.LANPort and Config.WANPort are both %d", c.LANPort)
	}
	if c.SameSite == (Profile{}) {
		c.SameSite = SameSiteDefaults()
	}
	if c.CrossSite == (Profile{}) {
		c.CrossSite = CrossSiteDefaults()
	}
	if err := c.SameSite.validate(); err != nil {
		return fmt.Errorf("heartbeat: Config.SameSite.%w", err)
	}
	if err := c.CrossSite.validate(); err != nil {
		return fmt.Errorf("heartbeat: Config.CrossSite.%w", err)
	}
	if c.Meta.Site == "" {
		c.Meta.Site = c.Site
	}
	if c.Meta.Site != c.Site {
		return fmt.Errorf("heartbeat: Config.Meta.Site %q differs from Config.Site %q", c.Meta.Site, c.Site)
	}
	if c.Logger == nil {
		c.Logger = logging.Discard()
	}
	return nil
}

func stdLogger(l *slog.Logger, pool string) *log.Logger {
	// The writer maps memberlist's "[DEBUG]"-style prefixes to levels.
	return log.New(&logging.Writer{Logger: l.With("pool", pool), Level: slog.LevelInfo}, "", 0)
}

func poolConfig(c *memberlist.Config, cfg Config, p Profile, t *memberlist.NetTransport, label string, l *log.Logger) *memberlist.Config {
	port := t.GetAutoBindPort()
	c.Name = cfg.Name
	c.Transport = t
	c.BindAddr, c.BindPort = cfg.BindAddr, port
	c.AdvertiseAddr, c.AdvertisePort = cfg.AdvertiseAddr, port
	c.Label = label
	c.ProbeInterval = p.ProbeInterval
	c.ProbeTimeout = p.ProbeTimeout
	c.SuspicionMult = p.SuspicionMult
	c.GossipInterval = p.GossipInterval
	// memberlist compresses every packet it sends with a fresh LZW writer
	// (a 64 KiB table, cleared each time) and keeps the result only if it
	// is smaller: for pings, acks and gossip of a few hundred bytes, half
	// of an idle pool's garbage and CPU (TestIdleGossipCost), for bytes
	// no link here is short of. A peer decodes either form.
	c.EnableCompression = cfg.compress
	c.Logger = l
	return c
}

// setMeta stores meta as what both pools advertise. Called with lifeMu
// held, or before the pools exist.
func (m *Membership) setMeta(meta Meta) error {
	// Leave re-encodes with the leaving flag, which must fit as well.
	if _, err := encodeMeta(meta, true); err != nil {
		return err
	}
	b, err := encodeMeta(meta, false)
	if err != nil {
		return err
	}
	m.local = meta
	m.meta.Store(&b)
	return nil
}

// Join contacts WAN gossip addresses (host:port) and returns how many
// answered; it fails only if none did. Same-site nodes are then joined in
// the LAN pool in the background.
func (m *Membership) Join(addrs []string) (int, error) {
	if err := m.usable(); err != nil {
		return 0, err
	}
	// Operators give every node the same list, this node's own address
	// included. Contacting only itself must not count as joining: a node
	// that starts first would stop retrying and stay alone.
	addrs = m.others(addrs)
	if len(addrs) == 0 {
		return 0, nil
	}
	n, err := m.wan.Join(addrs)
	if err != nil {
		return n, fmt.Errorf("heartbeat: join %v: %w", addrs, err)
	}
	return n, nil
}

// others drops this node's own WAN address from addrs.
func (m *Membership) others(addrs []string) []string {
	self := m.WANAddr()
	var out []string
	for _, a := range addrs {
		if a == self {
			continue
		}
		if r, err := net.ResolveTCPAddr("tcp", a); err == nil && r.String() == self {
			continue
		}
		out = append(out, a)
	}
	return out
}

// RetryJoin calls Join until it succeeds, ctx ends or the membership shuts
// down, waiting interval (5s if not positive) between attempts, so agents
// can start in any order.
func (m *Membership) RetryJoin(ctx context.Context, addrs []string, interval time.Duration) {
	if interval <= 0 {
		interval = defaultRetryInterval
	}
	// Agents of a new cluster start within moments of each other: retry
	// fast at first, then back off to interval.
	wait := min(100*time.Millisecond, interval)
	for attempt := 1; ; attempt++ {
		n, err := m.Join(addrs)
		if err == nil {
			m.log.Info("joined cluster", "contacted", n, "attempt", attempt)
			return
		}
		if errors.Is(err, ErrShutdown) || errors.Is(err, ErrLeft) {
			return
		}
		m.log.Warn("join failed, will retry", "attempt", attempt, "retry_in", wait, "error", err)
		t := time.NewTimer(wait)
		wait = min(2*wait, interval)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		case <-m.done:
			t.Stop()
			return
		}
	}
}

func (m *Membership) usable() error {
	if m.shut.Load() {
		return ErrShutdown
	}
	if m.left.Load() {
		return ErrLeft
	}
	return nil
}

// joinLAN joins same-site nodes in the LAN pool once the WAN pool has them.
// It runs beside memberlist because a join is network I/O, which must not
// happen in a memberlist callback.
//
// One join is a push/pull of the whole pool's state, so a node alone in
// its LAN pool joins at once, one target at a time, until a join brought
// in the rest. A node already in a LAN pool leaves a newcomer to join
// itself and to be gossiped, and only looks again on the ticker, every few
// LAN probe intervals: at 100 agents every peer joining a restarted node
// the moment its WAN alive arrived, and the node joining each of them,
// were some hundred push/pulls of the whole state at once ("Too many
// pending push/pull requests"), while the node answered nothing for a
// minute. The ticker also retries joins that failed, rarely enough not to
// hammer a crashed node that the slower WAN pool still counts as alive.
func (m *Membership) joinLAN() {
	t := time.NewTicker(5 * m.sameSite.ProbeInterval)
	defer t.Stop()
	failing := make(map[string]bool) // warn once per peer, not every retry
	for {
		select {
		case <-m.done:
			return
		case <-m.kick:
			if m.lan.NumMembers() > 1 {
				continue
			}
		case <-t.C:
		}
		for name, addr := range m.lanJoinTargets() {
			if m.shut.Load() || m.left.Load() {
				return
			}
			if !m.stillNeedsLANJoin(name) {
				continue // an earlier join of this round brought it in
			}
			m.lanJoins.Add(1)
			if _, err := m.lan.Join([]string{addr}); err != nil {
				level := slog.LevelDebug
				if !failing[name] {
					level = slog.LevelWarn
				}
				m.log.Log(context.Background(), level, "cannot join same-site node in LAN pool", "node", name, "lan_addr", addr, "error", err)
				failing[name] = true
				continue
			}
			delete(failing, name)
		}
	}
}

func (m *Membership) lanJoinTargets() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	targets := make(map[string]string)
	for _, p := range m.peers {
		if m.needsLANJoin(p) {
			targets[p.name] = p.wan.meta.LANAddr
		}
	}
	return targets
}

func (m *Membership) stillNeedsLANJoin(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[name]
	return p != nil && m.needsLANJoin(p)
}

// Members returns every member known to this agent, itself included, with
// the state rule of the package comment, sorted by name. Members that
// failed or left stay in the list, so that the caller can still see them.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	out := make([]Member, 0, len(m.peers))
	for _, p := range m.peers {
		out = append(out, p.member(m.site))
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns one member as Members lists it: a renewal checks its
// caller with it, and listing every member for that made renewals
// quadratic in the cluster's size.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[name]
	if p == nil {
		return Member{}, false
	}
	return p.member(m.site), true
}

// LocalMember returns this agent as the others should see it.
func (m *Membership) LocalMember() Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Both pools report their local node while starting, so this is set.
	return m.peers[m.name].member(m.site)
}

// UpdateMeta re-advertises this node's meta in both pools. LANAddr is
// filled in; Site may be empty but not different, since the LAN pool is
// bound to the site. It waits up to one probe interval of each pool for
// the update to be gossiped; if that runs out the update still spreads, so
// it is not an error.
func (m *Membership) UpdateMeta(meta Meta) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	if meta.Site == "" {
		meta.Site = m.site
	}
	if meta.Site != m.site {
		return fmt.Errorf("heartbeat: meta site %q differs from this node's site %q", meta.Site, m.site)
	}
	meta.LANAddr = m.lanAddr
	if err := m.setMeta(meta); err != nil {
		return err
	}
	_ = m.eachPool(func(ml *memberlist.Memberlist, p Profile) error {
		if err := ml.UpdateNode(p.ProbeInterval); err != nil {
			m.log.Debug("meta update still spreading", "error", err)
		}
		return nil
	})
	return nil
}

// Leave leaves both pools gracefully, so that peers report EventLeave
// rather than EventFailed; timeout bounds the whole call (0: wait for the
// broadcasts however long they take). Shutdown is still needed afterwards.
func (m *Membership) Leave(timeout time.Duration) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.shut.Load() {
		return ErrShutdown
	}
	if m.left.Swap(true) {
		return nil
	}
	// The leaving flag must reach peers before the dead message that
	// memberlist.Leave sends, because a dead message about a node cancels
	// any queued broadcast about it; UpdateNode waits until it is out.
	b, err := encodeMeta(m.local, true)
	if err != nil {
		return err // setMeta made sure it fits
	}
	m.meta.Store(&b)
	deadline := time.Now().Add(timeout)
	remaining := func() time.Duration {
		if timeout <= 0 {
			return 0
		}
		// memberlist treats 0 as "no limit"; a spent budget is not that.
		return max(time.Until(deadline), time.Millisecond)
	}
	return m.eachPool(func(ml *memberlist.Memberlist, _ Profile) error {
		if err := ml.UpdateNode(remaining()); err != nil {
			m.log.Warn("leave intent not fully gossiped; some peers may report this node failed", "error", err)
		}
		return ml.Leave(remaining())
	})
}

// eachPool runs f on both pools at once, so a slow WAN does not hold up
// the LAN, and joins the errors.
func (m *Membership) eachPool(f func(*memberlist.Memberlist, Profile) error) error {
	var lanErr, wanErr error
	var wg sync.WaitGroup
	wg.Go(func() { lanErr = f(m.lan, m.sameSite) })
	wg.Go(func() { wanErr = f(m.wan, m.crossSite) })
	wg.Wait()
	if lanErr != nil {
		lanErr = fmt.Errorf("heartbeat: LAN pool: %w", lanErr)
	}
	if wanErr != nil {
		wanErr = fmt.Errorf("heartbeat: WAN pool: %w", wanErr)
	}
	return errors.Join(lanErr, wanErr)
}

// Shutdown stops both pools without leaving, so peers will report this
// node failed. It is idempotent. It may wait for a LAN join in progress,
// which is bounded by memberlist's TCP timeout (10s).
func (m *Membership) Shutdown() error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.shut.Swap(true) {
		return nil
	}
	close(m.done)
	err := errors.Join(m.lan.Shutdown(), m.wan.Shutdown())
	// A LAN join in progress may sit in a TCP connect to an unreachable
	// peer for memberlist's TCPTimeout (10 s): an agent stopping during a
	// partition must not wait for it. The goroutine ends on its own; the
	// pools it would touch are shut down and refuse it.
	waited := make(chan struct{})
	go func() { m.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(time.Second):
		m.log.Warn("shutdown: a gossip join is still in progress; not waiting for it")
	}
	return err
}

// WANAddr is the advertised host:port of the WAN pool, for other nodes' Join.
func (m *Membership) WANAddr() string { return m.wanAddr }

// LANAddr is the advertised host:port of the LAN pool.
func (m *Membership) LANAddr() string { return m.lanAddr }
