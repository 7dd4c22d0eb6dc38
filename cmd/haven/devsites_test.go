package main

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/netlab"
)

func TestParseSites(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []devSite
	}{
		{"A:2,B:2", []devSite{{name: "a", nodes: 2}, {name: "b", nodes: 2}}},
		{"a:1", []devSite{{name: "a", nodes: 1}}},
		{" east : 3 , West-2:16", []devSite{{name: "east", nodes: 3}, {name: "west-2", nodes: 16}}},
	} {
		got, err := parseSites(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseSites(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, msg string }{
		{"", "not NAME:COUNT"},
		{"A", "not NAME:COUNT"},
		{"A:2,", "not NAME:COUNT"},
		{"A:0", "want 1 to 16"},
		{"A:17", "want 1 to 16"},
		{"A:two", "want 1 to 16"},
		{"A:2,a:1", "given twice"},
		{"-a:1", "letters, digits"},
		{"a-:1", "letters, digits"},
		{"a_b:1", "letters, digits"},
		{":1", "letters, digits"},
		{"abcdefghijklmnopq:1", "letters, digits"},
	} {
		if _, err := parseSites(tc.in); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("parseSites(%q): error %v, want one saying %q", tc.in, err, tc.msg)
		}
	}
}

func TestDevLayout(t *testing.T) {
	got, err := devLayout([]devSite{{name: "a", nodes: 2}, {name: "b", nodes: 2}}, true)
	want := []devSite{{name: "a", nodes: 2}, {name: "b", nodes: 2}, {name: "w", nodes: 1, witness: true}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("with --witness: %+v, %v; want %+v", got, err, want)
	}
	if got, err := devLayout([]devSite{{name: "w", nodes: 1}}, false); err != nil || len(got) != 1 {
		t.Errorf("a site w without --witness: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		sites   []devSite
		witness bool
		msg     string
	}{
		{[]devSite{{name: "a", nodes: 1}, {name: "w", nodes: 1}}, true, "the witness's"},
		{[]devSite{{name: "a", nodes: 2}, {name: "a-1", nodes: 1}}, false, "site a-1 is also the name of a node of site a"},
		{[]devSite{{name: "a", nodes: 16}, {name: "b", nodes: 16}, {name: "c", nodes: 16}, {name: "d", nodes: 16}}, true, "65 agents"},
	} {
		if _, err := devLayout(tc.sites, tc.witness); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("devLayout(%+v, %v): error %v, want one saying %q", tc.sites, tc.witness, err, tc.msg)
		}
	}
}

func TestParseLabFlags(t *testing.T) {
	wan := netlab.WAN{Delay: 30 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.02}
	for _, tc := range []struct {
		o        devOptions
		nodesSet bool
		count    int
		wan      netlab.WAN
	}{
		{devOptions{basePort: 17000, nodes: 3}, true, 3, netlab.WAN{}},
		{devOptions{basePort: 17000, nodes: 3, sites: "A:2,B:2", witness: true, wanSpec: "30ms±10ms,2%"}, false, 5, wan},
		{devOptions{basePort: 17000, nodes: 3, sites: "A:2,B:2", witness: true, wanSpec: "30ms+-10ms,2%"}, false, 5, wan},
		{devOptions{basePort: 17000, nodes: 3, sites: "a:1,b:1", wanSpec: "20ms"}, false, 2, netlab.WAN{Delay: 20 * time.Millisecond}},
		{devOptions{basePort: 17000, nodes: 3, sites: "a:3"}, false, 3, netlab.WAN{}},
		{devOptions{basePort: 17000, nodes: 3, sites: "a:1", witness: true, wanSpec: "5%"}, false, 2, netlab.WAN{Loss: 0.05}},
	} {
		o := tc.o
		if err := o.parseLabFlags(tc.nodesSet); err != nil {
			t.Errorf("%+v: %v", tc.o, err)
			continue
		}
		if o.count() != tc.count || o.wan != tc.wan {
			t.Errorf("%+v: %d agents, WAN %v; want %d, %v", tc.o, o.count(), o.wan, tc.count, tc.wan)
		}
		if err := o.validate(); err != nil {
			t.Errorf("%+v: validate: %v", tc.o, err)
		}
	}
	for _, tc := range []struct {
		o        devOptions
		nodesSet bool
		msg      string
	}{
		{devOptions{basePort: 17000, nodes: 3, witness: true}, false, "--witness needs --sites"},
		{devOptions{basePort: 17000, nodes: 3, wanSpec: "30ms"}, false, "--wan needs --sites"},
		{devOptions{nodes: 5, sites: "a:2"}, true, "--nodes and --sites exclude each other"},
		{devOptions{basePort: 17000, nodes: 3, sites: "a:2", wanSpec: "30ms"}, false, "one site has no WAN"},
		{devOptions{basePort: 17000, nodes: 3, sites: "a:2,b:2", wanSpec: "30ms±40ms"}, false, "exceeds delay"},
		{devOptions{basePort: 17000, nodes: 3, sites: "a:2,b:2", wanSpec: "30"}, false, "--wan: WAN \"30\""},
		{devOptions{basePort: 17000, nodes: 3, sites: "a:2,,b:2"}, false, "not NAME:COUNT"},
	} {
		o := tc.o
		if err := o.parseLabFlags(tc.nodesSet); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: error %v, want one saying %q", tc.o, err, tc.msg)
		}
	}
	// The ports of the forwarders must fit, as the loopback cluster's do.
	o := devOptions{nodes: 3, basePort: 65100, sites: "a:16,b:16,c:16"}
	if err := o.parseLabFlags(false); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "--base-port 65100") {
		t.Errorf("48 agents from port 65100: %v", err)
	}
}

func TestDevSiteConfig(t *testing.T) {
	layout, err := devLayout([]devSite{{name: "a", nodes: 2}, {name: "b", nodes: 1}}, true)
	if err != nil {
		t.Fatal(err)
	}
	hosts := devAgents(layout, func(s, i int) string { return fmt.Sprintf("10.77.%d.%d", s+1, i+1) })
	want := []devAgent{
		{name: "a-1", site: "a", ip: "10.77.1.2"},
		{name: "a-2", site: "a", ip: "10.77.1.3"},
		{name: "b-1", site: "b", ip: "10.77.2.2"},
		{name: "w-1", site: "w", witness: true, ip: "10.77.3.2"},
	}
	if !reflect.DeepEqual(hosts, want) {
		t.Fatalf("agents %+v, want %+v", hosts, want)
	}
	join := []string{"10.77.1.2:7947", "10.77.1.3:7947", "10.77.2.2:7947", "10.77.3.2:7947"}
	tight := agent.Default().Tightened()
	for i, h := range want {
		cfg := devSiteConfig("/d", hosts, i)
		if cfg.Name != h.name || cfg.Site != h.site || cfg.Witness != h.witness || cfg.BindAddr != h.ip || cfg.DataDir != "/d/"+h.name+"/data" {
			t.Errorf("%s: name %s site %s witness %v bind %s data %s", h.name, cfg.Name, cfg.Site, cfg.Witness, cfg.BindAddr, cfg.DataDir)
		}
		if !reflect.DeepEqual(cfg.Join, join) || cfg.BootstrapExpect != len(want) {
			t.Errorf("%s: join %v, bootstrap_expect %d; want %v, %d", h.name, cfg.Join, cfg.BootstrapExpect, join, len(want))
		}
		// Each agent has a namespace of its own: the default ports.
		if cfg.Ports != agent.Default().Ports || cfg.SharedDir != "/d/shared" {
			t.Errorf("%s: ports %+v, shared %s", h.name, cfg.Ports, cfg.SharedDir)
		}
		if cfg.Raft != tight.Raft || cfg.Gossip.SameSite != tight.Gossip.SameSite || cfg.Gossip.CrossSite != tight.Gossip.CrossSite || cfg.Lease != tight.Lease {
			t.Errorf("%s: timings are not the dev cluster's tightened ones", h.name)
		}
		if !cfg.Gossip.Plaintext {
			t.Errorf("%s: gossip is not plaintext: a dev agent would refuse to start without a key", h.name)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: Validate: %v", h.name, err)
		}
	}
}
