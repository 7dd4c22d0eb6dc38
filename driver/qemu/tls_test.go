package qemu

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu/testguest"
	"github.com/haven-ha/haven/internal/tlsutil"
)

// tlsDir writes a node's certificate of ca, and ca's certificate, in
// QEMU's x509 layout, and returns the directory.
func tlsDir(t *testing.T, ca *tlsutil.CA, name string) string {
	t.Helper()
	cert, key, err := ca.Issue(tlsutil.CertRequest{Name: name, Node: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for file, data := range map[string][]byte{
		"ca-cert.pem": ca.PEM, "server-cert.pem": cert, "server-key.pem": key, "client-cert.pem": cert, "client-key.pem": key,
	} {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newCA(t *testing.T, name string) *tlsutil.CA {
	t.Helper()
	ca, err := tlsutil.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestLiveMigrationTLS: with TLSDir the stream between the QEMUs is mutual
// TLS. A move between two nodes of one CA completes, the guest counting on
// at the target; a target whose certificate another CA signed is refused by
// the source's QEMU, and the guest goes on at the source. (Plaintext would
// ignore the certificates and move.)
func TestLiveMigrationTLS(t *testing.T) {
	needQEMU(t)
	ca, other := newCA(t, "cluster"), newCA(t, "other")
	shared := t.TempDir()
	withTLS := func(dir string) func(*Config) {
		return func(c *Config) { c.TLSDir, c.TLSHostname = dir, tlsutil.NodeName }
	}
	n1 := node{run: runDir(t)}
	n1.d = newTestDriver(t, "n1", n1.run, shared, withTLS(tlsDir(t, ca, "n1")))
	n2 := node{run: runDir(t)}
	n2.d = newTestDriver(t, "n2", n2.run, shared, withTLS(tlsDir(t, ca, "n2")))
	stranger := node{run: runDir(t)}
	stranger.d = newTestDriver(t, "n3", stranger.run, shared, withTLS(tlsDir(t, other, "n3")))

	spec := movingGuest(t, 1)
	src := bootGuest(t, n1, spec)

	// Another CA's target first: refused, and the source goes on.
	target := spec
	target.Epoch = 2
	if _, err, inErr := move(t, n1, stranger, target, 1, driver.MigrateOptions{}, nil); err == nil && inErr == nil {
		t.Fatal("a move to a node of another CA completed")
	}
	mustStatus(t, n1, web, driver.StateRunning, false)
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last := src.Last().N
	src.Wait(t, 10*time.Second, "the guest to go on at the source", func(s *testguest.Serial) bool { return s.Last().N > last+20 })

	dst := n2.console(t, web)
	if _, err, inErr := move(t, n1, n2, target, 1, driver.MigrateOptions{}, nil); err != nil || inErr != nil {
		t.Fatalf("MigrateOut: %v; MigrateIn: %v", err, inErr)
	}
	if err := src.Poll(); err != nil {
		t.Fatal(err)
	}
	last = src.Last().N
	if err := n2.d.Activate(web, 2, lease()); err != nil {
		t.Fatal(err)
	}
	dst.Wait(t, 20*time.Second, "the guest to tick at the target", func(s *testguest.Serial) bool { return s.Ticks() > 20 })
	if first := dst.First().N; first != last+1 {
		t.Errorf("the target's first tick is %d, the source's last %d", first, last)
	}
}
