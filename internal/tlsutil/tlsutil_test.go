package tlsutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func newCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue writes a certificate of ca for r into dir as r.Name.pem and
// r.Name-key.pem, replacing what is there as an operator would (a new
// file renamed over the old one), and returns the files with caFile.
func issue(t *testing.T, ca *CA, dir, caFile string, r CertRequest) Files {
	t.Helper()
	c, k, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	cf, kf := CertFiles(dir, r.Name)
	replace(t, kf, k)
	replace(t, cf, c)
	return Files{CA: caFile, Cert: cf, Key: kf}
}

func replace(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func writeCA(t *testing.T, dir string, cas ...*CA) string {
	t.Helper()
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.PEM...)
	}
	p := filepath.Join(dir, CAFile)
	replace(t, p, b)
	return p
}

func reloader(t *testing.T, f Files) *Reloader {
	t.Helper()
	r, err := NewReloader(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Interval = 0 // every handshake looks at the files
	return r
}

// serve accepts TLS connections with cfg and completes their handshakes
// until the test ends.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				// Wait for the client to close: with TLS 1.3 a client
				// certificate is refused after the client's handshake
				// returned, and the client sees the alert on a read.
				_, _ = c.Read(make([]byte, 1))
				c.Close()
			}()
		}
	}()
	return lis.Addr().String()
}

// handshake connects with cfg and returns the server's leaf certificate,
// or the error of the handshake or of the server's verdict on the client.
func handshake(addr string, cfg *tls.Config) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// A refused client certificate arrives as an alert: read to see it.
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

func TestIssueNodeAndClient(t *testing.T) {
	ca := newCA(t, "test CA")
	c, _, err := ca.Issue(CertRequest{Name: "n1", Node: true, IPs: []net.IP{net.ParseIP("10.0.0.1")}, DNS: []string{"n1.example"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "n1.pem"), c, 0o600); err != nil {
		t.Fatal(err)
	}
	certs, err := readCerts(filepath.Join(dir, "n1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	n := certs[0]
	if want := []string{"n1", NodeName, "localhost", "n1.example"}; !slices.Equal(n.DNSNames, want) {
		t.Errorf("node DNS SANs %v, want %v", n.DNSNames, want)
	}
	if len(n.IPAddresses) != 2 || !n.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || !n.IPAddresses[1].Equal(net.ParseIP("10.0.0.1")) {
		t.Errorf("node IP SANs %v", n.IPAddresses)
	}
	if !slices.Contains(n.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(n.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("node EKU %v, want server and client auth", n.ExtKeyUsage)
	}
	if _, _, err := ca.Issue(CertRequest{Name: "ops", DNS: []string{NodeName}}); err == nil {
		t.Error("a client certificate naming node.haven was issued")
	}

	// Files: the CA key and a certificate's key are private.
	if err := ca.Write(dir); err != nil {
		t.Fatal(err)
	}
	if err := ca.Write(dir); err == nil {
		t.Error("a second CA overwrote the first")
	}
	cp, kp, err := ca.Issue(CertRequest{Name: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	_, keyFile, err := WriteCert(dir, "ops", cp, kp)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(dir, CAKeyFile), keyFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, fi.Mode().Perm(), err)
		}
	}
	loaded, err := LoadCA(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile))
	if err != nil || !loaded.Cert.Equal(ca.Cert) {
		t.Fatalf("LoadCA: %v", err)
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, other := newCA(t, "cluster"), newCA(t, "other")
	caFile := writeCA(t, dir, ca)
	srv := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "n1", Node: true}))
	addr := serve(t, srv.ServerConfig())

	client := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "ops"}))
	if _, err := handshake(addr, client.ClientConfig()); err != nil {
		t.Fatalf("a client of the cluster's CA: %v", err)
	}
	noCert := reloader(t, Files{CA: caFile})
	if _, err := handshake(addr, noCert.ClientConfig()); err == nil {
		t.Error("a client without a certificate was let in")
	}
	odir := t.TempDir()
	stranger := reloader(t, issue(t, other, odir, writeCA(t, odir, other), CertRequest{Name: "n9", Node: true}))
	if _, err := handshake(addr, stranger.ClientConfig()); err == nil {
		t.Error("a node of another CA was let in")
	}
	// A client's certificate does not make it a server: dialers want
	// node.haven.
	fake := serve(t, reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "impostor"})).ServerConfig())
	if _, err := handshake(fake, client.ClientConfig()); err == nil || !strings.Contains(err.Error(), "server certificate") {
		t.Errorf("a server with a client certificate: %v, want refused", err)
	}
	if _, err := handshake(addr, &tls.Config{MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*client.cur.cert}, InsecureSkipVerify: true}); err == nil {
		t.Error("TLS 1.2 was accepted")
	}
}

func TestReloadTakesNewCertificateKeepsOldOnBadFile(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, "cluster")
	caFile := writeCA(t, dir, ca)
	files := issue(t, ca, dir, caFile, CertRequest{Name: "n1", Node: true})
	srv := reloader(t, files)
	addr := serve(t, srv.ServerConfig())
	client := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "ops"})).ClientConfig()

	first, err := handshake(addr, client)
	if err != nil {
		t.Fatal(err)
	}
	issue(t, ca, dir, caFile, CertRequest{Name: "n1", Node: true})
	second, err := handshake(addr, client)
	if err != nil {
		t.Fatal(err)
	}
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the server kept its old certificate after the files changed")
	}

	// A half-written certificate: the one in use stays, and the error
	// names the file.
	replace(t, files.Cert, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"))
	third, err := handshake(addr, client)
	if err != nil {
		t.Fatalf("a bad new file broke the handshake: %v", err)
	}
	if third.SerialNumber.Cmp(second.SerialNumber) != 0 {
		t.Error("the certificate in use changed to something after a bad file")
	}
	if err := srv.Reload(); err == nil || !strings.Contains(err.Error(), "tls cert_file") {
		t.Errorf("Reload of a bad file = %v, want an error naming cert_file", err)
	}
	// A certificate of a CA that is not in ca_file is refused too.
	other := newCA(t, "other")
	issue(t, other, dir, caFile, CertRequest{Name: "n1", Node: true})
	if err := srv.Reload(); err == nil || !strings.Contains(err.Error(), "not signed by a CA in ca_file") {
		t.Errorf("Reload of a foreign certificate = %v", err)
	}
	if got, err := handshake(addr, client); err != nil || got.SerialNumber.Cmp(second.SerialNumber) != 0 {
		t.Errorf("after a foreign certificate: %v, serial changed %v", err, got != nil && got.SerialNumber.Cmp(second.SerialNumber) != 0)
	}
}

// TestCARotation is the rotation the README gives: the new CA appended to
// ca_file everywhere, then new certificates, then the old CA dropped.
// Every step keeps old and new ends talking; at the end only the new CA
// is trusted.
func TestCARotation(t *testing.T) {
	dir, cdir := t.TempDir(), t.TempDir()
	old, next := newCA(t, "old"), newCA(t, "new")
	caFile, clientCA := writeCA(t, dir, old), writeCA(t, cdir, old)
	srv := reloader(t, issue(t, old, dir, caFile, CertRequest{Name: "n1", Node: true}))
	addr := serve(t, srv.ServerConfig())
	client := reloader(t, issue(t, old, cdir, clientCA, CertRequest{Name: "n2", Node: true}))
	ok := func(step string) {
		t.Helper()
		if _, err := handshake(addr, client.ClientConfig()); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	ok("before")
	writeCA(t, dir, old, next)
	ok("server trusts both")
	writeCA(t, cdir, old, next)
	ok("both trust both")
	issue(t, next, dir, caFile, CertRequest{Name: "n1", Node: true})
	ok("server's new certificate")
	issue(t, next, cdir, clientCA, CertRequest{Name: "n2", Node: true})
	ok("client's new certificate")
	writeCA(t, dir, next)
	writeCA(t, cdir, next)
	ok("old CA dropped")
	ldir := t.TempDir()
	leftover := reloader(t, issue(t, old, ldir, writeCA(t, ldir, old, next), CertRequest{Name: "n3", Node: true}))
	if _, err := handshake(addr, leftover.ClientConfig()); err == nil {
		t.Error("a certificate of the dropped CA is still accepted")
	}
}

func TestPeerIsNode(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, "cluster")
	caFile := writeCA(t, dir, ca)
	srv := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "n1", Node: true}))
	isNode := make(chan bool, 1)
	spy := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		isNode <- PeerIsNode(ctx)
		return h(ctx, req)
	}
	start := func(opts ...grpc.ServerOption) string {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer(append(opts, grpc.UnaryInterceptor(spy))...)
		healthpb.RegisterHealthServer(g, health.NewServer())
		go func() { _ = g.Serve(lis) }()
		t.Cleanup(g.Stop)
		return lis.Addr().String()
	}
	call := func(addr string, creds credentials.TransportCredentials) bool {
		t.Helper()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
		return <-isNode
	}
	secure := start(grpc.Creds(credentials.NewTLS(srv.ServerConfig())))
	node := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "n2", Node: true}))
	if !call(secure, credentials.NewTLS(node.ClientConfig())) {
		t.Error("a node's call: PeerIsNode false")
	}
	ops := reloader(t, issue(t, ca, dir, caFile, CertRequest{Name: "ops"}))
	if call(secure, credentials.NewTLS(ops.ClientConfig())) {
		t.Error("a client's call: PeerIsNode true")
	}
	if call(start(), insecure.NewCredentials()) {
		t.Error("a plaintext call: PeerIsNode true")
	}
}
