package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/haven-ha/haven/agent/events"
	"github.com/haven-ha/haven/agent/executor"
	"github.com/haven-ha/haven/agent/metrics"
)

// serveMetrics registers the gauges that mirror this agent's view of the
// cluster and serves /metrics on the metrics port.
func (a *Agent) serveMetrics(ctx context.Context) error {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	a.metrics.Observe([]metrics.Gauge{
		{Name: "haven_raft_leader", Help: "1 while this agent is the Raft leader.", Value: func() float64 { return b(a.raft.IsLeader()) }},
		{Name: "haven_raft_term", Help: "Raft's current term.", Value: func() float64 { return float64(a.raft.Term()) }},
		{Name: "haven_raft_applied_index", Help: "The last log index this agent's state machine applied.", Value: func() float64 { return float64(a.fsm.Index()) }},
		{Name: "haven_raft_last_contact_seconds", Help: "Time since this agent last heard from a leader (a leader: from a quorum); -1 if never.", Value: func() float64 {
			if a.raft.IsLeader() {
				return 0
			}
			last := a.raft.LastContact()
			if last.IsZero() {
				return -1
			}
			return time.Since(last).Seconds()
		}},
	}, []metrics.GaugeVec{
		{Name: "haven_members", Help: "Cluster members as this agent's gossip sees them, by state and site.", Labels: []string{"state", "site"},
			Values: func() []metrics.Sample {
				count := map[[2]string]float64{}
				sites := map[string]bool{a.cfg.Site: true}
				for _, m := range a.gossip.Members() {
					count[[2]string{m.State.String(), m.Meta.Site}]++
					sites[m.Meta.Site] = true
				}
				// Every state of every site shows, 0 when empty, so that
				// a site's dead members can be alerted on before any died.
				for site := range sites {
					for _, st := range []string{"alive", "suspect", "dead", "left"} {
						if _, ok := count[[2]string{st, site}]; !ok {
							count[[2]string{st, site}] = 0
						}
					}
				}
				out := make([]metrics.Sample, 0, len(count))
				for k, v := range count {
					out = append(out, metrics.Sample{Labels: k[:], Value: v})
				}
				return out
			}},
		{Name: "haven_nodes", Help: "Nodes in the cluster state, by status.", Labels: []string{"status"},
			Values: func() []metrics.Sample {
				out := map[string]float64{}
				for _, n := range a.fsm.Nodes() {
					out[enumName(n.GetStatus().String(), "NODE_STATUS_")]++
				}
				return metrics.Counts(out, "alive", "failed", "left")
			}},
		{Name: "haven_groups", Help: "Groups in the cluster state, by observed state.", Labels: []string{"state"},
			Values: func() []metrics.Sample {
				out := map[string]float64{}
				for _, g := range a.fsm.Groups() {
					out[enumName(g.GetState().String(), "GROUP_STATE_")]++
				}
				return metrics.Counts(out, "offline", "starting", "online", "stopping", "failed")
			}},
	}, []metrics.Gauge{
		{Name: "haven_events_dropped_total", Help: "Events a watcher lost because it fell behind.", Value: func() float64 { return float64(a.events.Dropped()) }},
	})
	context.AfterFunc(ctx, a.metrics.BridgeRaft())
	if _, err := a.metrics.Serve(ctx, a.bind(a.cfg.Ports.Metrics), a.cfg.EnableDebug, a.log); err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	return nil
}

// admissionRefused publishes the leader's refusal of a create, start or
// move. No log entry records it: only this agent's watchers see it.
func (a *Agent) admissionRefused(call, group, reason string) {
	a.events.Publish(events.Event{Kind: events.AdmissionRefused, Time: time.Now(), Group: group, Node: a.cfg.Name,
		State: call, Reason: reason})
}

// vmFreeze counts and publishes a VM of this node freezing at its lease
// end, or thawing.
func (a *Agent) vmFreeze(f executor.Freeze) {
	e := events.Event{Kind: events.VMFrozen, Time: time.Now(), Group: f.VM.Group, Node: a.cfg.Name, Epoch: f.Epoch,
		State: f.Cause, Reason: "vm " + f.VM.Resource}
	if f.Thawed {
		e.Kind, e.State = events.VMThawed, ""
		a.metrics.VMThawed()
	} else {
		a.metrics.VMFrozen(f.Cause)
	}
	a.events.Publish(e)
}

// enumName is a protobuf enum value's name without its prefix, in lower
// case: GROUP_STATE_ONLINE -> online.
func enumName(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }
