package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A qemu node whose QEMU does not run does not start: the error names the
// driver and the binary.
func TestQemuDriverWithoutQemu(t *testing.T) {
	dir, err := os.MkdirTemp("", "hq") // short: the run directory holds sockets
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := Default()
	cfg.Name, cfg.Driver, cfg.DataDir, cfg.SharedDir = "n1", "qemu", dir, dir
	cfg.Qemu.Binary = "/nonexistent/qemu-system-x86_64"
	cfg.TLS.Plaintext, cfg.Gossip.Plaintext = true, true
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "driver qemu: /nonexistent/qemu-system-x86_64 -machine help") {
		t.Fatalf("New = %v, want the driver's error naming the binary", err)
	}
}

// The qemu driver's TLS directory links QEMU's names to the node's
// configured files, so that a file replaced in place is the one the next
// move reads; a plaintext node has none.
func TestQemuTLSDir(t *testing.T) {
	cfg := Default()
	cfg.DataDir = t.TempDir()
	cfg.TLS.Plaintext = true
	if dir, err := qemuTLSDir(cfg); err != nil || dir != "" {
		t.Fatalf("plaintext: %q, %v; want no directory", dir, err)
	}
	cfg.TLS = TLSConfig{CAFile: "/etc/haven/tls/ca.pem", CertFile: "/etc/haven/tls/n1.pem", KeyFile: "/etc/haven/tls/n1-key.pem"}
	for range 2 { // a restart finds the links of the last start
		dir, err := qemuTLSDir(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{
			"ca-cert.pem": cfg.TLS.CAFile, "server-cert.pem": cfg.TLS.CertFile, "server-key.pem": cfg.TLS.KeyFile,
			"client-cert.pem": cfg.TLS.CertFile, "client-key.pem": cfg.TLS.KeyFile,
		} {
			if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
				t.Errorf("%s -> %q, %v; want %q", name, got, err, want)
			}
		}
	}
}
