// Package metrics is what an agent tells Prometheus: one registry per
// agent, served on its own port (Serve), with names in Prometheus style
// (haven_*, seconds and bytes, _total counters). The packages that count
// things call the methods of Metrics; a nil *Metrics counts nothing, so
// tests need none. Gauges that mirror state (members, groups, Raft) are
// read when Prometheus scrapes, from the functions Observe is given.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Metrics holds an agent's registry and its counters.
type Metrics struct {
	reg *prometheus.Registry

	grpcRequests  *prometheus.CounterVec
	grpcDuration  *prometheus.HistogramVec
	commits       *prometheus.CounterVec
	commitLatency prometheus.Histogram
	applied       *prometheus.CounterVec
	leadership    *prometheus.CounterVec
	failovers     *prometheus.CounterVec
	moves         *prometheus.CounterVec
	admissions    *prometheus.CounterVec
	renewals      *prometheus.CounterVec
	verify        prometheus.Histogram
	renewRTT      prometheus.Histogram
	headroom      prometheus.Histogram
	expiries      prometheus.Counter

	failoverDuration *prometheus.HistogramVec
	moveDuration     *prometheus.HistogramVec
	fences           prometheus.Counter
	freezes          *prometheus.CounterVec
	thaws            prometheus.Counter

	raftOnce sync.Once
	raft     *raftMetrics
}

// New returns the metrics of one agent, with Go's and the process's own.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.grpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_grpc_requests_total", Help: "gRPC calls this agent answered, by method and status code.",
	}, []string{"method", "code"})
	m.grpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "haven_grpc_request_duration_seconds", Help: "Time to answer a unary gRPC call, by method.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
	}, []string{"method"})
	m.commits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_raft_commits_total", Help: "Commands this agent committed as leader, by result (ok, refused by the state machine, error).",
	}, []string{"result"})
	m.commitLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "haven_raft_commit_duration_seconds", Help: "Time from proposing a command to its application on the leader.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	m.applied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_fsm_applied_total", Help: "Commands this agent's state machine applied, by kind.",
	}, []string{"kind"})
	m.leadership = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_leadership_changes_total", Help: "Times this agent took or lost the leadership.",
	}, []string{"change"})
	m.moves = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_moves_total", Help: "Moves of running groups this agent, as leader, ended, by outcome (completed, rolled_back, cancelled; completed counts at the commit).",
	}, []string{"outcome"})
	m.moveDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "haven_move_duration_seconds", Help: "Time from a move's start to its commit (completed) or its end, by kind (live, quick) and outcome.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200},
	}, []string{"kind", "outcome"})
	m.failovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_failovers_total", Help: "Groups this agent, as leader, took off a failed node, by outcome (restarted, stopped, failed: nowhere to go).",
	}, []string{"outcome"})
	// From the failed node's last lease grant, not from when the leader
	// decided: the leader acts on the lease's silence, so the decision
	// comes a commit before the restart, and the wait an operator feels
	// is the failover time the lease makes it wait.
	m.failoverDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "haven_failover_duration_seconds", Help: "Time from a failed node's last lease grant (or this leader taking office, if later) to the commit that took its group off it, by outcome.",
		Buckets: []float64{0.5, 1, 2, 3, 4, 5, 7.5, 10, 12.5, 15, 20, 30, 45, 60, 90, 120},
	}, []string{"outcome"})
	m.fences = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haven_fences_total", Help: "Nodes this agent, as leader, found fenced (their lease ran out unrenewed) and took groups off.",
	})
	m.freezes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_vm_freezes_total", Help: "VMs of this node frozen at their lease end, by cause (lease_expired: no grant came in time; withheld: grants went on without the VM's group at its epoch).",
	}, []string{"cause"})
	m.thaws = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haven_vm_thaws_total", Help: "Frozen VMs of this node that a later grant let run again.",
	})
	m.admissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_admission_refusals_total", Help: "Creates and starts this agent, as leader, refused to keep the reserve or for want of room.",
	}, []string{"call"})
	m.renewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haven_lease_renewals_total", Help: "Lease renewals this agent, as leader, answered, by result (granted, refused).",
	}, []string{"result"})
	// A grant waits for the leader to confirm with a quorum that it still
	// leads: when that takes long, every node's renewals do, and guests
	// freeze at their lease end although a leader is there.
	m.verify = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "haven_lease_verify_duration_seconds", Help: "Time this agent, as leader, took to confirm its leadership with a quorum before granting a batch of renewals.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	// The node's own side of its lease: how long a renewal takes, how much
	// of the lease was left when the next grant arrived, and how often
	// none arrived in time (the node froze its groups).
	m.renewRTT = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "haven_lease_renewal_duration_seconds", Help: "Time from sending a lease renewal to its grant, on the renewing node.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	m.headroom = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "haven_lease_headroom_seconds", Help: "Time left on this node's lease when the next grant arrived (0: it had run out).",
		Buckets: []float64{0, 0.1, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20},
	})
	m.expiries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haven_lease_expiries_total", Help: "Times this node's lease ran out before the next grant: its groups froze meanwhile.",
	})
	m.reg.MustRegister(m.grpcRequests, m.grpcDuration, m.commits, m.commitLatency, m.applied, m.leadership,
		m.failovers, m.moves, m.admissions, m.renewals, m.verify, m.renewRTT, m.headroom, m.expiries,
		m.failoverDuration, m.moveDuration, m.fences, m.freezes, m.thaws,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Gauge is a value read at scrape time.
type Gauge struct {
	Name, Help string
	Value      func() float64
}

// GaugeVec is a set of values read at scrape time, one per combination
// of label values.
type GaugeVec struct {
	Name, Help string
	Labels     []string
	// Values lists every series that has a value.
	Values func() []Sample
}

// Sample is one series of a GaugeVec: its label values, in the order of
// the vector's Labels, and its value.
type Sample struct {
	Labels []string
	Value  float64
}

// Counts makes samples of one label's counts, reporting 0 for each value
// of known that counts leaves out: a state nothing is in still shows.
func Counts(counts map[string]float64, known ...string) []Sample {
	out := make([]Sample, 0, len(counts)+len(known))
	for _, k := range known {
		if _, ok := counts[k]; !ok {
			out = append(out, Sample{Labels: []string{k}})
		}
	}
	for k, v := range counts {
		out = append(out, Sample{Labels: []string{k}, Value: v})
	}
	return out
}

// Observe registers gauges that mirror state, and counters kept elsewhere
// (read at scrape time as gauges are).
func (m *Metrics) Observe(gauges []Gauge, vecs []GaugeVec, counters []Gauge) {
	if m == nil {
		return
	}
	for _, g := range gauges {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: g.Name, Help: g.Help}, g.Value))
	}
	for _, c := range counters {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.Name, Help: c.Help}, c.Value))
	}
	for _, v := range vecs {
		m.reg.MustRegister(&vecCollector{v: v, desc: prometheus.NewDesc(v.Name, v.Help, v.Labels, nil)})
	}
}

type vecCollector struct {
	v    GaugeVec
	desc *prometheus.Desc
}

func (c *vecCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *vecCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.v.Values() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, s.Value, s.Labels...)
	}
}

// Commit records one commit by the leader.
func (m *Metrics) Commit(took time.Duration, refused bool, err error) {
	if m == nil {
		return
	}
	switch {
	case err != nil:
		m.commits.WithLabelValues("error").Inc()
		return
	case refused:
		m.commits.WithLabelValues("refused").Inc()
	default:
		m.commits.WithLabelValues("ok").Inc()
	}
	m.commitLatency.Observe(took.Seconds())
}

// Applied counts a command the state machine applied.
func (m *Metrics) Applied(kind string) {
	if m != nil {
		m.applied.WithLabelValues(kind).Inc()
	}
}

// Leadership counts this agent taking (true) or losing the leadership.
func (m *Metrics) Leadership(leads bool) {
	if m == nil {
		return
	}
	if leads {
		m.leadership.WithLabelValues("acquired").Inc()
	} else {
		m.leadership.WithLabelValues("lost").Inc()
	}
}

// Failover counts a group taken off a failed node, took after the node's
// last grant.
func (m *Metrics) Failover(outcome string, took time.Duration) {
	if m != nil {
		m.failovers.WithLabelValues(outcome).Inc()
		m.failoverDuration.WithLabelValues(outcome).Observe(took.Seconds())
	}
}

// Fenced counts a node whose groups the leader took off once its lease
// had run out.
func (m *Metrics) Fenced() {
	if m != nil {
		m.fences.Inc()
	}
}

// MoveEnded counts a move of kind (live, quick) that ended (or committed)
// with outcome, took after its start. Both are protobuf enum names or
// plain words; they are reported in lower case without their prefix.
func (m *Metrics) MoveEnded(kind, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	kind = strings.ToLower(strings.TrimPrefix(kind, "MOVE_KIND_"))
	outcome = strings.ToLower(strings.TrimPrefix(outcome, "OPERATION_OUTCOME_"))
	m.moves.WithLabelValues(outcome).Inc()
	m.moveDuration.WithLabelValues(kind, outcome).Observe(max(took, 0).Seconds())
}

// VMFrozen counts a VM of this node frozen at its lease end, for cause.
func (m *Metrics) VMFrozen(cause string) {
	if m != nil {
		m.freezes.WithLabelValues(cause).Inc()
	}
}

// VMThawed counts a frozen VM of this node let run again.
func (m *Metrics) VMThawed() {
	if m != nil {
		m.thaws.Inc()
	}
}

// AdmissionRefused counts a create or start refused by admission.
func (m *Metrics) AdmissionRefused(call string) {
	if m != nil {
		m.admissions.WithLabelValues(call).Inc()
	}
}

// Renewed records a grant this node received: the renewal's round trip
// and the time that was left on its lease before (negative: it had run
// out). The first grant of a process has no lease before it: pass ok false.
func (m *Metrics) Renewed(rtt, left time.Duration, ok bool) {
	if m == nil {
		return
	}
	m.renewRTT.Observe(rtt.Seconds())
	if !ok {
		return
	}
	if left <= 0 {
		m.expiries.Inc()
	}
	m.headroom.Observe(max(left, 0).Seconds())
}

// Renewals counts lease renewals answered in one batch.
func (m *Metrics) Renewals(granted bool, n int) {
	if m == nil {
		return
	}
	if granted {
		m.renewals.WithLabelValues("granted").Add(float64(n))
	} else {
		m.renewals.WithLabelValues("refused").Add(float64(n))
	}
}

// Verified times one leadership check before a batch of grants.
func (m *Metrics) Verified(d time.Duration) {
	if m == nil {
		return
	}
	m.verify.Observe(d.Seconds())
}

// UnaryInterceptor counts and times unary calls.
func (m *Metrics) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	t0 := time.Now()
	resp, err := handler(ctx, req)
	m.grpcDuration.WithLabelValues(info.FullMethod).Observe(time.Since(t0).Seconds())
	m.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

// StreamInterceptor counts streaming calls (their length is the client's
// choice, so it is not timed).
func (m *Metrics) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	m.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return err
}

// Serve serves /metrics on addr until ctx ends and returns the address
// it listens on (addr may name port 0); with debug, Go's profiler too,
// under /debug/pprof/.
func (m *Metrics) Serve(ctx context.Context, addr string, debug bool, log *slog.Logger) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	if debug {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", err)
		}
	}()
	return lis.Addr().String(), nil
}

// Gatherer is the registry, for tests that read it whole.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }
