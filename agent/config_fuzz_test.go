package agent

import (
	"bytes"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/haven-ha/haven/internal/fuzzcorpus"
)

// configSeeds are config files as operators write them: the shipped
// example, a full one, and a few mistakes (a typo, a wrong type, bad
// indentation, a tab).
func configSeeds(tb testing.TB) [][]byte {
	example, err := os.ReadFile("../examples/fast-lan.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	full := `name: n1
site: a
data_dir: /var/lib/haven
bind_addr: 10.0.0.1
advertise_addr: 10.0.0.1
ports: {gossip: 7946, gossip_wan: 7947, raft: 7948, grpc: 7949, metrics: 7950}
join: ["10.0.0.2:7947", "10.0.0.3:7947"]
bootstrap_expect: 3
driver: qemu
node_weight: 1
capacity: {cpu_millis: 16000, memory_bytes: 68719476736}
raft: {max_voters: 5, reap_after: 10m, snapshot_threshold: 8192, snapshot_interval: 2m}
shared_dir: /mnt/shared
qemu: {binary: qemu-system-x86_64, accel: kvm, cpu: host, machine: q35, stop_timeout: 30s}
placement: {reserve: 1, reserve_sites: 1, cpu_overcommit: 4, balancer: automatic, max_parallel_moves: 2}
drain_on_shutdown: true
drain_timeout: 5m
labels: {rack: r1, storage: ssd}
log_level: debug
`
	return [][]byte{example, []byte(full),
		[]byte("raft:\n  reap_afterr: 1h\n"),
		[]byte("bootstrap_expect: three\n"),
		[]byte("raft:\n heartbeat_timeout: 1s\n  election_timeout: 1s\n"),
		[]byte("name: n1\n\tsite: a\n"),
		[]byte("# nothing but a comment\n"),
	}
}

func TestFuzzCorpus(t *testing.T) {
	fuzzcorpus.Check(t, "FuzzConfig", configSeeds(t))
}

// yamlKeys is every top-level key of the config file.
func yamlKeys() map[string]bool {
	keys := map[string]bool{}
	rt := reflect.TypeOf(Config{})
	for i := 0; i < rt.NumField(); i++ {
		if k, _, _ := strings.Cut(rt.Field(i).Tag.Get("yaml"), ","); k != "" && k != "-" {
			keys[k] = true
		}
	}
	return keys
}

var (
	// yamlRefusal names the line: "yaml: line 3: ..." or, for a field
	// of the wrong type or name, "line 3: ...".
	yamlRefusal = regexp.MustCompile(`line \d+`)
	// fieldRefusal is Validate's: a field path and a colon.
	fieldRefusal = regexp.MustCompile(`^([a-z_]+)[.\[:]`)
)

// FuzzConfig loads arbitrary bytes as the config file over the defaults,
// then validates the result, as `haven agent --config` does. Neither may
// panic; a malformed file is refused naming the file (and the line,
// where yaml knows one); a refused configuration names a field that the
// file has.
func FuzzConfig(f *testing.F) {
	for _, s := range configSeeds(f) {
		f.Add(s)
	}
	keys := yamlKeys()
	base := Default()
	base.Name = "n1"
	// The insecure side of the settings that are refused until set (TLS,
	// gossip encryption, ACL), where this build has them, so that
	// Validate gets past them to the rest; a key a build lacks is refused
	// and changes nothing.
	for _, s := range []string{"tls: {plaintext: true}", "gossip: {plaintext: true}", "acl: {enabled: false}"} {
		_ = base.load(strings.NewReader(s), "base")
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := base
		if err := c.load(bytes.NewReader(data), "haven.yaml"); err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "config file haven.yaml: ") {
				t.Fatalf("refusal does not name the file: %q", msg)
			}
			if strings.Contains(msg, "unmarshal errors") && !yamlRefusal.MatchString(msg) {
				t.Fatalf("refusal of a field does not name its line: %q", msg)
			}
			return
		}
		if err := c.Validate(); err != nil {
			m := fieldRefusal.FindStringSubmatch(err.Error())
			if m == nil || !keys[m[1]] {
				t.Fatalf("refusal names no field of the file: %q", err)
			}
		}
	})
}
