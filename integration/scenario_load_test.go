package integration

import (
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// loadStats are what the clients of a concurrency run measured: the code
// of every attempt (retries included) and the latency of every request
// that got a definite answer, from its first attempt to that answer.
type loadStats struct {
	mu            sync.Mutex
	codes         map[codes.Code]int
	writes, reads []time.Duration
	// elapsed is the clients' time, from the first request to the last.
	elapsed time.Duration
}

func newLoadStats() *loadStats { return &loadStats{codes: map[codes.Code]int{}} }

func (s *loadStats) attempt(c codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[c]++
}

func (s *loadStats) answered(read bool, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if read {
		s.reads = append(s.reads, d)
	} else {
		s.writes = append(s.writes, d)
	}
}

// rate is the answered requests per second.
func (s *loadStats) rate() float64 {
	return float64(len(s.writes)+len(s.reads)) / s.elapsed.Seconds()
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// String is one line: throughput, latency and the attempts by code.
func (s *loadStats) String() string {
	total := 0
	for _, n := range s.codes {
		total += n
	}
	var byCode []string
	for c, n := range s.codes {
		byCode = append(byCode, fmt.Sprintf("%s %d (%.2f%%)", c, n, 100*float64(n)/float64(total)))
	}
	sort.Strings(byCode)
	return fmt.Sprintf("%.0f requests/s; writes p50 %s p99 %s; reads p50 %s p99 %s; %d attempts: %s",
		s.rate(), percentile(s.writes, .5).Round(time.Millisecond), percentile(s.writes, .99).Round(time.Millisecond),
		percentile(s.reads, .5).Round(time.Millisecond), percentile(s.reads, .99).Round(time.Millisecond),
		total, strings.Join(byCode, ", "))
}

var (
	loadClients  = flag.Int("load.clients", 50, "concurrent clients of the load scenario")
	loadDuration = flag.Duration("load.duration", 60*time.Second, "how long the load scenario's clients send requests")
)

// TestScenarioLoad is the load test: fifty clients create, start, stop,
// delete and read groups for a minute against a three-node cluster whose
// leader is SIGKILLed and restarted half way, checked as
// TestConcurrentClientsLinearizable checks (every acknowledged write
// present, none twice, the history linearizable), first in plaintext and
// then with mutual TLS and tokens, alternating, -runs times each. It
// prints each run's throughput, latency and errors by code, the medians,
// and the secure runs' cost as ratios.
func TestScenarioLoad(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make load)")
	}
	binary(t, "haven") // build outside the timed part
	type variant struct {
		name string
		opts []option
	}
	variants := []variant{{name: "plaintext"}, {name: "mTLS+tokens", opts: securedCluster(t)}}
	rates := map[string][]float64{}
	p50s, p99s := map[string][]time.Duration{}, map[string][]time.Duration{}
	for run := 1; run <= *scenarioRuns; run++ {
		for _, v := range variants {
			t.Run(fmt.Sprintf("%s-%d", v.name, run), func(t *testing.T) {
				r := runConcurrency(t, *loadClients, *loadDuration, v.opts...)
				t.Logf("scenario load %s run %d (%d clients, %s, leader SIGKILLed at +%s): %s",
					v.name, run, *loadClients, *loadDuration, ms(r.killedAt), r.stats)
				rates[v.name] = append(rates[v.name], r.stats.rate())
				p50s[v.name] = append(p50s[v.name], percentile(r.stats.writes, .5))
				p99s[v.name] = append(p99s[v.name], percentile(r.stats.writes, .99))
			})
		}
	}
	for _, v := range variants {
		t.Logf("scenario load %s: median of %d runs: %.0f requests/s, writes p50 %s p99 %s", v.name, len(rates[v.name]),
			medianF(rates[v.name]), median(p50s[v.name]).Round(time.Millisecond), median(p99s[v.name]).Round(time.Millisecond))
	}
	plain, secure := variants[0].name, variants[1].name
	if len(rates[plain]) > 0 && len(rates[secure]) > 0 {
		t.Logf("scenario load cost of %s: throughput %.2fx of plaintext, write p50 %.2fx, write p99 %.2fx", secure,
			medianF(rates[secure])/medianF(rates[plain]),
			float64(median(p50s[secure]))/float64(median(p50s[plain])),
			float64(median(p99s[secure]))/float64(median(p99s[plain])))
	}
}

// securedCluster is how a real cluster runs: mutual TLS on every port,
// gossip encrypted, and access control (every client call carries the
// admin token, checked by the interceptor and audited).
func securedCluster(t *testing.T) []option {
	pki := newTestPKI(t, filepath.Join(t.TempDir(), "tls"), "load")
	return []option{withTLS(pki), withGossipKey(gossipKey(t)), withACL()}
}
