//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/haven-ha/haven/internal/devcluster"
	"github.com/haven-ha/haven/internal/netlab"
)

// devNetwork is the network of a stretch dev cluster: the lab, which node
// and site is which host and subnet, the forwarders of the agents' APIs to
// loopback, and the control socket 'haven dev net' talks to.
type devNetwork struct {
	c   *devCluster
	lab *netlab.Lab

	sites  []*netlab.Site // in the layout's order
	siteOf map[string]*netlab.Site
	hostOf map[string]*netlab.Host // by node name

	ctx       context.Context // cancelled by close: ends the forwarders
	cancel    context.CancelFunc
	listeners []io.Closer
	wg        sync.WaitGroup
	sock      string // the control socket's path

	mu sync.Mutex // one net command at a time
}

// devForwardDial bounds a forwarder's dial of an agent.
const devForwardDial = 5 * time.Second

// buildLab makes the lab of o.layout: its sites and hosts, the WAN between
// every two sites, the nodes with their configs, forwarders of their APIs
// on 127.0.0.1 and the control socket; then it prints the layout. What it
// made is undone by closeLab, also when it fails midway.
func (c *devCluster) buildLab(ctx context.Context, o devOptions) error {
	if err := netlab.Check(o.wan.Delay > 0); err != nil {
		return fmt.Errorf("haven dev --sites: %w", err)
	}
	l, err := netlab.New(netlab.Options{
		Delayer: []string{c.exe, "lab-wan"},
		Logf:    func(format string, args ...any) { fmt.Fprintf(c.out, format+"\n", args...) },
	})
	if err != nil {
		return err
	}
	nw := &devNetwork{c: c, lab: l, siteOf: map[string]*netlab.Site{}, hostOf: map[string]*netlab.Host{}}
	nw.ctx, nw.cancel = context.WithCancel(context.Background())
	c.lab = nw
	c.rerunFlags = " --sites " + o.sites
	if o.witness {
		c.rerunFlags += " --witness"
	}
	if o.wanSpec != "" {
		c.rerunFlags += " --wan " + o.wanSpec
	}

	bySite := make([][]*netlab.Host, len(o.layout))
	for si, s := range o.layout {
		site, err := l.Site(s.name)
		if err != nil {
			return err
		}
		nw.sites = append(nw.sites, site)
		nw.siteOf[s.name] = site
		for i := 1; i <= s.nodes; i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			name := devSiteNodeName(s.name, i)
			h, err := site.Host(name)
			if err != nil {
				return err
			}
			bySite[si] = append(bySite[si], h)
			nw.hostOf[name] = h
		}
	}
	if o.wan != (netlab.WAN{}) {
		for i, a := range nw.sites {
			for _, b := range nw.sites[i+1:] {
				if err := l.SetWAN(a, b, o.wan); err != nil {
					return err
				}
			}
		}
	}
	hosts := devAgents(o.layout, func(si, i int) string { return bySite[si][i-1].IP() })
	for i, h := range hosts {
		cfg := devSiteConfig(c.dir, hosts, i)
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("%s: config: %w", cfg.Name, err)
		}
		// dev stays in the root namespace and reaches the agents through
		// the lab's router namespace, which no partition cuts and no WAN
		// delays: its view of the cluster is never the fault's.
		node, err := devcluster.NewNode(c.dir, cfg.Name, fmt.Sprintf("%s:%d", h.ip, cfg.Ports.GRPC), grpc.WithContextDialer(l.DialContext))
		if err != nil {
			return err
		}
		n := &devNode{Node: node, cfg: cfg, command: nw.hostOf[h.name].Command}
		c.nodes = append(c.nodes, n)
		ports := devPorts(o.basePort, i+1)
		if n.api, err = nw.forward(ports.GRPC, "grpc", n); err != nil {
			return err
		}
		if n.metrics, err = nw.forward(ports.Metrics, "metrics", n); err != nil {
			return err
		}
	}
	if err := nw.listenControl(); err != nil {
		return err
	}
	fmt.Fprintln(c.out, nw.layout())
	return nil
}

// closeLab stops the forwarders and the control socket, then removes the
// lab: its delay programs, whatever still runs in its namespaces, and the
// namespaces. Called once every agent has exited.
func (c *devCluster) closeLab() {
	nw := c.lab
	if nw == nil {
		return
	}
	nw.cancel()
	for _, l := range nw.listeners {
		l.Close()
	}
	nw.wg.Wait()
	fmt.Fprintf(c.out, "removing network lab %s\n", nw.lab.Prefix())
	if err := nw.lab.Close(); err != nil {
		fmt.Fprintf(c.out, "warning: network lab %s: %v\n(the next haven dev --sites, or integration test, removes what is left)\n", nw.lab.Prefix(), err)
	}
}

// forward serves port on 127.0.0.1 as n's port of kind (grpc, metrics)
// through the router namespace, so that the CLI, grpcurl and curl reach
// the agent from the root namespace as they reach a loopback dev cluster.
func (nw *devNetwork) forward(port int, kind string, n *devNode) (string, error) {
	addr := devAddr(port)
	target := fmt.Sprintf("%s:%d", n.cfg.BindAddr, n.cfg.Ports.GRPC)
	if kind == "metrics" {
		target = fmt.Sprintf("%s:%d", n.cfg.BindAddr, n.cfg.Ports.Metrics)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("port %d (the forwarded %s port of %s) is not free: %v\n"+
			"Is another haven dev running? Choose other ports with --base-port (node i uses base+10*i+3 and +4)", port, kind, n.Name, err)
	}
	nw.listeners = append(nw.listeners, ln)
	nw.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			nw.wg.Go(func() { nw.pipe(conn, target) })
		}
	})
	return addr, nil
}

// pipe copies between a client on loopback and the agent at target until
// both ends are done, or the lab closes.
func (nw *devNetwork) pipe(conn net.Conn, target string) {
	defer conn.Close()
	ctx, cancel := context.WithTimeout(nw.ctx, devForwardDial)
	up, err := nw.lab.DialContext(ctx, target)
	cancel()
	if err != nil {
		return
	}
	defer up.Close()
	stop := context.AfterFunc(nw.ctx, func() { conn.Close(); up.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, conn)
		up.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(conn, up)
	conn.(*net.TCPConn).CloseWrite()
	<-done
}

// listenControl opens the control socket, devNetDir/PREFIX.sock, after
// removing the sockets of dev clusters that are gone.
func (nw *devNetwork) listenControl() error {
	if err := os.MkdirAll(devNetDir, 0o700); err != nil {
		return err
	}
	if stale, err := filepath.Glob(filepath.Join(devNetDir, "*.sock")); err == nil {
		for _, p := range stale {
			if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
				c.Close()
			} else if errors.Is(err, syscall.ECONNREFUSED) {
				os.Remove(p)
			}
		}
	}
	nw.sock = filepath.Join(devNetDir, nw.lab.Prefix()+".sock")
	ln, err := net.Listen("unix", nw.sock)
	if err != nil {
		return err
	}
	// Closing the listener removes the socket file.
	nw.listeners = append(nw.listeners, ln)
	nw.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			nw.wg.Go(func() { nw.serve(conn) })
		}
	})
	return nil
}

// serve answers one request of 'haven dev net'.
func (nw *devNetwork) serve(conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(nw.ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(devNetTimeout))
	var req devNetRequest
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		return
	}
	out, err := nw.do(req.Args)
	reply := devNetReply{Output: out}
	if err != nil {
		reply.Error = err.Error()
	}
	json.NewEncoder(conn).Encode(reply)
}

// do runs one net command: args as 'haven dev net' got them.
func (nw *devNetwork) do(args []string) (string, error) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if len(args) == 0 {
		return "", errors.New("no command")
	}
	want := func(n int, names string) error {
		if len(args)-1 != n {
			return fmt.Errorf("%s takes %s", args[0], names)
		}
		return nil
	}
	switch args[0] {
	case "show":
		if err := want(0, "no arguments"); err != nil {
			return "", err
		}
		return nw.layout(), nil
	case "partition":
		if err := want(2, "two sites or nodes"); err != nil {
			return "", err
		}
		a, b, err := nw.hostsOf2(args[1], args[2])
		if err != nil {
			return "", err
		}
		if err := nw.lab.Partition(a, b); err != nil {
			return "", err
		}
		return fmt.Sprintf("cut %s from %s (%s)", args[1], args[2], nw.cutsLine()), nil
	case "isolate":
		if err := want(1, "a node or a site"); err != nil {
			return "", err
		}
		a, err := nw.hostsOf(args[1])
		if err != nil {
			return "", err
		}
		var others []*netlab.Host
		for _, h := range nw.lab.Hosts() {
			if !containsHost(a, h) {
				others = append(others, h)
			}
		}
		if err := nw.lab.Partition(a, others); err != nil {
			return "", err
		}
		return fmt.Sprintf("cut %s from every other node (%s)", args[1], nw.cutsLine()), nil
	case "heal":
		switch len(args) {
		case 1:
			if err := nw.lab.HealAll(); err != nil {
				return "", err
			}
			return "healed every cut; the WAN stays", nil
		case 3:
			a, b, err := nw.hostsOf2(args[1], args[2])
			if err != nil {
				return "", err
			}
			if err := nw.lab.Heal(a, b); err != nil {
				return "", err
			}
			return fmt.Sprintf("healed %s|%s (%s)", args[1], args[2], nw.cutsLine()), nil
		}
		return "", errors.New("heal takes no arguments (every cut) or two sites or nodes")
	case "wan":
		if err := want(3, "two sites and a WAN (DELAY[±JITTER][,LOSS%], or off)"); err != nil {
			return "", err
		}
		a, b := nw.siteOf[args[1]], nw.siteOf[args[2]]
		if a == nil || b == nil || a == b {
			return "", fmt.Errorf("wan takes two different sites of %s", nw.siteNames())
		}
		var w netlab.WAN
		if args[3] != "off" {
			var err error
			if w, err = netlab.ParseWAN(args[3]); err != nil {
				return "", err
			}
		}
		if err := nw.lab.SetWAN(a, b, w); err != nil {
			return "", err
		}
		return "WAN " + nw.wanLine(), nil
	case "kill", "kill-site":
		what := "a node or a site"
		if args[0] == "kill-site" {
			what = "a site"
		}
		if err := want(1, what); err != nil {
			return "", err
		}
		if args[0] == "kill-site" && nw.siteOf[args[1]] == nil {
			return "", fmt.Errorf("no site %q: the sites are %s", args[1], nw.siteNames())
		}
		nodes, err := nw.nodesOf(args[1])
		if err != nil {
			return "", err
		}
		var done []string
		for _, n := range nodes {
			if p := n.Process(); p != nil && !p.Exited() {
				n.killed.Store(true)
				if err := p.Signal(syscall.SIGKILL); err == nil {
					done = append(done, fmt.Sprintf("%s (pid %d)", n.Name, p.Pid()))
				}
			}
		}
		if len(done) == 0 {
			return fmt.Sprintf("no agent of %s runs", args[1]), nil
		}
		return "SIGKILL sent to " + strings.Join(done, ", ") + "; 'haven dev net start " + args[1] + "' starts them again", nil
	case "start":
		if err := want(1, "a node or a site"); err != nil {
			return "", err
		}
		nodes, err := nw.nodesOf(args[1])
		if err != nil {
			return "", err
		}
		var done []string
		for _, n := range nodes {
			if n.Running() {
				continue
			}
			if err := nw.c.start(n); err != nil {
				return strings.Join(done, ", "), err
			}
			done = append(done, fmt.Sprintf("%s (pid %d)", n.Name, n.Process().Pid()))
		}
		if len(done) == 0 {
			return fmt.Sprintf("every agent of %s runs already", args[1]), nil
		}
		return "started " + strings.Join(done, ", "), nil
	}
	return "", fmt.Errorf("unknown command %q", args[0])
}

// hostsOf resolves a site (all its hosts) or a node.
func (nw *devNetwork) hostsOf(name string) ([]*netlab.Host, error) {
	if s := nw.siteOf[name]; s != nil {
		return s.Hosts(), nil
	}
	if h := nw.hostOf[name]; h != nil {
		return []*netlab.Host{h}, nil
	}
	return nil, fmt.Errorf("no site or node %q: the sites are %s, the nodes %s", name, nw.siteNames(), nw.nodeNames())
}

func (nw *devNetwork) hostsOf2(x, y string) (a, b []*netlab.Host, err error) {
	if a, err = nw.hostsOf(x); err != nil {
		return nil, nil, err
	}
	if b, err = nw.hostsOf(y); err != nil {
		return nil, nil, err
	}
	for _, h := range a {
		if containsHost(b, h) {
			return nil, nil, fmt.Errorf("%s and %s overlap: nothing to cut", x, y)
		}
	}
	return a, b, nil
}

func (nw *devNetwork) nodesOf(name string) ([]*devNode, error) {
	hosts, err := nw.hostsOf(name)
	if err != nil {
		return nil, err
	}
	var nodes []*devNode
	for _, n := range nw.c.nodes {
		if containsHost(hosts, nw.hostOf[n.Name]) {
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

func containsHost(hs []*netlab.Host, h *netlab.Host) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}

func (nw *devNetwork) siteNames() string {
	var names []string
	for _, s := range nw.sites {
		names = append(names, s.Name())
	}
	return strings.Join(names, ", ")
}

func (nw *devNetwork) nodeNames() string {
	var names []string
	for _, n := range nw.c.nodes {
		names = append(names, n.Name)
	}
	return strings.Join(names, ", ")
}

// wanLine lists the WAN links, or says there are none.
func (nw *devNetwork) wanLine() string {
	var links []string
	for _, k := range nw.lab.Links() {
		links = append(links, fmt.Sprintf("%s|%s %s", k.A.Name(), k.B.Name(), k.WAN))
	}
	if len(links) == 0 {
		return "none (sites are joined at the speed of this machine)"
	}
	return strings.Join(links, "; ")
}

// cutsLine lists the cut pairs of nodes, or says there are none.
func (nw *devNetwork) cutsLine() string {
	var cuts []string
	for _, c := range nw.lab.Cuts() {
		cuts = append(cuts, c[0].Name()+"|"+c[1].Name())
	}
	if len(cuts) == 0 {
		return "cuts: none"
	}
	return "cuts: " + strings.Join(cuts, " ")
}

// layout describes the lab: sites, nodes with their addresses, namespaces,
// forwarded API and pid, the WAN and the cuts.
func (nw *devNetwork) layout() string {
	var b strings.Builder
	fmt.Fprintf(&b, "network lab %s: router namespace %s, one namespace per node\n\n", nw.lab.Prefix(), nw.lab.Router())
	tw := newTable(&b)
	fmt.Fprintln(tw, "SITE\tSUBNET\tNODE\tROLE\tADDRESS\tNAMESPACE\tAPI (forwarded)\tPID")
	for _, n := range nw.c.nodes {
		h := nw.hostOf[n.Name]
		role := "data"
		if n.cfg.Witness {
			role = "witness"
		}
		pid := "-"
		if p := n.Process(); p != nil {
			pid = fmt.Sprint(p.Pid())
			if p.Exited() {
				pid = "exited"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Site().Name(), h.Site().Subnet(), n.Name, role, h.IP(), h.Namespace(), n.api, pid)
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nWAN: %s\n%s", nw.wanLine(), nw.cutsLine())
	if pids := nw.lab.DelayerPids(); len(pids) > 0 {
		fmt.Fprintf(&b, "\ndelay programs (haven lab-wan): pids %s", strings.Trim(fmt.Sprint(pids), "[]"))
	}
	return b.String()
}

// hints are the lines to try on the network.
func (nw *devNetwork) hints() string {
	var b strings.Builder
	a, other := nw.sites[0].Name(), nw.sites[len(nw.sites)-1].Name()
	if len(nw.sites) > 2 {
		other = nw.sites[1].Name()
	}
	n1 := nw.c.nodes[0].Name
	fmt.Fprintf(&b, "The network (lab %s), from another terminal, as root:\n\n", nw.lab.Prefix())
	tw := newTable(&b)
	for _, l := range [][2]string{
		{"go run ./cmd/haven dev net show", "sites, nodes, pids, the WAN, the cuts"},
		{fmt.Sprintf("go run ./cmd/haven dev net partition %s %s", a, other), fmt.Sprintf("cut %s from %s; each still reaches the rest", a, other)},
		{"go run ./cmd/haven dev net isolate " + n1, "cut one node (or a site) from all others"},
		{"go run ./cmd/haven dev net heal", "every cut healed; the WAN stays"},
		{fmt.Sprintf("go run ./cmd/haven dev net wan %s %s 50ms±5ms,1%%", a, other), "another WAN between two sites ('off': none)"},
		{"go run ./cmd/haven dev net kill-site " + other, fmt.Sprintf("SIGKILL every agent of %s: a site lost", other)},
		{"go run ./cmd/haven dev net start " + other, "its agents again"},
		{fmt.Sprintf("ip netns exec %s ping %s", nw.lab.Router(), nw.hostOf[n1].IP()), "the router namespace reaches every node"},
	} {
		fmt.Fprintf(tw, "  %s\t# %s\n", l[0], l[1])
	}
	tw.Flush()
	b.WriteString("\n")
	return b.String()
}
