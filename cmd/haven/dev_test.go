package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/haven-ha/haven/agent"
)

func TestDevConfig(t *testing.T) {
	cfg := devConfig("/d", 17000, 3, 2)
	if cfg.Name != "dev-2" || cfg.Site != "dev" || cfg.BindAddr != "127.0.0.1" || cfg.DataDir != "/d/dev-2/data" {
		t.Errorf("identity: %+v", cfg)
	}
	if want := (agent.Ports{Gossip: 17020, GossipWAN: 17021, Raft: 17022, GRPC: 17023, Metrics: 17024}); cfg.Ports != want {
		t.Errorf("ports = %+v, want %+v", cfg.Ports, want)
	}
	if want := []string{"127.0.0.1:17011", "127.0.0.1:17021", "127.0.0.1:17031"}; !reflect.DeepEqual(cfg.Join, want) {
		t.Errorf("join = %v, want %v", cfg.Join, want)
	}
	if cfg.BootstrapExpect != 3 || cfg.LogLevel != "info" {
		t.Errorf("bootstrap_expect %d, log_level %q", cfg.BootstrapExpect, cfg.LogLevel)
	}
	if tight := agent.Default().Tightened(); cfg.Raft != tight.Raft || cfg.Gossip.SameSite != tight.Gossip.SameSite || cfg.Gossip.CrossSite != tight.Gossip.CrossSite {
		t.Errorf("dev timings are not the tightened ones")
	}
	if !cfg.Gossip.Plaintext {
		t.Errorf("dev gossip is not plaintext: the agents would refuse to start without a key")
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestDevConfigFileRoundTrip proves that what dev writes is what
// `haven agent --config` reads: the agent loads it over its defaults with
// unknown keys refused, and ends with exactly the config dev built.
func TestDevConfigFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	n := testDevNode(t, dir, 3, 1)
	if err := n.writeConfig(); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "dev-1", "haven.yaml"); n.ConfigPath != want {
		t.Errorf("config path %s, want %s", n.ConfigPath, want)
	}
	if b, err := os.ReadFile(n.ConfigPath); err != nil || !strings.HasPrefix(string(b), "# Written by haven dev; rewritten on every start.\nname: dev-1\n") {
		t.Errorf("config file: %.60q, %v", b, err)
	}
	if fi, err := os.Stat(n.cfg.DataDir); err != nil || !fi.IsDir() {
		t.Errorf("data dir not created: %v", err)
	}
	got := agent.Default()
	got.Name, got.DataDir = "someone-else", "/elsewhere" // must be overwritten
	if err := got.LoadFile(n.ConfigPath); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, n.cfg) {
		b, _ := yaml.Marshal(got)
		t.Errorf("config read back differs:\n%s", b)
	}
}

func TestDevOptionsValidate(t *testing.T) {
	for _, o := range []devOptions{{nodes: 3, basePort: 17000}, {nodes: 1, basePort: 1024}, {nodes: 64, basePort: 65535 - 644}} {
		if err := o.validate(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	for _, o := range []devOptions{{nodes: 0, basePort: 17000}, {nodes: 65, basePort: 17000}, {nodes: 3, basePort: 80}, {nodes: 64, basePort: 65535 - 643}} {
		if err := o.validate(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

// testDevNode is node i of n under dir, as runDev makes it.
func testDevNode(t *testing.T, dir string, n, i int) *devNode {
	t.Helper()
	dn, err := newDevNode(dir, devConfig(dir, 17000, n, i))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dn.Close() })
	return dn
}

func TestDevHints(t *testing.T) {
	c := &devCluster{dir: "/tmp/x", nodes: []*devNode{testDevNode(t, "/tmp/x", 2, 1), testDevNode(t, "/tmp/x", 2, 2)}}
	h := c.hints()
	for _, want := range []string{
		"go run ./cmd/haven --addr 127.0.0.1:17013 members\n",
		"go run ./cmd/haven --addr 127.0.0.1:17013 group list\n",
		"go run ./cmd/haven --addr 127.0.0.1:17013 group create web --vcpus 2 --memory 1G\n",
		"HAVEN_ADDR=127.0.0.1:17023 go run ./cmd/haven status\n",
		"go tool grpcurl -plaintext 127.0.0.1:17013 list\n",
		"go run ./cmd/haven --addr 127.0.0.1:17013 events --follow",
		"go run ./cmd/haven --addr 127.0.0.1:17013 move demo ",
		"go run ./cmd/haven --addr 127.0.0.1:17013 drain dev-2 --wait ",
		"curl -s http://127.0.0.1:17014/metrics | grep ^haven_\n",
		"go tool grpcurl -plaintext -d '{}' 127.0.0.1:17013 haven.v1.ClusterService/ListNodes\n",
		"removed on exit",
		"INSECURE: haven dev runs without TLS",
		"Ctrl-C",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("hints lack %q:\n%s", want, h)
		}
	}
}

func TestTailLines(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var b strings.Builder
	for i := range 100 {
		b.WriteString(strings.Repeat("x", 1000) + " line " + string(rune('a'+i%26)) + "\n")
	}
	tests := []struct {
		name, data string
		n          int
		want       []string
	}{
		{"empty", "", 5, nil},
		{"short", "a\nb\n", 5, []string{"a", "b"}},
		{"no final newline", "a\nb\nc", 2, []string{"b", "c"}},
		{"long file, last lines only", b.String(), 2, []string{strings.Repeat("x", 1000) + " line u", strings.Repeat("x", 1000) + " line v"}},
	}
	for _, tt := range tests {
		got, err := tailLines(write(tt.name, tt.data), tt.n)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	// 100 lines of ~1 KiB: the 64 KiB window holds fewer than 100, and
	// none of them may be a cut-off fragment.
	got, _ := tailLines(filepath.Join(dir, "long file, last lines only"), 1000)
	if len(got) >= 100 || len(got) < 60 {
		t.Errorf("window gave %d lines", len(got))
	}
	for _, l := range got {
		if !strings.HasPrefix(l, strings.Repeat("x", 1000)) {
			t.Errorf("cut line %q", l[:20])
		}
	}
	if _, err := tailLines(filepath.Join(dir, "missing"), 3); err == nil {
		t.Error("missing file: no error")
	}
}
