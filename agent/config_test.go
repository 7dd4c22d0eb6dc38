package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	for name, c := range map[string]Config{"default": Default(), "tightened": Default().Tightened()} {
		c.Name = "n1"
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "tls.ca_file: must be set") {
			t.Errorf("%s config without TLS files: Validate() = %v, want tls.ca_file refused", name, err)
		}
		c.TLS.Plaintext = true
		if err := c.Validate(); err != nil {
			t.Errorf("%s config invalid: %v", name, err)
		}
	}
}

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"bad name", func(c *Config) { c.Name = "Node_1" }, "name:"},
		{"bad site", func(c *Config) { c.Site = "" }, "site:"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data_dir:"},
		{"bad bind", func(c *Config) { c.BindAddr = "localhost" }, "bind_addr:"},
		{"wildcard advertise", func(c *Config) { c.AdvertiseAddr = "0.0.0.0" }, "advertise_addr:"},
		{"port range", func(c *Config) { c.Ports.Raft = 70000 }, "ports.raft: 70000"},
		{"port clash", func(c *Config) { c.Ports.GRPC = c.Ports.Gossip }, "ports.grpc: port 7946 is already used by ports.gossip"},
		{"bad join", func(c *Config) { c.Join = []string{"10.0.0.1"} }, "join[0]:"},
		{"negative expect", func(c *Config) { c.BootstrapExpect = -1 }, "bootstrap_expect:"},
		{"unknown driver", func(c *Config) { c.Driver = "xen" }, `driver: "xen"`},
		{"even voters", func(c *Config) { c.Raft.MaxVoters = 4 }, "raft.max_voters: 4 must be odd"},
		{"members fewer than voters", func(c *Config) { c.Raft.MaxMembers = 3 }, "raft.max_members: 3 must be 0 (no cap) or at least max_voters (5)"},
		{"weight 2", func(c *Config) { c.NodeWeight = 2 }, "node_weight: 2 must be 0 (never votes) or 1"},
		{"witness of weight 0", func(c *Config) { c.Witness, c.NodeWeight = true, 0 }, "node_weight: 0 on a witness"},
		{"lease above heartbeat", func(c *Config) { c.Raft.LeaderLeaseTimeout = 2 * time.Second }, "raft.leader_lease_timeout:"},
		{"probe timeout above interval", func(c *Config) { c.Gossip.CrossSite.ProbeTimeout = 10 * time.Second }, "gossip.cross_site.probe_timeout:"},
		{"cross-site margin short for its lease", func(c *Config) { c.Lease.CrossSite.Duration = time.Minute }, "lease.cross_site.margin:"},
		{"cross-site failover within the lease", func(c *Config) { c.Lease.CrossSite.FailoverAfter = 2 * time.Second }, "lease.cross_site.failover_after:"},
		{"bad log level", func(c *Config) { c.LogLevel = "loud" }, "log_level:"},
		{"negative reserve", func(c *Config) { c.Placement.Reserve = -1 }, "placement.reserve: -1"},
		{"huge reserve", func(c *Config) { c.Placement.Reserve = MaxReserve + 1 }, "placement.reserve: 17"},
		{"site reserve of two", func(c *Config) { c.Placement.ReserveSites = 2 }, "placement.reserve_sites: 2 must be 0 (off) or 1"},
		{"negative site reserve", func(c *Config) { c.Placement.ReserveSites = -1 }, "placement.reserve_sites: -1 must be 0 (off) or 1"},
		{"no overcommit set", func(c *Config) { c.Placement.CPUOvercommit = 0 }, "placement.cpu_overcommit: 0"},
		{"unknown balancer", func(c *Config) { c.Placement.Balancer = "manual" }, `placement.balancer: "manual"`},
		{"no tls", func(c *Config) {}, "tls.ca_file: must be set"},
		{"tls without key", func(c *Config) { c.TLS = TLSConfig{CAFile: "/dev/null", CertFile: "/dev/null"} }, "tls.key_file: must be set"},
		{"tls file missing", func(c *Config) {
			c.TLS = TLSConfig{CAFile: "/dev/null", CertFile: "/nonexistent/n1.pem", KeyFile: "/dev/null"}
		}, "tls.cert_file: stat /nonexistent/n1.pem: no such file"},
		{"plaintext with files", func(c *Config) { c.TLS = TLSConfig{CAFile: "/dev/null", Plaintext: true} }, "tls.ca_file: set while tls.plaintext is true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			c.Name = "n1"
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error starting with %q", err, tt.want)
			}
		})
	}
}

func TestLayers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "haven.yaml")
	if err := os.WriteFile(path, []byte("name: from-file\nsite: a\nbootstrap_expect: 3\nraft:\n  reap_after: 1h\ngossip:\n  same_site:\n    probe_interval: 2s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"HAVEN_NAME": "from-env", "HAVEN_JOIN": "10.0.0.1:7947,10.0.0.2:7947"}
	if err := c.LoadEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Name != "from-env" || c.Site != "a" || c.BootstrapExpect != 3 || c.Raft.ReapAfter != time.Hour || len(c.Join) != 2 {
		t.Fatalf("layered config: %+v", c)
	}
	// A key the file sets leaves its siblings at their defaults.
	if c.Gossip.SameSite.ProbeInterval != 2*time.Second || c.Gossip.SameSite.ProbeTimeout != Default().Gossip.SameSite.ProbeTimeout {
		t.Fatalf("partial profile: %+v", c.Gossip.SameSite)
	}
}

func TestLoadFileRefusesTypos(t *testing.T) {
	path := filepath.Join(t.TempDir(), "haven.yaml")
	if err := os.WriteFile(path, []byte("raft:\n  reap_afterr: 1h\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := c.LoadFile(path); err == nil || !strings.Contains(err.Error(), "reap_afterr") {
		t.Fatalf("typo accepted: %v", err)
	}
}

func TestLoadEnvRefusesGarbage(t *testing.T) {
	c := Default()
	err := c.LoadEnv(func(k string) string {
		if k == "HAVEN_BOOTSTRAP_EXPECT" {
			return "three"
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), "HAVEN_BOOTSTRAP_EXPECT") {
		t.Fatalf("got %v", err)
	}
}

func TestPlacementConfig(t *testing.T) {
	d := Default().Placement
	if d.Reserve != 1 || d.ReserveSites != 0 || d.CPUOvercommit != 4 || d.Balancer != BalancerRecommend {
		t.Fatalf("placement defaults: %+v", d)
	}
	path := filepath.Join(t.TempDir(), "haven.yaml")
	if err := os.WriteFile(path, []byte("placement:\n  reserve: 0\n  reserve_sites: 1\n  cpu_overcommit: 1.5\n  balancer: automatic\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Default()
	c.Name = "n1"
	c.TLS.Plaintext = true
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if p := c.Placement; p.Reserve != 0 || p.ReserveSites != 1 || p.CPUOvercommit != 1.5 || p.Balancer != BalancerAutomatic {
		t.Fatalf("placement from file: %+v", p)
	}
}

// The cross-site lease takes what it leaves unset from the same-site one.
func TestLeaseProfilesFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "haven.yaml")
	yaml := "lease:\n  duration: 2s\n  margin: 300ms\n  failover_after: 4s\n  cross_site:\n    failover_after: 12s\n"
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	p := c.Lease.profiles()
	if p.SameSite.Lease != 2*time.Second || p.SameSite.Margin != 300*time.Millisecond || p.SameSite.FailoverAfter != 4*time.Second {
		t.Errorf("same-site %+v", p.SameSite)
	}
	if p.CrossSite.Lease != 2*time.Second || p.CrossSite.Margin != 300*time.Millisecond || p.CrossSite.FailoverAfter != 12*time.Second {
		t.Errorf("cross-site %+v, want the same-site lease and margin, failover after 12s", p.CrossSite)
	}
}

// A frozen QEMU is killed at half the shortest gap between a lease end
// and a failover, over both profiles, unless the file says otherwise.
func TestKillFrozenAfter(t *testing.T) {
	c := Default()
	if got := c.killFrozenAfter(); got != 2500*time.Millisecond {
		t.Errorf("default: %s, want 2.5s (failover after 10s less a 5s lease, halved)", got)
	}
	c.Lease.CrossSite = LeaseTiming{Duration: 8 * time.Second, FailoverAfter: 10 * time.Second}
	if got := c.killFrozenAfter(); got != time.Second {
		t.Errorf("with a cross-site gap of 2s: %s, want 1s", got)
	}
	c.Lease.CrossSite = LeaseTiming{Duration: 10 * time.Second, FailoverAfter: 10 * time.Second}
	if got := c.killFrozenAfter(); got != c.Lease.Margin {
		t.Errorf("with no gap: %s, want the margin %s", got, c.Lease.Margin)
	}
	c.Qemu.KillFrozenAfter = 7 * time.Second
	if got := c.killFrozenAfter(); got != 7*time.Second {
		t.Errorf("set: %s, want 7s", got)
	}
}

// TestACLConfig: access control is on unless a file turns it off.
func TestACLConfig(t *testing.T) {
	if !Default().ACL.Enabled {
		t.Fatal("acl.enabled is off by default")
	}
	path := filepath.Join(t.TempDir(), "haven.yaml")
	if err := os.WriteFile(path, []byte("acl:\n  enabled: false\n  audit_file: /var/log/haven/audit.jsonl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if c.ACL.Enabled || c.ACL.AuditFile != "/var/log/haven/audit.jsonl" {
		t.Errorf("acl from the file: %+v", c.ACL)
	}
}
