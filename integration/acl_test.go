package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/tlsutil"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestACL runs access control as an operator meets it, with the CLI
// against three agents: the bootstrap, an operate token that may stop a
// group but not delete it, its revoke, and the audit of it all. Each call
// goes to another node, so the writes are forwarded to the leader, which
// checks the token again.
//
// TLS is on, so the agents know each other by their certificates: the
// forwarded writes and the agent-to-agent calls go node to node, and a
// client's certificate, whatever its token, does not make it a node.
func TestACL(t *testing.T) {
	pki := newTestPKI(t, filepath.Join(t.TempDir(), "pki"), "cluster CA")
	c := newCluster(t, withACL(), withTLS(pki), func(cfg *agent.Config) { cfg.DrainOnShutdown, cfg.DrainTimeout = true, 10*time.Second })
	c.startN(3)
	bin := binary(t, "haven")
	cert, key := tlsutil.CertFiles(pki.dir, "test")
	var secrets []string
	// haven runs the CLI against node i with the token (none when empty).
	haven := func(i int, token string, args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--addr", c.nodes[i%3].grpcAddr(), "--timeout", "30s",
			"--ca-file", pki.caFile, "--cert-file", cert, "--key-file", key}, args...)...)
		cmd.Env = append(os.Environ(), "HAVEN_TOKEN="+token)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	must := func(i int, token string, args ...string) string {
		t.Helper()
		out, err := haven(i, token, args...)
		if err != nil {
			t.Fatalf("haven %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	refused := func(i int, token, why string, args ...string) {
		t.Helper()
		out, err := haven(i, token, args...)
		if err == nil || !strings.Contains(out, "PermissionDenied") || !strings.Contains(out, why) {
			t.Fatalf("haven %s: %v %q, want PermissionDenied: ...%s", strings.Join(args, " "), err, out, why)
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Fatal("a refusal shows a secret")
			}
		}
	}
	secretOf := func(out string) string {
		t.Helper()
		var resp struct{ Secret string }
		if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Secret == "" {
			t.Fatalf("no secret in %q: %v", out, err)
		}
		secrets = append(secrets, resp.Secret)
		return resp.Secret
	}

	// Health needs no token: it says when every agent listens. Then the
	// CLI waits (--timeout) for the cluster to elect a leader. Before the
	// bootstrap nothing but the bootstrap is allowed.
	for _, n := range c.nodes {
		waitFor(t, 30*time.Second, n.name+" serving", func() error {
			_, err := healthpb.NewHealthClient(n.conn).Check(ctx(t), &healthpb.HealthCheckRequest{})
			return err
		})
	}
	admin := secretOf(must(0, "", "-o", "json", "acl", "bootstrap"))
	refused(1, "", "none given", "status")
	_, err := haven(2, "", "acl", "bootstrap")
	if err == nil {
		t.Fatal("a second bootstrap succeeded")
	}
	ops := secretOf(must(1, admin, "-o", "json", "acl", "token", "create", "--name", "ops", "--role", "operate"))
	must(2, admin, "group", "create", "web", "--vcpus", "1", "--memory", "256M")
	must(0, admin, "group", "start", "web")

	// A client is no node, even with the admin token.
	_, err = havenv1.NewNodeServiceClient(c.nodes[0].conn).RenewLease(metadata.AppendToOutgoingContext(ctx(t), "authorization", "Bearer "+admin),
		&havenv1.RenewLeaseRequest{Node: "n1"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "only a haven node") {
		t.Fatalf("a client's RenewLease: %v, want PermissionDenied", err)
	}

	must(1, ops, "group", "stop", "web")
	refused(2, ops, "needs role admin", "group", "delete", "web")
	if out := must(0, ops, "group", "list"); !strings.Contains(out, "web") {
		t.Fatalf("web gone after a refused delete:\n%s", out)
	}
	refused(0, ops, "needs role admin", "acl", "token", "create", "--name", "mine", "--role", "admin")

	must(2, admin, "acl", "token", "revoke", "ops")
	refused(0, ops, "unknown or revoked", "group", "start", "web")
	// A read is answered by the agent asked, from its own state: on a
	// follower, once the revoke has reached it.
	waitFor(t, 5*time.Second, "a read with the revoked token refused on node 1", func() error {
		out, err := haven(1, ops, "group", "list")
		if err == nil || !strings.Contains(out, "PermissionDenied") || !strings.Contains(out, "unknown or revoked") {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	})
	waitFor(t, 5*time.Second, "ops gone from node 2's token list", func() error {
		if out := must(2, admin, "acl", "token", "list"); strings.Contains(out, "ops") || !strings.Contains(out, "bootstrap") {
			return fmt.Errorf("token list after the revoke:\n%s", out)
		}
		return nil
	})

	// A lost bootstrap secret: the index of the bootstrap, written into
	// the leader's data directory (every node's here: any may lead),
	// allows one more bootstrap.
	var list struct {
		Tokens []struct {
			Name        string
			CreateIndex string
		}
	}
	if err := json.Unmarshal([]byte(must(0, admin, "-o", "json", "acl", "token", "list")), &list); err != nil || len(list.Tokens) != 1 {
		t.Fatalf("token list: %v %+v", err, list)
	}
	for _, n := range c.nodes {
		if err := os.WriteFile(filepath.Join(n.cfg.DataDir, "acl-bootstrap-reset"), []byte(list.Tokens[0].CreateIndex+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	admin2 := secretOf(must(1, "", "-o", "json", "acl", "bootstrap"))
	// Node 2 knows the new token once the bootstrap has replicated there.
	waitFor(t, 5*time.Second, "the reset's token listed on node 2", func() error {
		out, err := haven(2, admin2, "acl", "token", "list")
		if err != nil || !strings.Contains(out, "bootstrap-reset-"+list.Tokens[0].CreateIndex) {
			return fmt.Errorf("%v:\n%s", err, out)
		}
		return nil
	})

	// The audit: node 1 received the stop (whoever led), the leader
	// recorded it too; no secret in any log or audit file.
	var stop map[string]any
	waitFor(t, 5*time.Second, "the stop in node 1's audit file", func() error {
		stop = nil
		f, err := os.Open(filepath.Join(filepath.Dir(c.nodes[1].cfg.DataDir), "audit.jsonl"))
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) == nil && e["method"] == "/haven.v1.ClusterService/StopGroup" {
				stop = e
			}
		}
		if stop == nil {
			return errNotYet
		}
		return nil
	})
	if stop["token"] != "ops" || stop["code"] != "OK" || stop["subject"].(map[string]any)["name"] != "web" {
		t.Errorf("audit of the stop: %v", stop)
	}
	for _, n := range c.nodes {
		logs, _ := os.ReadFile(n.proc.LogPath)
		audit, _ := os.ReadFile(filepath.Join(filepath.Dir(n.cfg.DataDir), "audit.jsonl"))
		for _, s := range secrets {
			if bytes.Contains(logs, []byte(s)) || bytes.Contains(audit, []byte(s)) {
				t.Errorf("%s: a secret shows in its log or audit file", n.name)
			}
		}
		if !bytes.Contains(logs, []byte(`msg="call refused"`)) && n == c.nodes[2] {
			t.Errorf("%s logged no refusal", n.name)
		}
	}

	// An agent drains itself on its way down, and ends that drain when it
	// is back, through its own API with no token: it is a node.
	n3 := c.nodes[2]
	n3.stop()
	n3.start()
	waitFor(t, 20*time.Second, "n3 ended its own drain", func() error {
		if !logContains(n3, "ended the drain this agent started at its last shutdown") {
			return errNotYet
		}
		return nil
	})
	audit, _ := os.ReadFile(filepath.Join(filepath.Dir(n3.cfg.DataDir), "audit.jsonl"))
	for _, m := range []string{"DrainNode", "ResumeNode"} {
		if !regexp.MustCompile(`"method":"/haven.v1.ClusterService/` + m + `","peer":"[^"]*","node":true,"subject":\{"node":"n3"\},"code":"OK"`).Match(audit) {
			t.Errorf("no audit of n3's own %s by a node:\n%s", m, audit)
		}
	}
}
