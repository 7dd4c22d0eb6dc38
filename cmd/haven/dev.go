package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/devcluster"
	"github.com/haven-ha/haven/internal/netlab"
	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The dev cluster lives on loopback only: nothing outside this host is
// ever contacted, and nothing outside can reach it.
const devHost = "127.0.0.1"

const (
	devLeaderDeadline = 60 * time.Second
	// devStopGrace is how long an agent gets to stop after SIGTERM before
	// it is killed: long enough to freeze its VMs and leave the cluster.
	devStopGrace = 10 * time.Second
	// devSettle bounds the waits that only make the first tables look
	// complete (all members listed, demo online); the cluster is usable
	// without them.
	devSettle     = 10 * time.Second
	devDemoOnline = 5 * time.Second
	devPoll       = 250 * time.Millisecond
	devRPC        = 2 * time.Second
	devLogTail    = 20
)

type devOptions struct {
	dataDir  string
	nodes    int
	basePort int
	// A stretch cluster in a network lab (devsites.go): the flags as
	// given, and what parseLabFlags made of them. layout is nil on
	// loopback.
	sites, wanSpec string
	witness        bool
	layout         []devSite
	wan            netlab.WAN
}

// count is the number of agents.
func (o devOptions) count() int {
	if o.layout == nil {
		return o.nodes
	}
	n := 0
	for _, s := range o.layout {
		n += s.nodes
	}
	return n
}

func newDevCmd() *cobra.Command {
	o := devOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Start a local cluster of agents with simulated VMs",
		Long: `Start a local cluster on 127.0.0.1: --nodes agents of this same binary,
named dev-1..dev-N in site "dev", with the sim driver and tightened timings.
Node i listens on base+10*i (gossip), +1 (WAN gossip, the join port), +2 (Raft)
and +3 (gRPC).

Without --data the cluster lives in a temporary directory removed on exit.
With --data DIR it is kept, and running 'haven dev --data DIR' again restarts
the same cluster with its state. Ctrl-C stops every agent in order.

A stretch cluster (Linux, as root): --sites A:2,B:2 puts each agent in a
network namespace of its own, each site on a routed subnet of its own
(10.77.S.0/24), named a-1, a-2, b-1, b-2 in sites a and b; --witness adds a
witness agent w-1 in site w; --wan 30ms±10ms,2% (or 30ms+-10ms,2%; jitter
and loss optional) delays and drops packets between every two sites, nothing
inside a site. The agents' APIs are forwarded to 127.0.0.1 (node i: base+10*i+3,
metrics +4). While it runs, 'haven dev net' partitions sites, isolates nodes,
changes the WAN, kills a site and heals it all. Ctrl-C also removes every
namespace and delay program; a haven dev that was killed leaves them to the
next one, which removes them.`,
		Example: `  haven dev
  haven dev --nodes 5 --data /tmp/mycluster
  sudo haven dev --sites A:2,B:2 --witness --wan 30ms±10ms,2%`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.parseLabFlags(cmd.Flags().Changed("nodes")); err != nil {
				return usagef(cmd, "%v", err)
			}
			if err := o.validate(); err != nil {
				return usagef(cmd, "%v", err)
			}
			return runDev(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data", "", "directory for configs, logs and state; kept on exit (default: a temporary directory, removed)")
	f.IntVar(&o.nodes, "nodes", 3, "number of agents")
	f.IntVar(&o.basePort, "base-port", 17000, "node i uses ports base+10*i to base+10*i+4")
	f.StringVar(&o.sites, "sites", "", "a stretch cluster in network namespaces (Linux, root): `NAME:COUNT,...` agents per site, e.g. A:2,B:2")
	f.BoolVar(&o.witness, "witness", false, "with --sites: add a witness agent in a site w of its own")
	f.StringVar(&o.wanSpec, "wan", "", "with --sites: `DELAY[±JITTER][,LOSS%]` each way between every two sites, e.g. 30ms±10ms,2%")
	cmd.AddCommand(newDevNetCmd())
	return cmd
}

func (o devOptions) validate() error {
	n := o.count()
	if n < 1 || n > devMaxNodes {
		return fmt.Errorf("--nodes %d: must be between 1 and %d", n, devMaxNodes)
	}
	if last := devPorts(o.basePort, n).Metrics; o.basePort < 1024 || last > 65535 {
		return fmt.Errorf("--base-port %d: ports must lie in 1024-65535 (%d nodes need up to base+%d)", o.basePort, n, 10*n+4)
	}
	return nil
}

func devNodeName(i int) string { return "dev-" + strconv.Itoa(i) }

func devPorts(base, i int) agent.Ports {
	p := base + 10*i
	return agent.Ports{Gossip: p, GossipWAN: p + 1, Raft: p + 2, GRPC: p + 3, Metrics: p + 4}
}

func devAddr(port int) string { return net.JoinHostPort(devHost, strconv.Itoa(port)) }

// devConfig is node i's (1-based) config in a cluster of n under dir. Every
// node joins every node's WAN gossip address, its own included, so that no
// node is special and any subset that comes up first can find the rest.
func devConfig(dir string, base, n, i int) agent.Config {
	cfg := agent.Default().Tightened()
	cfg.Name = devNodeName(i)
	cfg.Site = "dev"
	cfg.DataDir = filepath.Join(dir, cfg.Name, "data")
	cfg.BindAddr = devHost
	cfg.Ports = devPorts(base, i)
	cfg.Join = make([]string, 0, n)
	for j := 1; j <= n; j++ {
		cfg.Join = append(cfg.Join, devAddr(devPorts(base, j).GossipWAN))
	}
	cfg.BootstrapExpect = n
	cfg.LogLevel = "info"
	// One directory stands in for the shared storage every node reaches.
	cfg.SharedDir = filepath.Join(dir, "shared")
	// Simulated hosts: sized for the groups people create, not by this
	// machine's cores.
	cfg.Capacity = agent.Capacity{CPUMillis: 16000, MemoryBytes: 64 << 30}
	// A cluster on loopback for trying haven out: no certificates or
	// gossip key to make first, no token to pass. The banner says so
	// (devInsecure).
	cfg.TLS.Plaintext = true
	cfg.Gossip.Plaintext = true
	cfg.ACL.Enabled = false
	return cfg
}

// devInsecure is the first line of the dev cluster's banner: it runs with
// the protections a real cluster must have turned off.
const devInsecure = "INSECURE: haven dev runs without TLS, gossips unencrypted and asks no token (tls.plaintext, gossip.plaintext, acl.enabled: false); never expose its ports.\n"

// devNode is one agent of the dev cluster: the supervisor's node (files,
// process, API client) and the config dev wrote for it.
type devNode struct {
	*devcluster.Node
	cfg agent.Config
	// api and metrics are where an operator reaches the agent: its own
	// addresses on loopback, forwarders on 127.0.0.1 in a lab.
	api, metrics string
	// command runs the agent (inside its namespace in a lab); nil:
	// exec.Command.
	command func(name string, arg ...string) *exec.Cmd
	// killed is set by 'haven dev net kill-site' before it kills the
	// agent, so that its exit is reported as asked for.
	killed atomic.Bool
}

// newDevNode describes the node of cfg under dir. Its client is plain: every
// wait below polls on its own terms.
func newDevNode(dir string, cfg agent.Config) (*devNode, error) {
	n, err := devcluster.NewNode(dir, cfg.Name, devAddr(cfg.Ports.GRPC))
	if err != nil {
		return nil, err
	}
	return &devNode{Node: n, cfg: cfg, api: n.Addr, metrics: devAddr(cfg.Ports.Metrics)}, nil
}

type devCluster struct {
	out   io.Writer
	dir   string
	keep  bool
	exe   string // this binary: the agents', and the lab's delay program
	nodes []*devNode
	exits chan *devNode // every started node is sent here once it exits
	// lab is the network of a stretch cluster (--sites); nil on loopback.
	lab *devNetwork
	// rerunFlags are the flags besides --data that make this cluster
	// again.
	rerunFlags string
}

func runDev(ctx context.Context, out io.Writer, o devOptions) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the haven binary to run the agents: %w", err)
	}

	// Catch signals before anything starts, so a Ctrl-C at any moment
	// below stops whatever has been started. The first signal cancels ctx;
	// a second one, read by stop, kills the agents without further grace.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	c := &devCluster{out: out, keep: o.dataDir != "", exe: exe, exits: make(chan *devNode, o.count())}
	if c.keep {
		if c.dir, err = filepath.Abs(o.dataDir); err != nil {
			return err
		}
		if err := os.MkdirAll(c.dir, 0o755); err != nil {
			return err
		}
	} else {
		if c.dir, err = os.MkdirTemp("", "haven-dev-"); err != nil {
			return err
		}
		// Registered before stop, so it runs after every agent has exited.
		defer os.RemoveAll(c.dir)
	}

	defer c.closeConns()
	if o.layout != nil {
		// Registered before stop, so that the network goes only once
		// every agent in it has exited: namespaces, rules and delay
		// programs, also when anything below fails.
		defer c.closeLab()
		if err := c.buildLab(ctx, o); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	} else {
		for i := 1; i <= o.nodes; i++ {
			cfg := devConfig(c.dir, o.basePort, o.nodes, i)
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("%s: config: %w", cfg.Name, err)
			}
			n, err := newDevNode(c.dir, cfg)
			if err != nil {
				return err
			}
			c.nodes = append(c.nodes, n)
		}
		if err := checkPorts(c.nodes); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(c.dir, devNodeName(o.nodes+1))); err == nil {
			fmt.Fprintf(out, "note: %s holds nodes beyond dev-%d from an earlier run; they are not started\n", c.dir, o.nodes)
		}
	}
	for _, n := range c.nodes {
		if err := n.writeConfig(); err != nil {
			return err
		}
	}

	defer func() {
		// Cancel first: the signal watcher then lets go of sigs, and every
		// Ctrl-C from here on reaches stop as "kill now".
		cancel()
		c.stop(sigs)
	}()
	for _, n := range c.nodes {
		if err := c.start(n); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "started %d agents in %s; waiting for a leader\n", len(c.nodes), c.dir)

	// A failure after the signal is the signal's doing: stop quietly.
	fail := func(err error) error {
		if ctx.Err() != nil {
			return nil
		}
		c.printLogTails()
		return err
	}
	leader, err := c.waitForLeader(ctx, time.Now().Add(devLeaderDeadline))
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(out, "all %d agents agree: %s leads\n", len(c.nodes), leader)
	demo := true
	if err := c.createDemo(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// The demo group is a show-piece; the cluster works without it.
		fmt.Fprintf(out, "warning: demo group not created: %s\n", describeError(err))
		demo = false
	}
	c.show(ctx, demo)

	for {
		select {
		case <-ctx.Done():
			return nil
		case n := <-c.exits:
			c.reportExit(n)
			if !slices.ContainsFunc(c.nodes, func(n *devNode) bool { return n.Running() }) {
				return errors.New("every agent has exited")
			}
		}
	}
}

// checkPorts fails early, naming the port, rather than letting an agent die
// on a bind error in a log file. Gossip ports need UDP as well as TCP.
func checkPorts(nodes []*devNode) error {
	for _, n := range nodes {
		p := n.cfg.Ports
		for _, c := range []struct {
			what string
			port int
			udp  bool
		}{{"gossip", p.Gossip, true}, {"gossip_wan", p.GossipWAN, true}, {"raft", p.Raft, false}, {"grpc", p.GRPC, false}, {"metrics", p.Metrics, false}} {
			addr := devAddr(c.port)
			err := probePort("tcp", addr)
			if err == nil && c.udp {
				err = probePort("udp", addr)
			}
			if err != nil {
				return fmt.Errorf("port %d (%s of %s) is not free: %v\n"+
					"Is another haven dev running? Choose other ports with --base-port (node i uses base+10*i to base+10*i+4)",
					c.port, c.what, n.Name, err)
			}
		}
	}
	return nil
}

func probePort(network, addr string) error {
	if network == "udp" {
		pc, err := net.ListenPacket(network, addr)
		if err != nil {
			return err
		}
		return pc.Close()
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	return l.Close()
}

func (n *devNode) writeConfig() error {
	if err := os.MkdirAll(n.cfg.DataDir, 0o755); err != nil {
		return err
	}
	return n.WriteConfig(n.cfg, "Written by haven dev; rewritten on every start.")
}

// start starts n's agent, which stops cleanly (SIGTERM) should dev die
// without stopping it, and sends n to c.exits once it exits.
func (c *devCluster) start(n *devNode) error {
	n.killed.Store(false)
	err := n.Start(c.exe, devcluster.StartOptions{
		Banner:      fmt.Sprintf("--- haven dev: starting %s at %s ---", n.Name, time.Now().Format(time.RFC3339)),
		ParentDeath: syscall.SIGTERM,
		Command:     n.command,
	})
	if err != nil {
		return err
	}
	p := n.Process()
	go func() {
		<-p.Done()
		c.exits <- n
	}()
	return nil
}

func (c *devCluster) closeConns() {
	for _, n := range c.nodes {
		n.Close()
	}
}

// waitForLeader polls every node until all of them name the same leader,
// one of them (devcluster.Leader), and stops early when an agent exits.
func (c *devCluster) waitForLeader(ctx context.Context, deadline time.Time) (string, error) {
	nodes := make([]*devcluster.Node, len(c.nodes))
	for i, n := range c.nodes {
		nodes[i] = n.Node
	}
	tick := time.NewTicker(devPoll)
	defer tick.Stop()
	for {
		answers := devcluster.Poll(ctx, nodes)
		if l, err := devcluster.Leader(answers); err == nil {
			return l.Name, nil
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			fmt.Fprintf(&b, "the agents did not agree on a leader within %s:", devLeaderDeadline)
			for _, a := range answers {
				last := describeError(a.Err)
				if a.Err == nil {
					last = fmt.Sprintf("%s, leader %s", dash(a.Status.GetRaftState()), dash(a.Status.GetLeader()))
				}
				fmt.Fprintf(&b, "\n  %s (%s): %s", a.Node.Name, a.Node.Addr, last)
			}
			return "", errors.New(b.String())
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case n := <-c.exits:
			where := "the end of its log is above"
			if c.keep {
				where = "its log is " + n.LogPath
			}
			return "", fmt.Errorf("%s exited before the cluster formed (%s); %s", n.Name, exitDescription(n.Process()), where)
		case <-tick.C:
		}
	}
}

// createDemo creates the demo group through dev-2 rather than dev-1 so that
// the write is likely forwarded to the leader, which is the path operators
// use. Unavailable right after an election is retried with the same request
// id, so a retry of a create that did commit is applied once.
func (c *devCluster) createDemo(ctx context.Context) error {
	via := c.nodes[min(1, len(c.nodes)-1)]
	req := &havenv1.CreateGroupRequest{
		Spec:      standardGroupSpec("demo", defaultVMOptions()),
		RequestId: uuid.NewString(),
	}
	deadline := time.Now().Add(devSettle)
	for {
		cctx, cancel := context.WithTimeout(ctx, devRPC)
		_, err := via.Client().CreateGroup(cctx, req)
		cancel()
		switch status.Code(err) {
		case codes.OK:
			fmt.Fprintf(c.out, "created group demo through %s\n", via.Name)
			return c.startDemo(ctx, via)
		case codes.AlreadyExists:
			fmt.Fprintln(c.out, "group demo exists already")
			return c.startDemo(ctx, via)
		case codes.Unavailable, codes.DeadlineExceeded:
			if time.Now().After(deadline) || ctx.Err() != nil {
				return err
			}
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(devPoll):
		}
	}
}

// startDemo starts the demo group (a no-op when it runs already); right
// after an election the leader may not yet hold every node's lease, so
// Unavailable and ResourceExhausted are retried for a moment.
func (c *devCluster) startDemo(ctx context.Context, via *devNode) error {
	req := &havenv1.StartGroupRequest{Name: "demo", RequestId: uuid.NewString()}
	deadline := time.Now().Add(devSettle)
	for {
		cctx, cancel := context.WithTimeout(ctx, devRPC)
		resp, err := via.Client().StartGroup(cctx, req)
		cancel()
		switch status.Code(err) {
		case codes.OK:
			fmt.Fprintf(c.out, "started group demo on %s\n", resp.GetGroup().GetOwner())
			return nil
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
			if time.Now().After(deadline) || ctx.Err() != nil {
				return err
			}
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(devPoll):
		}
	}
}

// show prints the members and groups, after giving gossip a moment to list
// every node and the demo group a moment to come online, then what to try.
// The tables come from dev-1, a follower more often than not, whose copy of
// the state may lag the write made through dev-2 by a heartbeat: hence
// waiting for demo to be listed, not only for the call to succeed.
func (c *devCluster) show(ctx context.Context, demo bool) {
	first := c.nodes[0]
	var nodes *havenv1.ListNodesResponse
	var groups *havenv1.ListGroupsResponse
	var nodesErr, groupsErr error
	waitFor(ctx, devSettle, func(ctx context.Context) bool {
		nodes, nodesErr = rpcclient.AllNodes(ctx, first.Client(), &havenv1.ListNodesRequest{})
		alive := 0
		for _, n := range nodes.GetNodes() {
			if n.GetNode().GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
				alive++
			}
		}
		return alive >= len(c.nodes)
	}, func() { fmt.Fprintf(c.out, "waiting up to %s for every member to be listed alive\n", devSettle) })
	listGroups := func(ctx context.Context) *havenv1.Group {
		groups, groupsErr = rpcclient.AllGroups(ctx, first.Client(), &havenv1.ListGroupsRequest{})
		for _, g := range groups.GetGroups() {
			if g.GetSpec().GetName() == "demo" {
				return g
			}
		}
		return nil
	}
	waitFor(ctx, devSettle, func(ctx context.Context) bool {
		return listGroups(ctx) != nil || (!demo && groupsErr == nil)
	}, func() { fmt.Fprintf(c.out, "waiting up to %s for dev-1 to list group demo\n", devSettle) })
	if demo {
		waitFor(ctx, devDemoOnline, func(ctx context.Context) bool {
			switch listGroups(ctx).GetState() {
			case havenv1.GroupState_GROUP_STATE_ONLINE, havenv1.GroupState_GROUP_STATE_FAILED:
				return true
			}
			return false
		}, func() { fmt.Fprintf(c.out, "waiting up to %s for group demo to come online\n", devDemoOnline) })
	}
	if ctx.Err() != nil {
		return
	}
	fmt.Fprintln(c.out)
	if nodesErr != nil {
		fmt.Fprintf(c.out, "members: %s\n", describeError(nodesErr))
	} else {
		writeNodesTable(c.out, nodes)
	}
	fmt.Fprintln(c.out)
	if groupsErr != nil {
		fmt.Fprintf(c.out, "groups: %s\n", describeError(groupsErr))
	} else {
		writeGroupsTable(c.out, groups.GetGroups())
	}
	fmt.Fprintln(c.out)
	io.WriteString(c.out, c.hints())
}

// waitFor calls cond until it holds or limit passes; each call gets its own
// short deadline so one hung RPC cannot eat the whole wait. waiting is
// called once if the first try fails, so a pause is never silent.
func waitFor(ctx context.Context, limit time.Duration, cond func(context.Context) bool, waiting func()) {
	deadline := time.Now().Add(limit)
	for first := true; ; first = false {
		cctx, cancel := context.WithTimeout(ctx, devRPC)
		ok := cond(cctx)
		cancel()
		if ok || time.Now().After(deadline) {
			return
		}
		if first {
			waiting()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(devPoll):
		}
	}
}

func (c *devCluster) hints() string {
	a1 := c.nodes[0].api
	a2 := c.nodes[min(1, len(c.nodes)-1)].api
	// The node to drain: the last that can host groups (not a witness).
	last := c.nodes[len(c.nodes)-1]
	for _, n := range c.nodes {
		if !n.cfg.Witness {
			last = n
		}
	}
	var b strings.Builder
	b.WriteString(devInsecure)
	fmt.Fprintf(&b, "The cluster is running. From the repository root, try:\n\n")
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s members\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s group list\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s group create web --vcpus 2 --memory 1G\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s group start web\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s reserve            # can it sustain a node failure?\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s place --cpu 2 --mem 4G\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s move demo         # a live move: the guest pauses for milliseconds, its counter goes on\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s ops               # moves in flight and finished\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s drain %s --wait   # every group off %s, live; then 'resume %s'\n", a1, last.Name, last.Name, last.Name)
	fmt.Fprintf(&b, "  kill -9 <pid of web's owner>   # then 'group list' again: web runs elsewhere within seconds\n")
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s events --follow   # what the cluster does, as it happens\n", a1)
	fmt.Fprintf(&b, "  go run ./cmd/haven --addr %s check --shared %s\n", a1, filepath.Join(c.dir, "shared"))
	fmt.Fprintf(&b, "  HAVEN_ADDR=%s go run ./cmd/haven status\n", a2)
	fmt.Fprintf(&b, "  go tool grpcurl -plaintext %s list\n", a1)
	fmt.Fprintf(&b, "  go tool grpcurl -plaintext -d '{}' %s haven.v1.ClusterService/ListNodes\n", a1)
	fmt.Fprintf(&b, "  curl -s http://%s/metrics | grep ^haven_\n\n", c.nodes[0].metrics)
	if c.lab != nil {
		b.WriteString(c.lab.hints())
	}
	b.WriteString("Agent pids:")
	for _, n := range c.nodes {
		if p := n.Process(); p != nil {
			fmt.Fprintf(&b, " %s=%d", n.Name, p.Pid())
		}
	}
	node := "dev-<i>"
	if c.lab != nil {
		node = "<node>"
	}
	fmt.Fprintf(&b, "\nConfigs and logs: %s/%s/{haven.yaml,agent.log}", c.dir, node)
	if c.keep {
		fmt.Fprintf(&b, " (kept; 'haven dev --data %s%s' restarts this cluster)\n", c.dir, c.rerunFlags)
	} else {
		b.WriteString(" (removed on exit)\n")
	}
	b.WriteString("Press Ctrl-C to stop the cluster.\n")
	return b.String()
}

// reportExit tells the operator an agent died while the cluster ran, with
// the end of its log, which usually says why.
func (c *devCluster) reportExit(n *devNode) {
	p := n.Process()
	if n.killed.Load() {
		fmt.Fprintf(c.out, "%s (pid %d) killed, as asked\n", n.Name, p.Pid())
		return
	}
	fmt.Fprintf(c.out, "\n%s (pid %d) exited: %v\n", n.Name, p.Pid(), exitDescription(p))
	c.printLogTail(n)
	if c.lab != nil {
		fmt.Fprintf(c.out, "The other agents keep running. To restart it: go run ./cmd/haven dev net start %s\n", n.Name)
		return
	}
	fmt.Fprintf(c.out, "The other agents keep running. To restart it by hand: go run ./cmd/haven agent --config %s\n", n.ConfigPath)
}

// exitDescription says how an agent's process ended; it waits for the end.
func exitDescription(p *devcluster.Process) string {
	if err := p.Err(); err != nil {
		return err.Error()
	}
	return "exit status 0"
}

func (c *devCluster) printLogTails() {
	for _, n := range c.nodes {
		c.printLogTail(n)
	}
}

func (c *devCluster) printLogTail(n *devNode) {
	lines, err := tailLines(n.LogPath, devLogTail)
	if err != nil {
		fmt.Fprintf(c.out, "(cannot read %s: %v)\n", n.LogPath, err)
		return
	}
	fmt.Fprintf(c.out, "last lines of %s:\n", n.LogPath)
	for _, l := range lines {
		fmt.Fprintf(c.out, "  | %s\n", l)
	}
}

// tailLines returns the last n lines of a file, reading at most its last
// 64 KiB: agent logs grow without bound.
func tailLines(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const window = 64 << 10
	off := max(fi.Size()-window, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if off > 0 {
		// The first line is probably cut; drop it.
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	buf = bytes.TrimRight(buf, "\n")
	if len(buf) == 0 {
		return nil, nil
	}
	lines := strings.Split(string(buf), "\n")
	return lines[max(len(lines)-n, 0):], nil
}

// stop sends SIGTERM to every agent still running and waits for them,
// killing those still there after devStopGrace, or at once on another
// signal (devcluster.Stop).
func (c *devCluster) stop(sigs <-chan os.Signal) {
	var alive []*devcluster.Node
	for _, n := range c.nodes {
		if n.Running() {
			alive = append(alive, n.Node)
		}
	}
	if len(alive) == 0 {
		return
	}
	fmt.Fprintf(c.out, "\nstopping %d agents (Ctrl-C again to kill them)\n", len(alive))
	now, kill := context.WithCancelCause(context.Background())
	defer kill(nil)
	go func() {
		select {
		case <-sigs:
			kill(errors.New("asked twice"))
		case <-now.Done():
		}
	}()
	ctx, cancel := context.WithTimeoutCause(now, devStopGrace, fmt.Errorf("still running %s after SIGTERM", devStopGrace))
	defer cancel()
	devcluster.Stop(ctx, alive, devcluster.StopHooks{
		Killing: func(n *devcluster.Node, why error) { fmt.Fprintf(c.out, "killing %s: %v\n", n.Name, why) },
		Stopped: func(n *devcluster.Node) {
			fmt.Fprintf(c.out, "%s stopped (%s)\n", n.Name, exitDescription(n.Process()))
		},
	})
}
