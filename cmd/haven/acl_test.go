package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/agent/acl"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fakeACL answers ListTokens and remembers the authorization each call
// carried.
type fakeACL struct {
	havenv1.UnimplementedAclServiceServer
	mu   sync.Mutex
	auth []string
}

func (f *fakeACL) ListTokens(ctx context.Context, _ *havenv1.ListTokensRequest) (*havenv1.ListTokensResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.auth = append(f.auth, strings.Join(md.Get("authorization"), ","))
	f.mu.Unlock()
	return &havenv1.ListTokensResponse{Tokens: []*havenv1.AclToken{{Name: "ops", Role: acl.Operate, AccessorId: "a-1", CreateTime: timestamppb.Now()}}}, nil
}

func (f *fakeACL) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auth[len(f.auth)-1]
}

// TestTokenSources: the token the CLI sends is --token, else HAVEN_TOKEN,
// else --token-file's, else HAVEN_TOKEN_FILE's.
func TestTokenSources(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &fakeACL{}
	havenv1.RegisterAclServiceServer(srv, fake)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	dir := t.TempDir()
	file := func(name, secret string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flagFile, envFile := file("flag", "from-flag-file"), file("env", "from-env-file")
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"none", nil, nil, ""},
		{"flag", map[string]string{"HAVEN_TOKEN": "from-env", "HAVEN_TOKEN_FILE": envFile}, []string{"--token", "from-flag", "--token-file", flagFile}, "Bearer from-flag"},
		{"env", map[string]string{"HAVEN_TOKEN": "from-env", "HAVEN_TOKEN_FILE": envFile}, []string{"--token-file", flagFile}, "Bearer from-env"},
		{"flag file", map[string]string{"HAVEN_TOKEN_FILE": envFile}, []string{"--token-file", flagFile}, "Bearer from-flag-file"},
		{"env file", map[string]string{"HAVEN_TOKEN_FILE": envFile}, nil, "Bearer from-env-file"},
	} {
		root := newRootCmd(func(k string) string { return c.env[k] })
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append([]string{"--addr", lis.Addr().String(), "acl", "token", "list"}, c.args...))
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := fake.last(); got != c.want {
			t.Errorf("%s: sent authorization %q, want %q", c.name, got, c.want)
		}
		if !strings.Contains(out.String(), "ops") || !strings.Contains(out.String(), "operate") {
			t.Errorf("%s: table %q", c.name, out.String())
		}
	}
	_, err = runHaven(t, "--addr", lis.Addr().String(), "--token-file", filepath.Join(dir, "missing"), "acl", "token", "list")
	if err == nil || !strings.Contains(err.Error(), "token file") {
		t.Errorf("missing token file: %v", err)
	}
	_, err = runHaven(t, "--addr", lis.Addr().String(), "acl", "token", "create", "--name", "x", "--role", "root")
	if err == nil || !strings.Contains(err.Error(), `role "root" is not one of read, operate, admin`) {
		t.Errorf("bad role: %v", err)
	}
}
