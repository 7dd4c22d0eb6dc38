package agent

import (
	"bytes"
	"encoding/base64"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/logging"
)

func TestGossipKeys(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	enc := base64.StdEncoding.EncodeToString
	cfg := func(mutate func(*Config)) Config {
		c := Default()
		c.Name, c.DataDir = "n1", t.TempDir()
		mutate(&c)
		return c
	}
	saved := func(c Config, keys ...[]byte) Config {
		if err := heartbeat.SaveKeyring(c.keyringFile(), keys); err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want [][]byte
		err  string
	}{
		{"neither key nor plaintext", cfg(func(*Config) {}), nil, "gossip.encrypt: no gossip key"},
		{"plaintext", cfg(func(c *Config) { c.Gossip.Plaintext = true }), nil, ""},
		{"encrypt", cfg(func(c *Config) { c.Gossip.Encrypt = enc(k1) }), [][]byte{k1}, ""},
		{"kept keyring wins over encrypt", saved(cfg(func(c *Config) { c.Gossip.Encrypt = enc(k1) }), k2, k1), [][]byte{k2, k1}, ""},
		{"kept keyring without encrypt", saved(cfg(func(*Config) {}), k2), [][]byte{k2}, ""},
		{"plaintext over a kept keyring", saved(cfg(func(c *Config) { c.Gossip.Plaintext = true }), k1), nil, "gossip.plaintext: this node has a gossip keyring"},
	} {
		got, err := tc.cfg.gossipKeys(logging.Discard())
		if tc.err != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error starting %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.EqualFunc(got, tc.want, bytes.Equal) {
			t.Errorf("%s: %d keys, %v; want %d", tc.name, len(got), err, len(tc.want))
		}
	}
	if c := cfg(func(*Config) {}); filepath.Base(filepath.Dir(c.keyringFile())) != "gossip" {
		t.Errorf("keyring file %s, want data_dir/gossip/keyring", c.keyringFile())
	}
}

func TestValidateGossipKeys(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*GossipConfig)
		want   string
	}{
		{"both", func(g *GossipConfig) {
			g.Plaintext, g.Encrypt = true, base64.StdEncoding.EncodeToString(make([]byte, 32))
		}, "gossip.encrypt: set together with gossip.plaintext"},
		{"not base64", func(g *GossipConfig) { g.Encrypt = "not base64!" }, "gossip.encrypt: not base64"},
		{"short", func(g *GossipConfig) { g.Encrypt = base64.StdEncoding.EncodeToString(make([]byte, 10)) }, "gossip.encrypt: heartbeat: a gossip key must be 16, 24 or 32 bytes"},
		{"long label", func(g *GossipConfig) { g.Label = strings.Repeat("x", 129) }, "gossip.label: 129 bytes"},
		{"control in label", func(g *GossipConfig) { g.Label = "a\nb" }, "gossip.label:"},
	} {
		c := Default()
		c.Name = "n1"
		tc.mutate(&c.Gossip)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error starting %q", tc.name, err, tc.want)
		}
	}
}
