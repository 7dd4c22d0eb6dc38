package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/rpcclient"
	"github.com/haven-ha/haven/internal/tlsutil"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// testPKI is a CA and the certificates a test made with it, in one
// directory: ca.pem, NAME.pem, NAME-key.pem.
type testPKI struct {
	t      *testing.T
	dir    string
	ca     *tlsutil.CA
	caFile string
}

func newTestPKI(t *testing.T, dir, name string) *testPKI {
	t.Helper()
	ca, err := tlsutil.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &testPKI{t: t, dir: dir, ca: ca, caFile: filepath.Join(dir, tlsutil.CAFile)}
	p.trust(ca)
	p.issue("test", false) // the test's own client certificate
	return p
}

// put replaces path as an operator would: a new file renamed over it.
func (p *testPKI) put(path string, data []byte) {
	p.t.Helper()
	if err := os.WriteFile(path+".new", data, 0o600); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		p.t.Fatal(err)
	}
}

// trust makes ca.pem hold cas.
func (p *testPKI) trust(cas ...*tlsutil.CA) {
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.PEM...)
	}
	p.put(p.caFile, b)
}

// issue (re)writes NAME.pem and NAME-key.pem, signed by the current CA,
// the key first, as a copy of two files would.
func (p *testPKI) issue(name string, node bool) (certFile, keyFile string) {
	p.t.Helper()
	c, k, err := p.ca.Issue(tlsutil.CertRequest{Name: name, Node: node})
	if err != nil {
		p.t.Fatal(err)
	}
	certFile, keyFile = tlsutil.CertFiles(p.dir, name)
	p.put(keyFile, k)
	p.put(certFile, c)
	return certFile, keyFile
}

// withTLS gives every node a certificate of p and turns TLS on.
func withTLS(p *testPKI) option {
	return func(c *agent.Config) {
		cf, kf := p.issue(c.Name, true)
		c.TLS = agent.TLSConfig{CAFile: p.caFile, CertFile: cf, KeyFile: kf}
	}
}

// testClientTLS is the harness's credentials for a node whose TLS is on:
// the client certificate "test" next to its CA file.
func testClientTLS(t *testing.T, tc agent.TLSConfig) grpc.DialOption {
	t.Helper()
	cf, kf := tlsutil.CertFiles(filepath.Dir(tc.CAFile), "test")
	r, err := tlsutil.NewReloader(tlsutil.Files{CA: tc.CAFile, Cert: cf, Key: kf}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rpcclient.Credentials(r.ClientConfig())
}

func reloads(n *node) int {
	data, _ := os.ReadFile(n.proc.LogPath)
	return bytes.Count(data, []byte("tls: certificates reloaded"))
}

// TestTLS runs one 3-node cluster with mutual TLS: it forms and runs
// groups; clients without a certificate of its CA cannot call it; a node
// of another CA cannot take part in Raft; then every node's certificate
// and the CA are rotated while the groups run, with no lease running out
// and no group restarted, and a live move afterwards uses the new
// certificates node to node.
func TestTLS(t *testing.T) {
	root := t.TempDir()
	pki := newTestPKI(t, filepath.Join(root, "pki"), "cluster CA")
	c := newCluster(t, withTLS(pki))
	leader, names, before := c.runGroups(3, "tls", 3)
	members := c.nodes[:3]

	// Clients without a certificate of the cluster's CA: refused at the
	// handshake, and nothing they sent is applied.
	other := newTestPKI(t, filepath.Join(root, "other"), "other CA")
	stranger, err := tls.LoadX509KeyPair(tlsutil.CertFiles(other.dir, "test"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(pki.ca.Cert)
	for _, tc := range []struct {
		name  string
		creds *tls.Config
	}{
		{"plaintext", nil},
		{"no certificate", &tls.Config{RootCAs: pool, ServerName: tlsutil.NodeName, MinVersion: tls.VersionTLS13}},
		{"another CA's certificate", &tls.Config{RootCAs: pool, ServerName: tlsutil.NodeName, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{stranger}}},
	} {
		conn, err := rpcclient.Dial(leader.grpcAddr(), rpcclient.Credentials(tc.creds))
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = havenv1.NewClusterServiceClient(conn).CreateGroup(cctx, &havenv1.CreateGroupRequest{Spec: vmGroup("intruder")})
		cancel()
		conn.Close()
		if status.Code(err) != codes.Unavailable {
			t.Errorf("%s: CreateGroup = %v, want Unavailable (refused at the handshake)", tc.name, err)
		}
	}
	if _, err := leader.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: "intruder"}); status.Code(err) != codes.NotFound {
		t.Errorf("intruder group: %v, want NotFound", err)
	}

	// A node with another CA's certificate: it joins gossip (unencrypted
	// here: the gossip key is what keeps it out), but every Raft and gRPC
	// connection between it and the cluster fails the handshake.
	rogue := c.add(0)
	cf, kf := other.issue(rogue.name, true)
	rogue.reconfigure(func(cfg *agent.Config) {
		cfg.TLS = agent.TLSConfig{CAFile: other.caFile, CertFile: cf, KeyFile: kf}
	})
	rogue.start()
	rogueRaft := fmt.Sprintf("%s:%d", rogue.cfg.BindAddr, rogue.cfg.Ports.Raft)
	waitFor(t, 20*time.Second, "the leader's Raft connection to the rogue node refused", func() error {
		for _, n := range members {
			if logContains(n, "raft tls dial "+rogueRaft) {
				return nil
			}
		}
		return errNotYet
	})
	notVoter := func() {
		t.Helper()
		roles, err := raftRoles(leader)
		if err != nil {
			t.Fatal(err)
		}
		if roles[rogue.name] == havenv1.RaftRole_RAFT_ROLE_VOTER {
			t.Fatalf("the rogue node is a %s", roles[rogue.name])
		}
		t.Logf("the rogue node's Raft role: %s", roles[rogue.name])
	}
	notVoter()

	// Rotation: the new CA trusted beside the old one everywhere, then
	// new certificates, then the old CA dropped; each step waits for
	// every node to reload.
	oldCA := pki.ca
	oldClient, err := tls.LoadX509KeyPair(tlsutil.CertFiles(pki.dir, "test"))
	if err != nil {
		t.Fatal(err)
	}
	next, err := tlsutil.NewCA("next CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	step := func(what string, do func()) {
		t.Helper()
		had := map[string]int{}
		for _, n := range members {
			had[n.name] = reloads(n)
		}
		do()
		waitFor(t, 15*time.Second, what+": every node reloaded", func() error {
			for _, n := range members {
				if reloads(n) <= had[n.name] {
					return fmt.Errorf("%s not yet", n.name)
				}
			}
			return nil
		})
	}
	step("new CA trusted", func() { pki.trust(oldCA, next) })
	pki.ca = next
	step("new certificates", func() {
		for _, n := range members {
			pki.issue(n.name, true)
		}
		pki.issue("test", false)
	})
	step("old CA dropped", func() { pki.trust(next) })

	for _, n := range members {
		if v, _ := metric(t, n, "haven_lease_expiries_total"); v != 0 {
			t.Errorf("%s: haven_lease_expiries_total = %v during the rotation", n.name, v)
		}
	}
	after, err := groupStates(leader)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		b, a := before[name], after[name]
		if a.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || a.GetOwner() != b.GetOwner() || a.GetEpoch() != b.GetEpoch() {
			t.Errorf("group %s: %s on %s at epoch %d, was on %s at %d", name, a.GetState(), a.GetOwner(), a.GetEpoch(), b.GetOwner(), b.GetEpoch())
		}
	}
	notVoter()

	// The old CA's client is refused now; the new one's is let in.
	newPool := x509.NewCertPool()
	newPool.AddCert(next.Cert)
	conn, err := rpcclient.Dial(leader.grpcAddr(), rpcclient.Credentials(&tls.Config{RootCAs: newPool, ServerName: tlsutil.NodeName, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{oldClient}}))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err = havenv1.NewClusterServiceClient(conn).ListGroups(cctx, &havenv1.ListGroupsRequest{})
	cancel()
	conn.Close()
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a client of the dropped CA: %v, want Unavailable", err)
	}
	conn, err = rpcclient.Dial(leader.grpcAddr(), testClientTLS(t, leader.cfg.TLS))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := havenv1.NewClusterServiceClient(conn).ListGroups(ctx(t), &havenv1.ListGroupsRequest{}); err != nil {
		t.Errorf("a client of the new CA: %v", err)
	}

	// A live move dials a connection of its own between the two nodes:
	// it must handshake with the new certificates against the new CA.
	g := after[names[0]]
	var to string
	for _, n := range members {
		if n.name != g.GetOwner() {
			to = n.name
			break
		}
	}
	resp, err := leader.api().MoveGroup(ctx(t), &havenv1.MoveGroupRequest{Name: g.GetSpec().GetName(), Target: to, Kind: havenv1.MoveKind_MOVE_KIND_LIVE})
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	if op := c.waitMove(leader, resp.GetOperation().GetId(), 30*time.Second); op.GetOutcome() != havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED {
		t.Fatalf("live move after the rotation ended %s (%s)", op.GetOutcome(), op.GetReason())
	}
	rogue.kill()
	c.checkInvariants(names)
}
