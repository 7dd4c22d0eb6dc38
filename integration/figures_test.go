package integration

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape returns an agent's /metrics text.
func scrape(t *testing.T, n *node) string {
	t.Helper()
	text, err := tryScrape(n)
	if err != nil {
		t.Fatalf("scrape %s: %v", n.name, err)
	}
	return text
}

// tryScrape is scrape for a caller that can go on without the page: an
// agent on a loaded machine may answer late.
func tryScrape(n *node) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	if n.c.lab != nil {
		// The agent listens inside its host's namespace.
		c.Transport = &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return n.c.lab.DialContext(ctx, addr)
		}}
	}
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/metrics", n.cfg.BindAddr, n.cfg.Ports.Metrics))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// histogram is a Prometheus histogram's cumulative buckets, summed over
// the agents it was read from.
type histogram struct {
	le    []float64 // upper bounds, ascending, +Inf last
	count []float64 // cumulative
}

// addHistogram adds the buckets of name from one agent's /metrics text.
func (h *histogram) add(text, name string) {
	i := 0
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name+`_bucket{le="`)
		if !ok {
			continue
		}
		bound, val, _ := strings.Cut(rest, `"} `)
		le, err1 := strconv.ParseFloat(bound, 64)
		v, err2 := strconv.ParseFloat(val, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if i == len(h.le) {
			h.le = append(h.le, le)
			h.count = append(h.count, 0)
		}
		h.count[i] += v
		i++
	}
}

func (h *histogram) total() float64 {
	if len(h.count) == 0 {
		return 0
	}
	return h.count[len(h.count)-1]
}

// quantile is the upper bound of the bucket that holds quantile q: the
// histogram's own resolution, no interpolation.
func (h *histogram) quantile(q float64) float64 {
	want := q * h.total()
	for i, c := range h.count {
		if c >= want && c > 0 {
			return h.le[i]
		}
	}
	return math.NaN()
}

// lowest is the upper bound of the lowest bucket with an observation: the
// smallest value seen was at most this.
func (h *histogram) lowest() float64 { return h.quantile(0) }

func secs(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	return time.Duration(v * float64(time.Second)).String()
}

// leaseFigures prints, for the leader (which renews with itself), the
// nodes that renew with it across a WAN and those in its own site, the
// renewals' round trip (p50, p99, by
// bucket bound), the least lease headroom seen, and the expiries.
func (c *cluster) leaseFigures(t *testing.T, leader *node) {
	t.Helper()
	for _, path := range []string{"the leader itself", "same-site", "cross-site"} {
		var rtt, room histogram
		expiries, nodes := 0.0, 0
		for _, n := range c.nodes {
			switch {
			case n.cfg.Witness || !n.running():
				continue
			case n == leader:
				if path != "the leader itself" {
					continue
				}
			case path == "the leader itself" || (n.cfg.Site == leader.cfg.Site) != (path == "same-site"):
				continue
			}
			text := scrape(t, n)
			rtt.add(text, "haven_lease_renewal_duration_seconds")
			room.add(text, "haven_lease_headroom_seconds")
			if v, ok := metric(t, n, "haven_lease_expiries_total"); ok {
				expiries += v
			}
			nodes++
		}
		if nodes == 0 {
			continue
		}
		t.Logf("scenario lease %s (%d nodes, lease %s): %.0f renewals, round trip p50 <= %s p99 <= %s max <= %s; least headroom <= %s; expiries %.0f",
			path, nodes, c.nodes[0].cfg.Lease.Duration, rtt.total(), secs(rtt.quantile(0.5)), secs(rtt.quantile(0.99)), secs(rtt.quantile(1)), secs(room.lowest()), expiries)
	}
}

// delayCost is what the lab's WAN delay programs used: CPU seconds and
// packets queued, read before and after a run.
type delayCost struct {
	cpu     time.Duration
	packets float64
}

// readDelayCost reads the CPU time of this lab's delay programs and the
// packets its NFQUEUE rules have sent them.
func (c *cluster) readDelayCost(t *testing.T) delayCost {
	t.Helper()
	d := delayCost{cpu: c.lab.DelayerCPU()}
	router := c.lab.Router()
	out, err := exec.Command("ip", "netns", "exec", router, "iptables", "-w", "-nvxL", "HAVEN_LAB").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables in %s: %v: %s", router, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "NFQUEUE" {
			v, _ := strconv.ParseFloat(f[0], 64)
			d.packets += v
		}
	}
	return d
}

// delayFigures prints the delay programs' cost over a run of length d.
func delayFigures(t *testing.T, from, to delayCost, d time.Duration) {
	cpu := to.cpu - from.cpu
	pps := (to.packets - from.packets) / d.Seconds()
	t.Logf("scenario WAN delay programs: %.0f packets/s delayed, %s CPU over %s (%.1f%% of one core)",
		pps, cpu, d.Round(time.Second), 100*cpu.Seconds()/d.Seconds())
}

// sortedDurations is ds sorted, for printing.
func sortedDurations(ds []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}
