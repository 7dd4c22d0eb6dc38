package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/internal/logging/logtest"
)

// scrape serves m on loopback and returns what Prometheus would read.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	_, body := get(t, serve(t, m, false), "/metrics")
	return body
}

func serve(t *testing.T, m *Metrics, debug bool) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addr, err := m.Serve(ctx, "127.0.0.1:0", debug, logtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func get(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// The profiler is served only when asked for: it exposes internals.
func TestDebugOnlyWhenEnabled(t *testing.T) {
	if code, _ := get(t, serve(t, New(), false), "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("without debug, /debug/pprof/ answered %d, want 404", code)
	}
	code, body := get(t, serve(t, New(), true), "/debug/pprof/")
	if code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("with debug, /debug/pprof/ answered %d: %.200s", code, body)
	}
}

func wantLines(t *testing.T, text string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(text, "\n"+l+"\n") {
			t.Errorf("no line %q in the scrape", l)
		}
	}
}

// What the agent's packages count reaches the scrape under Prometheus
// names, and the gauges read the state at scrape time.
func TestScrape(t *testing.T) {
	m := New()
	m.Commit(3*time.Millisecond, false, nil)
	m.Commit(time.Millisecond, true, nil)
	m.Commit(0, false, errors.New("not the leader"))
	m.Failover("restarted")
	m.Failover("restarted")
	m.Failover("failed")
	m.AdmissionRefused("start")
	m.Renewals(true, 3)
	m.Renewals(false, 1)
	m.Leadership(true)
	m.Applied("create-group")
	groups := map[string]float64{"online": 4}
	m.Observe([]Gauge{{Name: "haven_raft_leader", Help: "h", Value: func() float64 { return 1 }}},
		[]GaugeVec{{Name: "haven_groups", Help: "h", Label: "state", Known: []string{"online", "failed"}, Values: func() map[string]float64 {
			out := map[string]float64{}
			for k, v := range groups {
				out[k] = v
			}
			return out
		}}},
		[]Gauge{{Name: "haven_events_dropped_total", Help: "h", Value: func() float64 { return 7 }}})
	groups["online"] = 5
	text := scrape(t, m)
	wantLines(t, text,
		`haven_raft_commits_total{result="ok"} 1`, `haven_raft_commits_total{result="refused"} 1`, `haven_raft_commits_total{result="error"} 1`,
		`haven_raft_commit_duration_seconds_count 2`,
		`haven_failovers_total{outcome="restarted"} 2`, `haven_failovers_total{outcome="failed"} 1`,
		`haven_admission_refusals_total{call="start"} 1`,
		`haven_lease_renewals_total{result="granted"} 3`, `haven_lease_renewals_total{result="refused"} 1`,
		`haven_leadership_changes_total{change="acquired"} 1`,
		`haven_fsm_applied_total{kind="create-group"} 1`,
		`haven_raft_leader 1`,
		`haven_groups{state="online"} 5`, `haven_groups{state="failed"} 0`,
		`haven_events_dropped_total 7`,
	)
	if !strings.Contains(text, "go_goroutines") || !strings.Contains(text, "process_resident_memory_bytes") {
		t.Error("the Go and process collectors are missing")
	}
}

// The interceptors count every call by method and code.
func TestInterceptorsCountCalls(t *testing.T) {
	m := New()
	info := &grpc.UnaryServerInfo{FullMethod: "/haven.v1.ClusterService/StartGroup"}
	_, _ = m.UnaryInterceptor(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, nil })
	_, _ = m.UnaryInterceptor(context.Background(), nil, info, func(context.Context, any) (any, error) {
		return nil, status.Error(codes.ResourceExhausted, "no room")
	})
	_ = m.StreamInterceptor(nil, nil, &grpc.StreamServerInfo{FullMethod: "/haven.v1.ClusterService/WatchEvents"}, func(any, grpc.ServerStream) error { return nil })
	wantLines(t, scrape(t, m),
		`haven_grpc_requests_total{code="OK",method="/haven.v1.ClusterService/StartGroup"} 1`,
		`haven_grpc_requests_total{code="ResourceExhausted",method="/haven.v1.ClusterService/StartGroup"} 1`,
		`haven_grpc_requests_total{code="OK",method="/haven.v1.ClusterService/WatchEvents"} 1`,
		`haven_grpc_request_duration_seconds_count{method="/haven.v1.ClusterService/StartGroup"} 2`,
	)
}

// A nil *Metrics counts nothing and does not panic: tests and tools run
// the packages without one.
func TestNilCountsNothing(t *testing.T) {
	var m *Metrics
	m.Commit(time.Second, false, nil)
	m.Failover("restarted")
	m.AdmissionRefused("create")
	m.Renewals(true, 1)
	m.Leadership(false)
	m.Applied("x")
	m.Observe(nil, nil, nil)
}
