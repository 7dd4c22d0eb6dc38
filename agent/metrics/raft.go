package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	gometrics "github.com/hashicorp/go-metrics/compat"
)

// hashicorp/raft and raft-boltdb report through go-metrics' process-wide
// sink (the compat package, armon's go-metrics unless built with the
// hashicorpmetrics tag; go.mod pins go-metrics v0.6.1 because v0.7.0, which
// memberlist asks for, dropped compat). The bridge is that sink: it maps
// the keys an operator needs (commit, apply, last contact, log writes,
// snapshots, elections) to Prometheus names in seconds and drops the rest,
// so raft's camelCase keys, millisecond units and per-peer key suffixes
// never reach the scrape. go-metrics' own Prometheus sink would pass them
// through as they are.

// raftBuckets spans raft's timings: a commit on loopback (~0.1 ms) to a
// snapshot of a large state (seconds).
var raftBuckets = prometheus.ExponentialBuckets(0.0001, 2.5, 14)

// raftTimer is a raft timing key bridged to a histogram in seconds.
type raftTimer struct {
	key, name, help string
	// labels are the go-metrics labels kept, as Prometheus labels.
	labels []string
}

var raftTimers = []raftTimer{
	{"raft.commitTime", "haven_raft_commit_time_seconds", "Time from the leader dispatching a log entry to its commit by a quorum (raft.commitTime).", nil},
	{"raft.leader.dispatchLog", "haven_raft_leader_dispatch_log_seconds", "Time the leader takes to write a batch of entries to its own log (raft.leader.dispatchLog).", nil},
	{"raft.leader.lastContact", "haven_raft_leader_last_contact_seconds", "On the leader, time since it last heard from each follower, sampled as it checks its lease (raft.leader.lastContact).", nil},
	{"raft.fsm.apply", "haven_raft_fsm_apply_seconds", "Time the state machine takes to apply one command (raft.fsm.apply).", nil},
	{"raft.fsm.enqueue", "haven_raft_fsm_enqueue_seconds", "Time committed entries wait to be handed to the state machine (raft.fsm.enqueue).", nil},
	{"raft.fsm.snapshot", "haven_raft_fsm_snapshot_seconds", "Time the state machine takes to capture a snapshot (raft.fsm.snapshot).", nil},
	{"raft.fsm.restore", "haven_raft_fsm_restore_seconds", "Time the state machine takes to restore a snapshot (raft.fsm.restore).", nil},
	{"raft.snapshot.create", "haven_raft_snapshot_create_seconds", "Time to create a snapshot's file (raft.snapshot.create).", nil},
	{"raft.snapshot.persist", "haven_raft_snapshot_persist_seconds", "Time to write a snapshot to disk (raft.snapshot.persist).", nil},
	{"raft.snapshot.takeSnapshot", "haven_raft_snapshot_take_seconds", "Time of a whole snapshot, capture to compaction (raft.snapshot.takeSnapshot).", nil},
	{"raft.compactLogs", "haven_raft_compact_logs_seconds", "Time to drop the log entries a snapshot covers (raft.compactLogs).", nil},
	{"raft.replication.appendEntries.rpc", "haven_raft_replication_append_entries_seconds", "Time of an AppendEntries call from the leader to a follower, by peer (raft.replication.appendEntries.rpc).", []string{"peer_id"}},
	{"raft.replication.heartbeat", "haven_raft_replication_heartbeat_seconds", "Time of a heartbeat from the leader to a follower, by peer (raft.replication.heartbeat).", []string{"peer_id"}},
	{"raft.rpc.appendEntries", "haven_raft_rpc_append_entries_seconds", "Time a follower takes to handle an AppendEntries call (raft.rpc.appendEntries).", nil},
	{"raft.rpc.appendEntries.storeLogs", "haven_raft_rpc_store_logs_seconds", "Time a follower takes to write appended entries to its log, fsync included (raft.rpc.appendEntries.storeLogs).", nil},
	{"raft.rpc.requestVote", "haven_raft_rpc_request_vote_seconds", "Time to handle a vote request (raft.rpc.requestVote).", nil},
	{"raft.rpc.installSnapshot", "haven_raft_rpc_install_snapshot_seconds", "Time to install a snapshot sent by the leader (raft.rpc.installSnapshot).", nil},
	{"raft.candidate.electSelf", "haven_raft_candidate_elect_self_seconds", "Time a candidate takes to ask for votes (raft.candidate.electSelf).", nil},
	{"raft.boltdb.storeLogs", "haven_raft_boltdb_store_logs_seconds", "Time to write a batch of entries to the Raft log file, fsync included (raft.boltdb.storeLogs).", nil},
}

// raftCounters are raft's counters, each one series of a counter vector
// (name, label value).
var raftCounters = map[string][2]string{
	"raft.apply":                           {"haven_raft_apply_total", ""},
	"raft.barrier":                         {"haven_raft_barriers_total", ""},
	"raft.verify_leader":                   {"haven_raft_verify_leader_total", ""},
	"raft.state.follower":                  {"haven_raft_state_changes_total", "follower"},
	"raft.state.candidate":                 {"haven_raft_state_changes_total", "candidate"},
	"raft.state.leader":                    {"haven_raft_state_changes_total", "leader"},
	"raft.transition.heartbeat_timeout":    {"haven_raft_transitions_total", "heartbeat_timeout"},
	"raft.transition.leader_lease_timeout": {"haven_raft_transitions_total", "leader_lease_timeout"},
}

// raftGauges are raft's gauges.
var raftGauges = map[string]string{
	"raft.peers":                  "haven_raft_peers",
	"raft.commitNumLogs":          "haven_raft_commit_batch_entries",
	"raft.leader.dispatchNumLogs": "haven_raft_dispatch_batch_entries",
}

// raftMetrics is one registry's share of raft's metrics.
type raftMetrics struct {
	timers   map[string]*prometheus.HistogramVec
	labels   map[string][]string
	counters map[string]prometheus.Counter
	gauges   map[string]prometheus.Gauge
}

func newRaftMetrics(reg prometheus.Registerer) *raftMetrics {
	r := &raftMetrics{timers: map[string]*prometheus.HistogramVec{}, labels: map[string][]string{},
		counters: map[string]prometheus.Counter{}, gauges: map[string]prometheus.Gauge{}}
	for _, t := range raftTimers {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: t.name, Help: t.help, Buckets: raftBuckets}, t.labels)
		reg.MustRegister(h)
		r.timers[t.key], r.labels[t.key] = h, t.labels
	}
	help := map[string]string{
		"haven_raft_apply_total":         "Commands proposed to Raft on this agent as leader (raft.apply); its rate is the apply rate.",
		"haven_raft_barriers_total":      "Barriers proposed on this agent as leader (raft.barrier).",
		"haven_raft_verify_leader_total": "Leadership verifications this agent made as leader (raft.verify_leader).",
		"haven_raft_state_changes_total": "Times this agent's Raft entered a state (raft.state.*).",
		"haven_raft_transitions_total":   "Times this agent's Raft left a state for want of contact, by cause (raft.transition.*).",
	}
	vecs := map[string]*prometheus.CounterVec{}
	for key, nl := range raftCounters {
		name, value := nl[0], nl[1]
		if value == "" {
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help[name]})
			reg.MustRegister(c)
			r.counters[key] = c
			continue
		}
		v := vecs[name]
		if v == nil {
			label := "state"
			if strings.HasPrefix(key, "raft.transition.") {
				label = "cause"
			}
			v = prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help[name]}, []string{label})
			reg.MustRegister(v)
			vecs[name] = v
		}
		r.counters[key] = v.WithLabelValues(value)
	}
	gaugeHelp := map[string]string{
		"haven_raft_peers":                  "Servers in the latest Raft configuration, as the leader last counted them (raft.peers).",
		"haven_raft_commit_batch_entries":   "Entries the last commit on this agent made applicable at once (raft.commitNumLogs).",
		"haven_raft_dispatch_batch_entries": "Entries the leader last wrote to its log in one batch (raft.leader.dispatchNumLogs).",
	}
	for key, name := range raftGauges {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: gaugeHelp[name]})
		reg.MustRegister(g)
		r.gauges[key] = g
	}
	return r
}

// sample records a timing sample in raft's milliseconds.
func (r *raftMetrics) sample(key string, ms float32, labels []gometrics.Label) {
	h := r.timers[key]
	if h == nil {
		return
	}
	want := r.labels[key]
	values := make([]string, len(want))
	for i, name := range want {
		for _, l := range labels {
			if l.Name == name {
				values[i] = l.Value
			}
		}
	}
	h.WithLabelValues(values...).Observe(float64(ms) / 1000)
}

// raftSink is the process-wide go-metrics sink, which hands raft's
// metrics to every registry that bridges them (one per agent; several in
// a process only in tests, which then each see every agent's).
type raftSink struct {
	mu   sync.Mutex
	regs map[*raftMetrics]struct{}
}

var (
	sinkOnce sync.Once
	sink     = &raftSink{regs: map[*raftMetrics]struct{}{}}
)

// BridgeRaft registers raft's metrics in m's registry and feeds them from
// go-metrics' global sink until stop. A nil m bridges nothing.
func (m *Metrics) BridgeRaft() (stop func()) {
	if m == nil {
		return func() {}
	}
	sinkOnce.Do(func() {
		conf := gometrics.DefaultConfig("")
		// Runtime metrics are Go's collector's; the hostname is no part
		// of a Prometheus name.
		conf.EnableHostname, conf.EnableRuntimeMetrics, conf.EnableHostnameLabel = false, false, false
		conf.TimerGranularity = time.Millisecond
		_, _ = gometrics.NewGlobal(conf, sink)
	})
	m.raftOnce.Do(func() { m.raft = newRaftMetrics(m.reg) })
	sink.mu.Lock()
	sink.regs[m.raft] = struct{}{}
	sink.mu.Unlock()
	return func() {
		sink.mu.Lock()
		delete(sink.regs, m.raft)
		sink.mu.Unlock()
	}
}

func (s *raftSink) each(f func(*raftMetrics)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for r := range s.regs {
		f(r)
	}
}

func joinKey(key []string) string { return strings.Join(key, ".") }

func (s *raftSink) SetGauge(key []string, val float32) { s.SetGaugeWithLabels(key, val, nil) }
func (s *raftSink) SetGaugeWithLabels(key []string, val float32, _ []gometrics.Label) {
	k := joinKey(key)
	s.each(func(r *raftMetrics) {
		if g := r.gauges[k]; g != nil {
			g.Set(float64(val))
		}
	})
}
func (s *raftSink) SetPrecisionGauge(key []string, val float64) {
	s.SetGaugeWithLabels(key, float32(val), nil)
}
func (s *raftSink) SetPrecisionGaugeWithLabels(key []string, val float64, labels []gometrics.Label) {
	s.SetGaugeWithLabels(key, float32(val), labels)
}
func (s *raftSink) EmitKey([]string, float32)             {}
func (s *raftSink) IncrCounter(key []string, val float32) { s.IncrCounterWithLabels(key, val, nil) }
func (s *raftSink) IncrCounterWithLabels(key []string, val float32, _ []gometrics.Label) {
	k := joinKey(key)
	s.each(func(r *raftMetrics) {
		if c := r.counters[k]; c != nil {
			c.Add(float64(val))
		}
	})
}
func (s *raftSink) AddSample(key []string, val float32) { s.AddSampleWithLabels(key, val, nil) }
func (s *raftSink) AddSampleWithLabels(key []string, val float32, labels []gometrics.Label) {
	k := joinKey(key)
	s.each(func(r *raftMetrics) { r.sample(k, val, labels) })
}
