package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/driver/sim"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/quorum"
)

// Config is everything one agent needs. Precedence, lowest first: Default(),
// the config file, HAVEN_* environment variables, command-line flags.
type Config struct {
	Name    string `yaml:"name"`
	Site    string `yaml:"site"`
	DataDir string `yaml:"data_dir"`
	// BindAddr is the IP every listener binds; AdvertiseAddr is the IP other
	// nodes dial (defaults to BindAddr, which then must not be unspecified).
	BindAddr      string   `yaml:"bind_addr"`
	AdvertiseAddr string   `yaml:"advertise_addr"`
	Ports         Ports    `yaml:"ports"`
	Join          []string `yaml:"join"`
	// BootstrapExpect is the number of nodes, each started with this same
	// value, that must see each other before the first Raft cluster forms
	// with them as its voters. Zero: never bootstrap, only join; such a
	// node does not count towards another's expect.
	BootstrapExpect int    `yaml:"bootstrap_expect"`
	Driver          string `yaml:"driver"`
	// Witness nodes vote in Raft but host no workload.
	Witness bool `yaml:"witness"`
	// NodeWeight is the node's vote: 1 (the default) may vote, 0 never
	// does (it still replicates the log and hosts groups), for a node
	// whose uptime should not count towards quorum, as WSFC's NodeWeight.
	NodeWeight int          `yaml:"node_weight"`
	Capacity   Capacity     `yaml:"capacity"`
	Raft       RaftConfig   `yaml:"raft"`
	Gossip     GossipConfig `yaml:"gossip"`
	LogLevel   string       `yaml:"log_level"`
	// SharedDir is the root of the site's shared storage (NFS, CephFS; in
	// tests one directory): group disks live under it.
	SharedDir string      `yaml:"shared_dir"`
	Lease     LeaseConfig `yaml:"lease"`
	Sim       SimConfig   `yaml:"sim"`
	Qemu      QemuConfig  `yaml:"qemu"`
	// Placement is read by the leader: give every node the same values,
	// since any node may lead.
	Placement PlacementConfig `yaml:"placement"`
	// DrainOnShutdown has an agent told to stop (SIGTERM, SIGINT) drain
	// its node first: its groups move off, live where possible, before it
	// exits, for at most DrainTimeout. A drain it started so ends when it
	// starts again; an operator's drain stays.
	DrainOnShutdown bool          `yaml:"drain_on_shutdown"`
	DrainTimeout    time.Duration `yaml:"drain_timeout"`
	// Labels describe the node to placement (rack, cpu model, storage
	// class); a group's node_selector picks nodes by them.
	Labels map[string]string `yaml:"labels,omitempty"`
	// EnableDebug serves Go's profiler (/debug/pprof) on the metrics port,
	// as Consul's enable_debug does: for finding where an agent's CPU or
	// memory goes. It exposes internals, so it is off by default.
	EnableDebug bool `yaml:"enable_debug"`
	// TLS is required unless tls.plaintext is set (see TLSConfig).
	TLS TLSConfig `yaml:"tls"`
	// ACL is access control: every API call needs a token whose role
	// allows it.
	ACL ACLConfig `yaml:"acl"`
}

// ACLConfig is access control (tokens and roles, see agent/acl).
type ACLConfig struct {
	// Enabled has every API call checked; off, anyone who reaches the
	// gRPC port may do anything. On by default; haven dev turns it off.
	Enabled bool `yaml:"enabled"`
	// AuditFile, when set, gets every mutating call (who, what, the
	// result) as a JSON line, besides the "audit" logger.
	AuditFile string `yaml:"audit_file"`
}

// PlacementConfig tunes where the leader puts groups (see placement/).
type PlacementConfig struct {
	// Reserve is K, the node failures every running HA group must survive:
	// CreateGroup and StartGroup refuse (ResourceExhausted) a group that
	// would leave some set of K failures without room to restart every HA
	// group. 0 turns admission control off.
	Reserve int `yaml:"reserve"`
	// ReserveSites is 1 to also require that every running HA group can
	// survive the loss of any one whole site (all its nodes at once, on
	// the nodes of the other sites), as a stretch cluster must; admission
	// refuses a group that would leave some site's loss without a restart
	// plan. It combines with Reserve: both must hold. 0 (the default)
	// turns it off. With fewer than two sites that host groups (witness
	// nodes host nothing) it cannot hold, so it is not kept until a second
	// site hosts groups, and status and GetReserve say so; a site that is
	// down still counts, so a cluster that lost a site refuses new HA
	// groups until the site is back.
	ReserveSites int `yaml:"reserve_sites"`
	// CPUOvercommit multiplies each node's CPU: 4 lets a node take four
	// times its cores in demand. Memory is never overcommitted.
	CPUOvercommit float64 `yaml:"cpu_overcommit"`
	// Balancer is off, recommend (the leader logs the moves it would
	// make) or automatic (it makes them, live).
	Balancer string `yaml:"balancer"`
	// BalancerInterval is how often the balancer looks again when the
	// cluster changed; BalancerHoldOff how long a group that moved
	// (balancer, drain, failback, failover) stays where it is.
	BalancerInterval time.Duration `yaml:"balancer_interval"`
	BalancerHoldOff  time.Duration `yaml:"balancer_hold_off"`
	// MaxParallelMoves is how many moves a node sends or receives at once
	// when the leader moves groups on its own (drain, failback, balancer).
	MaxParallelMoves int `yaml:"max_parallel_moves"`
	// FailbackAfter is how long a preferred owner must have been up before
	// groups with a failback policy move back to it, so a flapping node
	// does not pull its groups back and forth.
	FailbackAfter time.Duration `yaml:"failback_after"`
}

// The balancer modes of PlacementConfig.Balancer.
const (
	BalancerOff       = "off"
	BalancerRecommend = "recommend"
	BalancerAutomatic = "automatic"
)

// MaxReserve bounds placement.reserve (see leader.MaxReserve).
const MaxReserve = leader.MaxReserve

// LeaseConfig is the self-fencing lease (see quorum/lease.go). The leader
// reads it: give every node the same values, since any node may lead.
type LeaseConfig struct {
	// The timing for nodes in the leader's own site.
	LeaseTiming `yaml:",inline"`
	// CrossSite is the timing for nodes whose path to the leader crosses
	// a WAN (every node of another site). Fields left unset take the
	// same-site values.
	CrossSite LeaseTiming `yaml:"cross_site"`
}

// LeaseTiming is one lease profile.
type LeaseTiming struct {
	// Duration is how long a grant lets a node run its groups, from the
	// moment the node sent the renewal.
	Duration time.Duration `yaml:"duration"`
	// Margin covers clock drift (1 % of duration+margin) and scheduling
	// delay on the leader.
	Margin time.Duration `yaml:"margin"`
	// FailoverAfter is how long a node may go without a grant before its
	// groups restart elsewhere; a shorter outage costs a pause.
	FailoverAfter time.Duration `yaml:"failover_after"`
}

// guest is the sim driver's guest configuration.
func (s SimConfig) guest() sim.Guest {
	return sim.Guest{DirtyRateBytesPerSec: s.DirtyRate, WorkingSetBytes: s.WorkingSetBytes, Tick: s.Tick, Watchdog: s.Watchdog}
}

// rules is one profile as the protocol's rules (quorum/lease.go) take it.
func (l LeaseTiming) rules() quorum.LeaseConfig {
	return quorum.LeaseConfig{Lease: l.Duration, Margin: l.Margin, FailoverAfter: l.FailoverAfter}
}

// crossSite is the cross-site timing with its unset fields taken from the
// same-site one.
func (l LeaseConfig) crossSite() LeaseTiming {
	c := l.CrossSite
	if c.Duration == 0 {
		c.Duration = l.Duration
	}
	if c.Margin == 0 {
		c.Margin = l.Margin
	}
	if c.FailoverAfter == 0 {
		c.FailoverAfter = l.FailoverAfter
	}
	return c
}

// profiles is the lease as the leader's grant table takes it.
func (l LeaseConfig) profiles() quorum.Profiles {
	return quorum.Profiles{SameSite: l.rules(), CrossSite: l.crossSite().rules()}
}

// SimConfig sets how the simulated guests behave.
type SimConfig struct {
	Tick            time.Duration `yaml:"tick"`
	DirtyRate       int64         `yaml:"dirty_rate_bytes_per_sec"`
	WorkingSetBytes int64         `yaml:"working_set_bytes"`
	// Watchdog is the timeout of every simulated guest's watchdog: a
	// guest that hangs (HangVM) crashes this long after, and its group
	// restarts under its policy. Zero: no watchdog.
	Watchdog time.Duration `yaml:"watchdog"`
	// FaultInjection enables the node's test hands: CrashVM, HangVM, FillVM,
	// InspectVM and holding moves at a phase (HoldMoves, ReleaseMoves).
	// Never on a production node.
	FaultInjection bool `yaml:"fault_injection"`
}

// QemuConfig is the qemu driver's (driver: qemu); see driver/qemu.Config.
// Its VMs' sockets, logs and supervisors live in data_dir/qemu, which must
// stay short enough for unix socket paths.
type QemuConfig struct {
	// Binary is the QEMU system emulator.
	Binary string `yaml:"binary"`
	// Accel is QEMU's accelerator: kvm on a hypervisor host, tcg where
	// there is no usable KVM (nested test machines).
	Accel string `yaml:"accel"`
	// CPU is every VM's CPU model: one all nodes provide, so VMs can move.
	CPU string `yaml:"cpu"`
	// Machine is the machine type of a VM whose spec names none.
	Machine string `yaml:"machine"`
	// StopTimeout bounds a guest's graceful shutdown before it is killed.
	StopTimeout time.Duration `yaml:"stop_timeout"`
	// KillFrozenAfter is how long a QEMU stays frozen past its lease end,
	// with no renewal, before its supervisor kills it: frozen, it still
	// holds its disk images' locks, which the group's restart on another
	// node needs. Zero: half the shortest time from a lease end to a
	// failover over the lease profiles (failover_after less the lease),
	// so that a short outage still costs only a pause.
	KillFrozenAfter time.Duration `yaml:"kill_frozen_after"`
}

// killFrozenAfter is qemu.kill_frozen_after, or its default.
func (c Config) killFrozenAfter() time.Duration {
	if c.Qemu.KillFrozenAfter > 0 {
		return c.Qemu.KillFrozenAfter
	}
	same, cross := c.Lease.LeaseTiming, c.Lease.crossSite()
	gap := min(same.FailoverAfter-same.Duration, cross.FailoverAfter-cross.Duration)
	return max(gap/2, same.Margin)
}

type Ports struct {
	Gossip    int `yaml:"gossip"`     // LAN pool: nodes of the same site
	GossipWAN int `yaml:"gossip_wan"` // WAN pool: every node; -join addresses use this port
	Raft      int `yaml:"raft"`
	GRPC      int `yaml:"grpc"`
	// Metrics serves Prometheus's /metrics over HTTP.
	Metrics int `yaml:"metrics"`
}

// Capacity is what the node offers to groups; zero means detect.
type Capacity struct {
	CPUMillis   int64 `yaml:"cpu_millis"`
	MemoryBytes int64 `yaml:"memory_bytes"`
}

type RaftConfig struct {
	// MaxVoters caps the voters; the rest are non-voters. Must be odd.
	MaxVoters int `yaml:"max_voters"`
	// MaxMembers caps the live nodes in the Raft configuration (voters and
	// the non-voters ready to replace one); 0 is no cap. Every member
	// costs the leader a heartbeat stream and a copy of every entry; the
	// nodes beyond it follow the committed log by a stream from a member
	// (agent/follow) and are added when a member dies.
	MaxMembers int `yaml:"max_members"`
	// ReapAfter removes a node from Raft once gossip has reported it failed
	// or gone for this long.
	ReapAfter time.Duration `yaml:"reap_after"`
	// Stabilization is how long a non-voter must stay healthy before it is
	// promoted, so a flapping node never becomes a voter.
	Stabilization      time.Duration `yaml:"stabilization"`
	HeartbeatTimeout   time.Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    time.Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout time.Duration `yaml:"leader_lease_timeout"`
	// ReconcileInterval is how often the leader reconciles membership even
	// when no event arrives.
	ReconcileInterval time.Duration `yaml:"reconcile_interval"`
	SnapshotThreshold uint64        `yaml:"snapshot_threshold"`
	SnapshotInterval  time.Duration `yaml:"snapshot_interval"`
}

// Profile mirrors heartbeat.Profile in the config file.
type Profile struct {
	ProbeInterval  time.Duration `yaml:"probe_interval"`
	ProbeTimeout   time.Duration `yaml:"probe_timeout"`
	SuspicionMult  int           `yaml:"suspicion_mult"`
	GossipInterval time.Duration `yaml:"gossip_interval"`
}

type GossipConfig struct {
	SameSite  Profile `yaml:"same_site"`
	CrossSite Profile `yaml:"cross_site"`
	// Encrypt is the first gossip key, base64 of 32 bytes (`haven keyring
	// generate`), as Consul's encrypt: give every node the same one. Once
	// the agent has run, the keyring it keeps in data_dir/gossip/keyring
	// wins, so a node restarted after a rotation still has the keys in use.
	Encrypt string `yaml:"encrypt,omitempty"`
	// Plaintext runs gossip unencrypted and unauthenticated: anyone who
	// reaches the gossip ports can join the cluster or spoof membership.
	// An agent with neither a key nor this set refuses to start.
	Plaintext bool `yaml:"plaintext,omitempty"`
	// Label is the cluster's gossip label: nodes drop every gossip packet
	// whose label is not theirs, so clusters that can reach each other
	// (a test cluster beside production, two clusters sharing a network)
	// never merge through a wrong join address or a reused IP. Give every
	// node of a cluster the same one; changing it is a restart of every
	// node. Empty: no label of the cluster's own.
	Label string `yaml:"label,omitempty"`
}

// Default is a configuration that works for one node on this host.
func Default() Config {
	host, _ := os.Hostname()
	return Config{
		Name:       host,
		Site:       "default",
		DataDir:    "/var/lib/haven",
		BindAddr:   "0.0.0.0",
		Ports:      Ports{Gossip: 7946, GossipWAN: 7947, Raft: 7948, GRPC: 7949, Metrics: 7950},
		Driver:     "sim",
		NodeWeight: 1,
		Raft: RaftConfig{
			MaxVoters:          5,
			MaxMembers:         9,
			ReapAfter:          10 * time.Minute,
			Stabilization:      5 * time.Second,
			HeartbeatTimeout:   1000 * time.Millisecond,
			ElectionTimeout:    1000 * time.Millisecond,
			LeaderLeaseTimeout: 500 * time.Millisecond,
			ReconcileInterval:  10 * time.Second,
			SnapshotThreshold:  8192,
			SnapshotInterval:   2 * time.Minute,
		},
		// See heartbeat's defaults for why these values.
		Gossip:    GossipConfig{SameSite: Profile(heartbeat.SameSiteDefaults()), CrossSite: Profile(heartbeat.CrossSiteDefaults())},
		LogLevel:  "info",
		SharedDir: "/var/lib/haven/shared",
		Lease:     LeaseConfig{LeaseTiming: LeaseTiming{Duration: 5 * time.Second, Margin: 500 * time.Millisecond, FailoverAfter: 10 * time.Second}},
		Sim:       SimConfig{Tick: 100 * time.Millisecond, DirtyRate: 1 << 20, WorkingSetBytes: 4 << 20, Watchdog: 10 * time.Second},
		Qemu:      QemuConfig{Binary: "qemu-system-x86_64", Accel: "kvm", CPU: "qemu64", Machine: "q35", StopTimeout: 30 * time.Second},
		// Reserve 1: "can the cluster sustain one node failure?" is the
		// question every HA cluster must answer yes to (vSphere HA's
		// default admission control, WSFC's N+1), and an HA group admitted
		// without room to restart is HA in name only. A cluster with a
		// single node that hosts groups cannot reserve anything: K is
		// capped at the hosting nodes minus one (see reserveK).
		// 4x CPU overcommit is what the leader applied before it was a
		// setting; the balancer recommends and never moves on its own.
		Placement: PlacementConfig{Reserve: 1, CPUOvercommit: 4, Balancer: BalancerRecommend, FailbackAfter: time.Minute,
			BalancerInterval: time.Minute, BalancerHoldOff: time.Hour, MaxParallelMoves: leader.DefaultMaxParallelMoves},
		DrainTimeout: 5 * time.Minute,
		// Secure by default: a cluster anyone on the network can command
		// is not deployable.
		ACL: ACLConfig{Enabled: true},
	}
}

// Tightened returns c with the timings tests and the dev cluster use: fast
// failure detection on a quiet loopback, at the price of false positives on
// a loaded host.
func (c Config) Tightened() Config {
	c.Placement.FailbackAfter = 2 * time.Second
	c.Raft.HeartbeatTimeout = 500 * time.Millisecond
	c.Raft.ElectionTimeout = 500 * time.Millisecond
	c.Raft.LeaderLeaseTimeout = 250 * time.Millisecond
	c.Raft.Stabilization = time.Second
	c.Raft.ReconcileInterval = 2 * time.Second
	c.Gossip.SameSite = Profile{ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, SuspicionMult: 3, GossipInterval: 100 * time.Millisecond}
	c.Lease = LeaseConfig{LeaseTiming: LeaseTiming{Duration: 1500 * time.Millisecond, Margin: 300 * time.Millisecond, FailoverAfter: 3500 * time.Millisecond}}
	c.Gossip.CrossSite = Profile{ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, SuspicionMult: 4, GossipInterval: 200 * time.Millisecond}
	return c
}

// LoadFile overlays a YAML file on c. Unknown keys are errors: a typo in a
// timing must not silently leave the default in place.
func (c *Config) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return c.load(f, path)
}

// load overlays the YAML read from r; name says where it came from. A
// file with no document (empty, or only comments) changes nothing. A
// malformed one is refused with the line yaml names.
func (c *Config) load(r io.Reader, name string) error {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", name, err)
	}
	return nil
}

// LoadEnv overlays HAVEN_* variables.
func (c *Config) LoadEnv(getenv func(string) string) error {
	str := func(key string, dst *string) {
		if v := getenv(key); v != "" {
			*dst = v
		}
	}
	var errs []error
	num := func(key string, dst *int) {
		if v := getenv(key); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a number", key, v))
				return
			}
			*dst = n
		}
	}
	str("HAVEN_NAME", &c.Name)
	str("HAVEN_SITE", &c.Site)
	str("HAVEN_DATA_DIR", &c.DataDir)
	str("HAVEN_BIND", &c.BindAddr)
	str("HAVEN_ADVERTISE", &c.AdvertiseAddr)
	str("HAVEN_DRIVER", &c.Driver)
	str("HAVEN_LOG_LEVEL", &c.LogLevel)
	str("HAVEN_GOSSIP_ENCRYPT", &c.Gossip.Encrypt)
	num("HAVEN_GOSSIP_PORT", &c.Ports.Gossip)
	num("HAVEN_GOSSIP_WAN_PORT", &c.Ports.GossipWAN)
	num("HAVEN_RAFT_PORT", &c.Ports.Raft)
	num("HAVEN_GRPC_PORT", &c.Ports.GRPC)
	num("HAVEN_METRICS_PORT", &c.Ports.Metrics)
	num("HAVEN_BOOTSTRAP_EXPECT", &c.BootstrapExpect)
	if v := getenv("HAVEN_JOIN"); v != "" {
		c.Join = strings.Split(v, ",")
	}
	if v := getenv("HAVEN_WITNESS"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("HAVEN_WITNESS: %q is not a boolean", v))
		}
		c.Witness = b
	}
	return errors.Join(errs...)
}
