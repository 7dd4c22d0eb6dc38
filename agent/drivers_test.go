package agent

import (
	"os"
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
