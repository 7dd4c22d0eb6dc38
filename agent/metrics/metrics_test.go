package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
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
	m.Failover("restarted", 4*time.Second)
	m.Failover("restarted", 6*time.Second)
	m.Failover("failed", 5*time.Second)
	m.Fenced()
	m.MoveEnded("MOVE_KIND_LIVE", "OPERATION_OUTCOME_COMPLETED", 1500*time.Millisecond)
	m.MoveEnded("MOVE_KIND_QUICK", "OPERATION_OUTCOME_ROLLED_BACK", 3*time.Second)
	m.VMFrozen("lease_expired")
	m.VMFrozen("withheld")
	m.VMThawed()
	m.AdmissionRefused("start")
	m.Renewals(true, 3)
	m.Verified(3 * time.Millisecond)
	m.Renewals(false, 1)
	m.Leadership(true)
	m.Applied("create-group")
	groups := map[string]float64{"online": 4}
	m.Observe([]Gauge{{Name: "haven_raft_leader", Help: "h", Value: func() float64 { return 1 }}},
		[]GaugeVec{{Name: "haven_groups", Help: "h", Labels: []string{"state"}, Values: func() []Sample {
			return Counts(groups, "online", "failed")
		}}, {Name: "haven_members", Help: "h", Labels: []string{"state", "site"}, Values: func() []Sample {
			return []Sample{{Labels: []string{"alive", "a"}, Value: 2}, {Labels: []string{"dead", "b"}, Value: 1}}
		}}},
		[]Gauge{{Name: "haven_events_dropped_total", Help: "h", Value: func() float64 { return 7 }}})
	groups["online"] = 5
	text := scrape(t, m)
	wantLines(t, text,
		`haven_raft_commits_total{result="ok"} 1`, `haven_raft_commits_total{result="refused"} 1`, `haven_raft_commits_total{result="error"} 1`,
		`haven_raft_commit_duration_seconds_count 2`,
		`haven_failovers_total{outcome="restarted"} 2`, `haven_failovers_total{outcome="failed"} 1`,
		`haven_failover_duration_seconds_count{outcome="restarted"} 2`, `haven_failover_duration_seconds_sum{outcome="restarted"} 10`,
		`haven_failover_duration_seconds_bucket{outcome="restarted",le="4"} 1`, `haven_failover_duration_seconds_bucket{outcome="restarted",le="7.5"} 2`,
		`haven_fences_total 1`,
		`haven_moves_total{outcome="completed"} 1`, `haven_moves_total{outcome="rolled_back"} 1`,
		`haven_move_duration_seconds_count{kind="live",outcome="completed"} 1`, `haven_move_duration_seconds_sum{kind="live",outcome="completed"} 1.5`,
		`haven_move_duration_seconds_count{kind="quick",outcome="rolled_back"} 1`,
		`haven_vm_freezes_total{cause="lease_expired"} 1`, `haven_vm_freezes_total{cause="withheld"} 1`, `haven_vm_thaws_total 1`,
		`haven_members{site="a",state="alive"} 2`, `haven_members{site="b",state="dead"} 1`,
		`haven_admission_refusals_total{call="start"} 1`,
		`haven_lease_renewals_total{result="granted"} 3`, `haven_lease_renewals_total{result="refused"} 1`,
		`haven_lease_verify_duration_seconds_count 1`, `haven_lease_verify_duration_seconds_bucket{le="0.002"} 0`, `haven_lease_verify_duration_seconds_bucket{le="0.004"} 1`,
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
	m.Failover("restarted", time.Second)
	m.Fenced()
	m.MoveEnded("live", "completed", time.Second)
	m.VMFrozen("lease_expired")
	m.VMThawed()
	m.BridgeRaft()()
	m.AdmissionRefused("create")
	m.Renewals(true, 1)
	m.Verified(time.Second)
	m.Leadership(false)
	m.Applied("x")
	m.Observe(nil, nil, nil)
}

// raftCalls makes the calls raft and raft-boltdb make, through the same
// package-level functions.
func raftCalls() {
	gometrics.MeasureSince([]string{"raft", "commitTime"}, time.Now().Add(-3*time.Millisecond))
	gometrics.MeasureSince([]string{"raft", "fsm", "apply"}, time.Now().Add(-time.Millisecond))
	gometrics.AddSample([]string{"raft", "leader", "lastContact"}, 40)
	gometrics.MeasureSinceWithLabels([]string{"raft", "replication", "appendEntries", "rpc"}, time.Now(), []gometrics.Label{{Name: "peer_id", Value: "n2"}})
	gometrics.MeasureSince([]string{"raft", "snapshot", "persist"}, time.Now())
	gometrics.MeasureSince([]string{"raft", "boltdb", "storeLogs"}, time.Now())
	gometrics.IncrCounter([]string{"raft", "apply"}, 1)
	gometrics.IncrCounter([]string{"raft", "apply"}, 1)
	gometrics.IncrCounter([]string{"raft", "state", "leader"}, 1)
	gometrics.IncrCounter([]string{"raft", "transition", "heartbeat_timeout"}, 1)
	gometrics.SetGauge([]string{"raft", "peers"}, 3)
	// Legacy per-peer keys and keys nobody asked for are dropped.
	gometrics.MeasureSince([]string{"raft", "replication", "appendEntries", "rpc", "n2"}, time.Now())
	gometrics.IncrCounter([]string{"raft", "boltdb", "txstats", "spill"}, 1)
}

// Raft's own metrics reach the scrape under Prometheus names, in seconds;
// a bridge that stopped feeds nothing more.
func TestRaftBridge(t *testing.T) {
	m := New()
	stop := m.BridgeRaft()
	raftCalls()
	text := scrape(t, m)
	wantLines(t, text,
		`haven_raft_commit_time_seconds_count 1`,
		`haven_raft_fsm_apply_seconds_count 1`,
		`haven_raft_leader_last_contact_seconds_sum 0.04`,
		`haven_raft_replication_append_entries_seconds_count{peer_id="n2"} 1`,
		`haven_raft_snapshot_persist_seconds_count 1`,
		`haven_raft_boltdb_store_logs_seconds_count 1`,
		`haven_raft_apply_total 2`,
		`haven_raft_state_changes_total{state="leader"} 1`,
		`haven_raft_transitions_total{cause="heartbeat_timeout"} 1`,
		`haven_raft_peers 3`,
	)
	if v := sampleValue(t, text, "haven_raft_commit_time_seconds_sum"); v < 0.003 || v > 1 {
		t.Errorf("haven_raft_commit_time_seconds_sum = %v, want seconds (3 ms measured)", v)
	}
	var samples []string
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, "#") {
			samples = append(samples, l)
		}
	}
	for _, bad := range []string{"commitTime", "n2_", "txstats", "spill"} {
		if strings.Contains(strings.Join(samples, "\n"), bad) {
			t.Errorf("the scrape has %q: a raft key passed through unmapped", bad)
		}
	}
	stop()
	raftCalls()
	wantLines(t, scrape(t, m), `haven_raft_apply_total 2`)
}

func sampleValue(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in the scrape", series)
	return 0
}

// Every name in the registry follows Prometheus's conventions (snake case,
// base units, _total counters, help text), as promlint checks them: every
// metric this package defines, raft's bridged ones, with a value each so
// that each family is gathered.
func TestPromlint(t *testing.T) {
	m := New()
	defer m.BridgeRaft()()
	// Every key the bridge maps, once.
	for _, tm := range raftTimers {
		gometrics.AddSampleWithLabels(strings.Split(tm.key, "."), 1, []gometrics.Label{{Name: "peer_id", Value: "n2"}})
	}
	for key := range raftCounters {
		gometrics.IncrCounter(strings.Split(key, "."), 1)
	}
	for key := range raftGauges {
		gometrics.SetGauge(strings.Split(key, "."), 1)
	}
	m.Commit(time.Millisecond, false, nil)
	m.Applied("create-group")
	m.Leadership(true)
	m.Failover("restarted", time.Second)
	m.Fenced()
	m.MoveEnded("live", "completed", time.Second)
	m.AdmissionRefused("start")
	m.Renewals(true, 1)
	m.Verified(time.Millisecond)
	m.Renewed(time.Millisecond, time.Second, true)
	m.Renewed(time.Millisecond, -time.Second, true)
	m.VMFrozen("lease_expired")
	m.VMThawed()
	_, _ = m.UnaryInterceptor(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"}, func(context.Context, any) (any, error) { return nil, nil })
	mfs, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	haven := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "haven_") {
			haven++
		}
	}
	// Every family above was gathered: a family left empty would escape
	// the lint.
	if want := 19 + len(raftTimers) + 5 + len(raftGauges); haven != want {
		t.Errorf("%d haven_ families gathered, want %d", haven, want)
	}
}
