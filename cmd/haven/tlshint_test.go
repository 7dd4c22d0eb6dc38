package main

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/haven-ha/haven/internal/tlsutil"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestTLSMismatchHints: a CLI whose TLS does not match the agent's gets,
// besides gRPC's transport words, what to change.
func TestTLSMismatchHints(t *testing.T) {
	dir := t.TempDir()
	ca, err := tlsutil.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Write(dir); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, tlsutil.CAFile)
	issue := func(name string, node bool) (string, string) {
		c, k, err := ca.Issue(tlsutil.CertRequest{Name: name, Node: node})
		if err != nil {
			t.Fatal(err)
		}
		cf, kf, err := tlsutil.WriteCert(dir, name, c, k)
		if err != nil {
			t.Fatal(err)
		}
		return cf, kf
	}
	nodeCert, nodeKey := issue("n1", true)
	cliCert, cliKey := issue("ops", false)
	r, err := tlsutil.NewReloader(tlsutil.Files{CA: caFile, Cert: nodeCert, Key: nodeKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve := func(opts ...grpc.ServerOption) string {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer(opts...)
		healthpb.RegisterHealthServer(s, health.NewServer())
		havenv1.RegisterClusterServiceServer(s, havenv1.UnimplementedClusterServiceServer{})
		go func() { _ = s.Serve(lis) }()
		t.Cleanup(s.Stop)
		return lis.Addr().String()
	}
	secure, open := serve(grpc.Creds(tlsutil.Credentials(r.ServerConfig()))), serve()

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"plaintext CLI, TLS agent", []string{"--addr", secure}, "the agent may require TLS"},
		{"no client certificate", []string{"--addr", secure, "--ca-file", caFile}, "--ca-file needs --cert-file and --key-file"},
		{"TLS CLI, plaintext agent", []string{"--addr", open, "--ca-file", caFile, "--cert-file", cliCert, "--key-file", cliKey}, "runs without TLS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := newRootCmd(func(string) string { return "" })
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(append(c.args, "--timeout", "3s", "members"))
			err := cmd.Execute()
			if err == nil || !strings.Contains(formatError(err), c.want) {
				t.Errorf("%v: %v, want the hint %q", c.args, err, c.want)
			}
		})
	}
}
