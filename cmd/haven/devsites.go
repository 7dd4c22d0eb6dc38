package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/netlab"
)

// A stretch cluster in haven dev (--sites): one network namespace per
// agent, a routed subnet per site, a WAN between every two sites, all made
// by internal/netlab (Linux, root). The portable part is here: the flags,
// the layout and the agents' configs; devlab_linux.go runs it.

const (
	// devWitnessSite is the site of the witness --witness adds.
	devWitnessSite = "w"
	// devMaxSiteNodes bounds one site's agents; with devMaxNodes, the
	// whole cluster's.
	devMaxSiteNodes = 16
	devMaxNodes     = 64
)

// devSiteRE is what a site may be called: a node name's first part and a
// namespace name's last, so short, and a valid agent site.
var devSiteRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$`)

// devSite is one site of a stretch dev cluster.
type devSite struct {
	name    string
	nodes   int
	witness bool // the site of --witness: one witness agent
}

// parseSites reads --sites: NAME:COUNT, comma separated, e.g. "A:2,B:2".
// Names are lowercased (agents' sites are lowercase).
func parseSites(s string) ([]devSite, error) {
	var sites []devSite
	seen := map[string]bool{}
	for entry := range strings.SplitSeq(s, ",") {
		name, count, ok := strings.Cut(strings.TrimSpace(entry), ":")
		if !ok {
			return nil, fmt.Errorf("--sites %q: %q is not NAME:COUNT (e.g. A:2,B:2)", s, entry)
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if !devSiteRE.MatchString(name) {
			return nil, fmt.Errorf("--sites %q: site %q: want 1-16 letters, digits or '-', starting and ending with a letter or digit", s, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("--sites %q: site %s given twice (names are not case-sensitive)", s, name)
		}
		seen[name] = true
		n, err := strconv.Atoi(strings.TrimSpace(count))
		if err != nil || n < 1 || n > devMaxSiteNodes {
			return nil, fmt.Errorf("--sites %q: site %s: %q agents: want 1 to %d", s, name, count, devMaxSiteNodes)
		}
		sites = append(sites, devSite{name: name, nodes: n})
	}
	return sites, nil
}

// devLayout is the sites of --sites, plus the witness's when asked, after
// the checks that need them all: the witness's site name is free, no site
// is called like a node (the net commands take either), and the total is
// bounded.
func devLayout(sites []devSite, witness bool) ([]devSite, error) {
	if witness {
		for _, s := range sites {
			if s.name == devWitnessSite {
				return nil, fmt.Errorf("--sites: site %s is the witness's with --witness; call it otherwise", devWitnessSite)
			}
		}
		sites = append(sites, devSite{name: devWitnessSite, nodes: 1, witness: true})
	}
	total := 0
	names := map[string]bool{}
	for _, s := range sites {
		total += s.nodes
		names[s.name] = true
	}
	if total > devMaxNodes {
		return nil, fmt.Errorf("--sites: %d agents; at most %d", total, devMaxNodes)
	}
	for _, s := range sites {
		for i := 1; i <= s.nodes; i++ {
			if n := devSiteNodeName(s.name, i); names[n] {
				return nil, fmt.Errorf("--sites: site %s is also the name of a node of site %s; call it otherwise", n, s.name)
			}
		}
	}
	return sites, nil
}

func devSiteNodeName(site string, i int) string { return site + "-" + strconv.Itoa(i) }

// devAgent is one agent of a stretch dev cluster: its name, its site and
// its address in the lab.
type devAgent struct {
	name, site string
	witness    bool
	ip         string
}

// devAgents lists the agents of a layout, site by site; ip gives the
// address of agent i (from 1) of site s (from 0) in the lab.
func devAgents(sites []devSite, ip func(s, i int) string) []devAgent {
	var hosts []devAgent
	for si, s := range sites {
		for i := 1; i <= s.nodes; i++ {
			hosts = append(hosts, devAgent{name: devSiteNodeName(s.name, i), site: s.name, witness: s.witness, ip: ip(si, i)})
		}
	}
	return hosts
}

// devSiteConfig is the config of hosts[i] in a stretch cluster under dir.
// Each agent runs in a namespace of its own, so all of them use the
// default ports on their own addresses; every agent joins every agent's
// WAN gossip address, and the cluster bootstraps once all of them see each
// other. Timings are the dev cluster's tightened ones, which the
// integration tests run over 30 ± 10 ms and 2 % loss without a false
// failover.
func devSiteConfig(dir string, hosts []devAgent, i int) agent.Config {
	h := hosts[i]
	cfg := agent.Default().Tightened()
	cfg.Name = h.name
	cfg.Site = h.site
	cfg.Witness = h.witness
	cfg.DataDir = filepath.Join(dir, cfg.Name, "data")
	cfg.BindAddr = h.ip
	cfg.Join = make([]string, 0, len(hosts))
	for _, o := range hosts {
		cfg.Join = append(cfg.Join, fmt.Sprintf("%s:%d", o.ip, cfg.Ports.GossipWAN))
	}
	cfg.BootstrapExpect = len(hosts)
	cfg.LogLevel = "info"
	cfg.SharedDir = filepath.Join(dir, "shared")
	cfg.Capacity = agent.Capacity{CPUMillis: 16000, MemoryBytes: 64 << 30}
	// See devInsecure.
	cfg.TLS.Plaintext = true
	cfg.Gossip.Plaintext = true
	cfg.ACL.Enabled = false
	return cfg
}

// parseLabFlags reads --sites, --witness and --wan into o.layout and o.wan;
// without --sites the other two are refused, and --nodes with it.
func (o *devOptions) parseLabFlags(nodesSet bool) error {
	if o.sites == "" {
		switch {
		case o.witness:
			return errors.New("--witness needs --sites (the witness gets a site of its own)")
		case o.wanSpec != "":
			return errors.New("--wan needs --sites (it is the link between sites)")
		}
		return nil
	}
	if nodesSet {
		return errors.New("--nodes and --sites exclude each other: --sites says how many agents each site has")
	}
	sites, err := parseSites(o.sites)
	if err != nil {
		return err
	}
	if o.layout, err = devLayout(sites, o.witness); err != nil {
		return err
	}
	if o.wanSpec != "" {
		if len(o.layout) < 2 {
			return fmt.Errorf("--wan %q: one site has no WAN; give --sites two or more, or --witness", o.wanSpec)
		}
		if o.wan, err = netlab.ParseWAN(o.wanSpec); err != nil {
			return fmt.Errorf("--wan: %w", err)
		}
	}
	return nil
}
