package agent

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"runtime"
	"time"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Validate names the first field that is wrong.
func (c *Config) Validate() error {
	if !nameRE.MatchString(c.Name) {
		return fmt.Errorf("name: %q must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", c.Name)
	}
	if !nameRE.MatchString(c.Site) {
		return fmt.Errorf("site: %q must be 1-63 lowercase letters, digits or '-'", c.Site)
	}
	if c.DataDir == "" {
		return errors.New("data_dir: must be set")
	}
	switch {
	case c.NodeWeight != 0 && c.NodeWeight != 1:
		return fmt.Errorf("node_weight: %d must be 0 (never votes) or 1", c.NodeWeight)
	case c.NodeWeight == 0 && c.Witness:
		return errors.New("node_weight: 0 on a witness, whose only part is its vote")
	}
	bind := net.ParseIP(c.BindAddr)
	if bind == nil {
		return fmt.Errorf("bind_addr: %q is not an IP address", c.BindAddr)
	}
	if c.AdvertiseAddr != "" {
		ip := net.ParseIP(c.AdvertiseAddr)
		if ip == nil || ip.IsUnspecified() {
			return fmt.Errorf("advertise_addr: %q is not a usable IP address", c.AdvertiseAddr)
		}
	}
	ports := map[string]int{"ports.gossip": c.Ports.Gossip, "ports.gossip_wan": c.Ports.GossipWAN, "ports.raft": c.Ports.Raft, "ports.grpc": c.Ports.GRPC, "ports.metrics": c.Ports.Metrics}
	seen := map[int]string{}
	for _, k := range []string{"ports.gossip", "ports.gossip_wan", "ports.raft", "ports.grpc", "ports.metrics"} {
		p := ports[k]
		if p < 1 || p > 65535 {
			return fmt.Errorf("%s: %d is not a port (1-65535)", k, p)
		}
		if other, dup := seen[p]; dup {
			return fmt.Errorf("%s: port %d is already used by %s", k, p, other)
		}
		seen[p] = k
	}
	for i, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return fmt.Errorf("join[%d]: %q is not host:port: %v", i, j, err)
		}
	}
	if c.BootstrapExpect < 0 || c.BootstrapExpect > 64 {
		return fmt.Errorf("bootstrap_expect: %d must be between 0 and 64", c.BootstrapExpect)
	}
	if c.Driver != "sim" && c.Driver != "qemu" {
		return fmt.Errorf("driver: %q is not a known driver (sim, qemu)", c.Driver)
	}
	if c.Capacity.CPUMillis < 0 || c.Capacity.MemoryBytes < 0 {
		return errors.New("capacity: must not be negative")
	}
	r := c.Raft
	switch {
	case r.MaxVoters < 1 || r.MaxVoters%2 == 0 || r.MaxVoters > 9:
		return fmt.Errorf("raft.max_voters: %d must be odd, between 1 and 9", r.MaxVoters)
	case r.MaxMembers != 0 && r.MaxMembers < r.MaxVoters:
		return fmt.Errorf("raft.max_members: %d must be 0 (no cap) or at least max_voters (%d)", r.MaxMembers, r.MaxVoters)
	case r.ReapAfter <= 0:
		return fmt.Errorf("raft.reap_after: %s must be positive", r.ReapAfter)
	case r.Stabilization < 0:
		return fmt.Errorf("raft.stabilization: %s must not be negative", r.Stabilization)
	case r.HeartbeatTimeout < 5*time.Millisecond:
		return fmt.Errorf("raft.heartbeat_timeout: %s is below 5ms", r.HeartbeatTimeout)
	case r.ElectionTimeout < r.HeartbeatTimeout:
		return fmt.Errorf("raft.election_timeout: %s must be at least heartbeat_timeout (%s)", r.ElectionTimeout, r.HeartbeatTimeout)
	case r.LeaderLeaseTimeout <= 0 || r.LeaderLeaseTimeout > r.HeartbeatTimeout:
		return fmt.Errorf("raft.leader_lease_timeout: %s must be positive and at most heartbeat_timeout (%s)", r.LeaderLeaseTimeout, r.HeartbeatTimeout)
	case r.ReconcileInterval <= 0:
		return fmt.Errorf("raft.reconcile_interval: %s must be positive", r.ReconcileInterval)
	case r.SnapshotInterval <= 0:
		return fmt.Errorf("raft.snapshot_interval: %s must be positive", r.SnapshotInterval)
	}
	for name, p := range map[string]Profile{"gossip.same_site": c.Gossip.SameSite, "gossip.cross_site": c.Gossip.CrossSite} {
		switch {
		case p.ProbeInterval <= 0:
			return fmt.Errorf("%s.probe_interval: must be positive", name)
		case p.ProbeTimeout <= 0 || p.ProbeTimeout >= p.ProbeInterval:
			return fmt.Errorf("%s.probe_timeout: %s must be positive and below probe_interval (%s)", name, p.ProbeTimeout, p.ProbeInterval)
		case p.SuspicionMult < 1:
			return fmt.Errorf("%s.suspicion_mult: %d must be at least 1", name, p.SuspicionMult)
		case p.GossipInterval <= 0:
			return fmt.Errorf("%s.gossip_interval: must be positive", name)
		}
	}
	if err := c.Gossip.validateKeys(); err != nil {
		return err
	}
	if c.SharedDir == "" {
		return errors.New("shared_dir: must be set")
	}
	if err := c.Lease.profiles().Validate(); err != nil {
		return fmt.Errorf("lease.%w", err)
	}
	if c.Driver == "sim" {
		if c.Sim.Tick < time.Millisecond {
			return errors.New("sim.tick: must be at least 1ms")
		}
		if err := c.Sim.guest().Validate(); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
	}
	if c.Driver == "qemu" && c.Qemu.StopTimeout < 0 {
		return fmt.Errorf("qemu.stop_timeout: %s must not be negative", c.Qemu.StopTimeout)
	}
	if c.Driver == "qemu" && c.Qemu.KillFrozenAfter < 0 {
		return fmt.Errorf("qemu.kill_frozen_after: %s must not be negative", c.Qemu.KillFrozenAfter)
	}
	if err := checkLabels(c.Labels); err != nil {
		return err
	}
	p := c.Placement
	switch {
	case p.Reserve < 0 || p.Reserve > MaxReserve:
		return fmt.Errorf("placement.reserve: %d must be between 0 (admission off) and %d", p.Reserve, MaxReserve)
	case p.ReserveSites != 0 && p.ReserveSites != 1:
		return fmt.Errorf("placement.reserve_sites: %d must be 0 (off) or 1 (every HA group survives the loss of any one site)", p.ReserveSites)
	case !(p.CPUOvercommit > 0 && p.CPUOvercommit <= 64):
		return fmt.Errorf("placement.cpu_overcommit: %g must be above 0 and at most 64 (1 = no overcommit)", p.CPUOvercommit)
	case p.FailbackAfter < 0:
		return fmt.Errorf("placement.failback_after: %s must not be negative", p.FailbackAfter)
	case p.BalancerInterval < time.Second:
		return fmt.Errorf("placement.balancer_interval: %s must be at least 1s", p.BalancerInterval)
	case p.BalancerHoldOff <= 0:
		return fmt.Errorf("placement.balancer_hold_off: %s must be positive", p.BalancerHoldOff)
	case p.MaxParallelMoves < 1 || p.MaxParallelMoves > 64:
		return fmt.Errorf("placement.max_parallel_moves: %d must be between 1 and 64", p.MaxParallelMoves)
	case c.DrainOnShutdown && c.DrainTimeout <= 0:
		return fmt.Errorf("drain_timeout: %s must be positive when drain_on_shutdown is set", c.DrainTimeout)
	}
	switch p.Balancer {
	case BalancerOff, BalancerRecommend, BalancerAutomatic:
	default:
		return fmt.Errorf("placement.balancer: %q is not one of off, recommend, automatic", p.Balancer)
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if err := c.TLS.validate(); err != nil {
		return err
	}
	return nil
}

// advertise is the IP other nodes dial.
func (c *Config) advertise() string {
	if c.AdvertiseAddr != "" {
		return c.AdvertiseAddr
	}
	return c.BindAddr
}

func (c *Config) capacity() Capacity {
	cp := c.Capacity
	if cp.CPUMillis == 0 {
		cp.CPUMillis = int64(runtime.NumCPU()) * 1000
	}
	if cp.MemoryBytes == 0 {
		cp.MemoryBytes = physicalMemory()
	}
	return cp
}
