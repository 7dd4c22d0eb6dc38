// Package integration starts real haven agent processes on loopback and
// checks what the cluster does when they start, die and restart.
package integration

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/check"
	"github.com/haven-ha/haven/integration/lab"
	"github.com/haven-ha/haven/internal/devcluster"
	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var keepLogs = flag.Bool("keep-logs", false, "print every agent's log at the end of each test")

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binary builds haven (and grpcurl) once per test run.
func binary(t testing.TB, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "haven-it-bin-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"github.com/haven-ha/haven/cmd/haven", "github.com/fullstorydev/grpcurl/cmd/grpcurl"} {
			out, err := exec.Command("go", "build", "-o", binDir, pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, name)
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// subnet gives every cluster its own 127.x.y.0/24 so clusters of parallel
// or leftover runs never share an address; every node of a cluster then
// uses the default ports on its own address.
var subnetSeq atomic.Int32

func newSubnet() string {
	r := rand.New(rand.NewSource(time.Now().UnixNano() + int64(os.Getpid())))
	return fmt.Sprintf("127.%d.%d", 10+r.Intn(240), subnetSeq.Add(1)%250+1)
}

type cluster struct {
	t      *testing.T
	dir    string
	subnet string
	nodes  []*node
	tune   func(*agent.Config)
	// lab, when set, runs every node in its own network namespace.
	lab   *lab.Lab
	hosts []*lab.Host
	// token is the ACL secret every connection of the harness sends, once
	// bootstrapACL has made it.
	token atomic.Pointer[string]
}

// harnessToken sends the cluster's token, when it has one.
type harnessToken struct{ c *cluster }

func (h harnessToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if s := h.c.token.Load(); s != nil {
		return map[string]string{"authorization": "Bearer " + *s}, nil
	}
	return nil, nil
}

func (harnessToken) RequireTransportSecurity() bool { return false }

// bootstrapACL makes the admin token of a cluster with access control on
// (withACL), once a leader takes it, and has every connection of the
// harness send it from then on.
func (c *cluster) bootstrapACL(timeout time.Duration) {
	c.t.Helper()
	id := fmt.Sprintf("harness-bootstrap-%d", time.Now().UnixNano())
	waitFor(c.t, timeout, "ACL bootstrap", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := havenv1.NewAclServiceClient(c.nodes[0].conn).Bootstrap(ctx, &havenv1.BootstrapRequest{RequestId: id})
		if err != nil {
			return err
		}
		secret := resp.GetSecret()
		c.token.Store(&secret)
		return nil
	})
}

type node struct {
	c    *cluster
	host *lab.Host
	name string
	cfg  agent.Config
	// proc is the agent under devcluster's supervision, as in haven dev:
	// config and log files, the process, the connection to its API.
	proc *devcluster.Node
	conn *grpc.ClientConn // proc's, for any service
	// stacks: the log holds a goroutine dump (a stop that hung).
	stacks bool
}

// option adjusts every node's configuration of a cluster.
type option func(*agent.Config)

func withDefaultTimings() option {
	return func(c *agent.Config) {
		d := agent.Default()
		c.Raft, c.Lease = d.Raft, d.Lease
		// The timing profiles only: the gossip key stays the test's.
		c.Gossip.SameSite, c.Gossip.CrossSite = d.Gossip.SameSite, d.Gossip.CrossSite
	}
}

// withGossipKey encrypts gossip with key (base64), the nodes' first key.
func withGossipKey(key string) option {
	return func(c *agent.Config) { c.Gossip.Encrypt, c.Gossip.Plaintext = key, false }
}

// withACL turns access control on, with the audit log in each node's
// directory.
func withACL() option {
	return func(c *agent.Config) {
		c.ACL.Enabled = true
		c.ACL.AuditFile = filepath.Join(filepath.Dir(c.DataDir), "audit.jsonl")
	}
}

func withReapAfter(d time.Duration) option { return func(c *agent.Config) { c.Raft.ReapAfter = d } }

func withFailoverAfter(d time.Duration) option {
	return func(c *agent.Config) { c.Lease.FailoverAfter = d }
}

// withReserve sets placement.reserve, the node failures every HA group
// must survive (admission control).
func withReserve(k int) option { return func(c *agent.Config) { c.Placement.Reserve = k } }

// withCapacity gives every simulated node this capacity, small enough that
// a test fills it with a handful of groups.
func withCapacity(cpuMillis, memoryBytes int64) option {
	return func(c *agent.Config) { c.Capacity = agent.Capacity{CPUMillis: cpuMillis, MemoryBytes: memoryBytes} }
}

func newCluster(t *testing.T, opts ...option) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir(), subnet: newSubnet()}
	c.tune = func(cfg *agent.Config) {
		for _, o := range opts {
			o(cfg)
		}
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.kill()
		}
		if t.Failed() || *keepLogs {
			for _, n := range c.nodes {
				c.dumpLog(n)
			}
		}
	})
	return c
}

func (c *cluster) dumpLog(n *node) {
	data, err := os.ReadFile(n.proc.LogPath)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if !*keepLogs {
		lines = withoutNoise(lines)
	}
	if len(lines) > 150 && !*keepLogs {
		from := len(lines) - 150
		if n.stacks {
			// Keep the goroutine dump whole, with what led to it.
			for i := len(lines) - 1; i >= 0; i-- {
				if strings.HasPrefix(lines[i], "SIGQUIT") {
					from = max(min(from, i-40), 0)
					break
				}
			}
		}
		lines = lines[from:]
	}
	c.t.Logf("---- %s log (%s) ----\n%s", n.name, n.proc.LogPath, strings.Join(lines, "\n"))
}

// noise are log lines an unreachable peer repeats several times a second
// (Raft's heartbeat to it, gossip's probes): a failed test's dump keeps
// the last lines of a log, and a leader's last 80 were once all Raft's
// "failed to contact", hiding what its executor did.
var noise = []string{`msg="failed to contact"`, `msg="memberlist: Failed UDP ping`, `msg="memberlist: Failed fallback TCP ping`}

// withoutNoise drops the noise lines and says how many it dropped.
func withoutNoise(lines []string) []string {
	out, dropped := lines[:0:0], 0
	for _, l := range lines {
		if slices.ContainsFunc(noise, func(n string) bool { return strings.Contains(l, n) }) {
			dropped++
			continue
		}
		out = append(out, l)
	}
	if dropped > 0 {
		out = append(out, fmt.Sprintf("(%d lines of failed heartbeats and probes left out)", dropped))
	}
	return out
}

// newLabCluster makes a cluster whose nodes run in network namespaces, one
// host per entry of sites (the entry names the node's site), all created
// up front so that every node can join every other.
func newLabCluster(t *testing.T, sites []string, opts ...option) *cluster {
	c := newCluster(t, opts...)
	c.lab = lab.New(t)
	bySite := map[string]*lab.Site{}
	for i, s := range sites {
		if bySite[s] == nil {
			bySite[s] = c.lab.Site(s)
		}
		c.hosts = append(c.hosts, bySite[s].Host(fmt.Sprintf("n%d", i+1)))
	}
	return c
}

// add defines node i (1-based) with bootstrap-expect expect, joining the
// first node; it does not start it.
func (c *cluster) add(expect int) *node {
	i := len(c.nodes) + 1
	name := fmt.Sprintf("n%d", i)
	ip := fmt.Sprintf("%s.%d", c.subnet, i)
	var host *lab.Host
	if c.lab != nil {
		host = c.hosts[i-1]
		ip = host.IP()
	}
	cfg := agent.Default().Tightened()
	cfg.Name = name
	cfg.Site = "lab"
	cfg.DataDir = filepath.Join(c.dir, name, "data")
	cfg.BindAddr = ip
	cfg.BootstrapExpect = expect
	cfg.LogLevel = "debug"
	cfg.SharedDir = filepath.Join(c.dir, "shared")
	cfg.Sim.FaultInjection = true
	// Profiles of a test's agents: /debug/pprof on the metrics port.
	cfg.EnableDebug = true
	// Simulated hosts: what placement sees, not what this machine has.
	cfg.Capacity = agent.Capacity{CPUMillis: 64000, MemoryBytes: 256 << 30}
	// Tests that want TLS turn it on (withTLS, tls_test.go).
	cfg.TLS.Plaintext = true
	// The insecure side by default; withACL turns it on.
	cfg.ACL.Enabled = false
	if c.lab != nil {
		cfg.Site = host.Site().Name()
		for _, h := range c.hosts {
			cfg.Join = append(cfg.Join, fmt.Sprintf("%s:%d", h.IP(), cfg.Ports.GossipWAN))
		}
	} else {
		for j := 1; j <= max(i, 3); j++ {
			cfg.Join = append(cfg.Join, fmt.Sprintf("%s.%d:%d", c.subnet, j, cfg.Ports.GossipWAN))
		}
	}
	// The insecure side by default, as haven dev; withGossipKey turns
	// encryption on.
	cfg.Gossip.Plaintext = true
	c.tune(&cfg)
	n := &node{c: c, host: host, name: name, cfg: cfg}
	// The test's calls retry a leader change as the CLI does: a test
	// that creates a group just after the election must not fail because
	// a loaded machine made the cluster elect again.
	// They also reconnect within a second of an agent's restart: gRPC's
	// default backoff grows to two minutes while the agent is down (after
	// 40 s of calls to a closed port, the first call answered 3.6 s after
	// the server came up; 0.2 s with these parameters), and a test's
	// status calls to a restarted node would time out meanwhile.
	opts := []grpc.DialOption{rpcclient.WithRetry(), grpc.WithPerRPCCredentials(harnessToken{c}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: rpcclient.RetryBackoff, MinConnectTimeout: 2 * time.Second})}
	if !cfg.TLS.Plaintext {
		opts = append(opts, testClientTLS(c.t, cfg.TLS))
	}
	if c.lab != nil {
		// The test stays in the root namespace and reaches the hosts
		// through the lab's router namespace.
		opts = append(opts, grpc.WithContextDialer(c.lab.DialContext))
	}
	proc, err := devcluster.NewNode(c.dir, name, n.grpcAddr(), opts...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { proc.Close() })
	n.proc, n.conn = proc, proc.Conn()
	if err := proc.WriteConfig(cfg, ""); err != nil {
		c.t.Fatal(err)
	}
	c.nodes = append(c.nodes, n)
	return n
}

// start launches n nodes that all expect n.
func (c *cluster) startN(count int) {
	for i := 0; i < count; i++ {
		c.add(count).start()
	}
}

func (n *node) grpcAddr() string {
	return fmt.Sprintf("%s:%d", n.cfg.BindAddr, n.cfg.Ports.GRPC)
}

func (n *node) start() {
	t := n.c.t
	t.Helper()
	o := devcluster.StartOptions{
		Banner: fmt.Sprintf("==== start %s ====", time.Now().Format(time.RFC3339Nano)),
		// Die with the test binary even if it is killed before cleanup.
		ParentDeath: syscall.SIGKILL,
	}
	if n.host != nil {
		// In a lab the agent runs in its host's network namespace through
		// `ip netns exec`, which execs it: the process is still the
		// agent itself, so signals reach it as on loopback.
		o.Command = n.host.Command
	}
	if err := n.proc.Start(binary(t, "haven"), o); err != nil {
		t.Fatal(err)
	}
}

func (n *node) running() bool { return n.proc.Running() }

// stopWait is how long an agent gets to exit after a signal: a clean stop
// is bounded well below it, so a longer one is a bug.
const stopWait = 20 * time.Second

// kill sends SIGKILL to the agent alone, as a crash would, and waits for
// the process to be gone.
func (n *node) kill() {
	if !n.running() {
		return
	}
	p := n.proc.Process()
	_ = p.Signal(syscall.SIGKILL)
	select {
	case <-p.Done():
	case <-time.After(stopWait):
		n.c.t.Errorf("%s did not exit within %s of SIGKILL", n.name, stopWait)
		<-p.Done()
	}
}

// stop sends SIGTERM and waits for a clean exit, as haven dev stops its
// agents (devcluster.Stop). One that hangs is a bug: before it is killed,
// SIGQUIT makes it write every goroutine's stack to its log, which shows
// what it was stuck on.
func (n *node) stop() {
	ctx, cancel := context.WithTimeoutCause(context.Background(), stopWait, fmt.Errorf("did not exit within %s of SIGTERM", stopWait))
	defer cancel()
	devcluster.Stop(ctx, []*devcluster.Node{n.proc}, devcluster.StopHooks{Killing: func(_ *devcluster.Node, why error) {
		n.c.t.Errorf("%s %v; SIGQUIT (its goroutines go to its log), then SIGKILL", n.name, why)
		p := n.proc.Process()
		_ = p.Signal(syscall.SIGQUIT)
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
		}
		n.stacks = true
	}})
}

func (n *node) api() havenv1.ClusterServiceClient { return havenv1.NewClusterServiceClient(n.conn) }

func (n *node) status() (*havenv1.GetStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return n.api().GetStatus(ctx, &havenv1.GetStatusRequest{})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	waitEvery(t, timeout, 50*time.Millisecond, what, cond)
}

// waitEvery is waitFor with a pause of every between the polls.
func waitEvery(t *testing.T, timeout, every time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(every)
	}
}

// leader waits until every running node names the same leader, one of
// them (devcluster.Leader), and returns it.
//
// A poll asks every node at once, so it pauses 10 ms per node between
// polls: at 100 agents a status call to each of them every 50 ms (each
// counting 10,000 groups) kept about 100 processes runnable on 2 cores,
// and the leader lost its quorum soon after it began.
func (c *cluster) leader(timeout time.Duration) *node {
	c.t.Helper()
	var leader *node
	every := max(50*time.Millisecond, time.Duration(len(c.nodes))*10*time.Millisecond)
	waitEvery(c.t, timeout, every, "one leader agreed by all running nodes", func() error {
		var running []*devcluster.Node
		for _, n := range c.nodes {
			if n.running() {
				running = append(running, n.proc)
			}
		}
		l, err := devcluster.Leader(devcluster.Poll(context.Background(), running))
		if err != nil {
			return err
		}
		leader = c.node(l.Name)
		return nil
	})
	return leader
}

func (c *cluster) node(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

// raftRoles returns each node's Raft role as the given node reports it.
func raftRoles(n *node) (map[string]havenv1.RaftRole, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := n.api().ListNodes(ctx, &havenv1.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]havenv1.RaftRole{}
	for _, ni := range resp.GetNodes() {
		out[ni.GetNode().GetName()] = ni.GetRaftRole()
	}
	return out, nil
}

func logContains(n *node, s string) bool {
	data, _ := os.ReadFile(n.proc.LogPath)
	return bytes.Contains(data, []byte(s))
}

var errNotYet = errors.New("not yet")

// pause sends SIGSTOP; resume sends SIGCONT.
func (n *node) pause()  { _ = n.proc.Process().Signal(syscall.SIGSTOP) }
func (n *node) resume() { _ = n.proc.Process().Signal(syscall.SIGCONT) }

// checkInvariants runs the invariant checker over the shared storage and
// the API of a running node: no two runners, no counter or epoch going
// backwards, and every group that should run is running. Only the last can
// be transient (a group starting or thawing), so only it is retried.
func (c *cluster) checkInvariants(names []string) {
	c.t.Helper()
	var via *node
	for _, n := range c.nodes {
		if n.running() {
			via = n
			break
		}
	}
	shared := filepath.Join(c.dir, "shared")
	var last check.Report
	waitFor(c.t, 20*time.Second, "invariants", func() error {
		// The groups as the leader has them, when one is known: an
		// agent's own copy may be behind (one just restarted holds its
		// last snapshot until it catches up, and showed 200 groups where
		// they no longer ran in a 100-agent run).
		from := via
		if st, err := via.status(); err == nil && st.GetLeader() != "" {
			if l := c.node(st.GetLeader()); l.running() {
				from = l
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rep, err := check.Cluster(ctx, from.api(), shared, check.Options{})
		if err != nil {
			return err
		}
		last = rep
		for _, v := range rep.Violations {
			if v.Kind != check.NotRunning {
				c.t.Fatalf("invariant broken:\n%s", rep)
			}
		}
		if !rep.OK() {
			return fmt.Errorf("%s", rep)
		}
		return nil
	})
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
	}
	if last.VMs < len(seen) {
		c.t.Fatalf("checker saw %d VMs, want at least %d:\n%s", last.VMs, len(seen), last)
	}
	c.t.Logf("invariants hold: %d VMs, %d records", last.VMs, last.Records)
}

// reconfigure changes a node's configuration file before its next start.
func (n *node) reconfigure(f func(*agent.Config)) {
	n.c.t.Helper()
	f(&n.cfg)
	if err := n.proc.WriteConfig(n.cfg, ""); err != nil {
		n.c.t.Fatal(err)
	}
}
