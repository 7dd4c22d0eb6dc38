package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Drain on shutdown (drain_on_shutdown): an agent told to stop first has
// its node drained, as `haven drain` would, and waits until it hosts no
// group, for at most drain_timeout; then it stops. A marker in the data
// directory remembers that the drain was the agent's own, so the agent ends
// it when it starts again, as an operator would end a drain for patching.
// An operator's drain has no marker and stays.

// drainMarker is the file that says this agent drained its node on its way
// out.
func (a *Agent) drainMarker() string { return filepath.Join(a.cfg.DataDir, "drained-on-shutdown") }

// DrainForShutdown drains this node and waits until it hosts no group, ctx
// ends or drain_timeout passes, whichever comes first. Groups still here
// then fail over once the agent is gone. It does nothing without
// drain_on_shutdown.
func (a *Agent) DrainForShutdown(ctx context.Context) {
	if !a.cfg.DrainOnShutdown {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DrainTimeout)
	defer cancel()
	start := time.Now()
	if err := os.WriteFile(a.drainMarker(), []byte(start.UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		a.log.Warn("drain on shutdown: cannot write its marker; the drain will stay after a restart", "error", err)
	}
	requestID := fmt.Sprintf("drain-on-shutdown/%s/%d", a.cfg.Name, start.UnixNano())
	a.log.Info("draining before shutdown", "timeout", a.cfg.DrainTimeout)
	drained := false
	for ctx.Err() == nil {
		if !drained {
			err := a.setDrain(ctx, true, requestID)
			drained = err == nil
			if err != nil {
				a.log.Debug("drain on shutdown: drain not accepted yet", "error", err)
			}
		}
		if left := a.hosted(); drained && len(left) == 0 {
			a.log.Info("drained before shutdown", "took", time.Since(start).Round(time.Millisecond))
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	a.log.Warn("drain on shutdown did not finish; the groups left fail over", "took", time.Since(start).Round(time.Millisecond), "groups", a.hosted())
}

// hosted is the groups this node still runs or is moving out.
func (a *Agent) hosted() []string {
	var out []string
	for _, g := range a.fsm.Groups() {
		if g.GetOwner() == a.cfg.Name && fsm.Active(g.GetState()) {
			out = append(out, g.GetSpec().GetName())
		}
	}
	return out
}

// endOwnDrain ends, once a leader takes it, the drain this agent started on
// its way out last time.
func (a *Agent) endOwnDrain(ctx context.Context) {
	if _, err := os.Stat(a.drainMarker()); err != nil {
		return
	}
	requestID := fmt.Sprintf("end-drain-on-shutdown/%s/%d", a.cfg.Name, time.Now().UnixNano())
	for ctx.Err() == nil {
		err := a.setDrain(ctx, false, requestID)
		if err == nil {
			if err := os.Remove(a.drainMarker()); err != nil && !errors.Is(err, os.ErrNotExist) {
				a.log.Warn("cannot remove the drain marker", "error", err)
			}
			a.log.Info("ended the drain this agent started at its last shutdown")
			return
		}
		a.log.Debug("ending the drain of the last shutdown: not accepted yet", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// setDrain asks the cluster, through this agent's own API (which forwards
// to the leader), to start or end this node's drain.
func (a *Agent) setDrain(ctx context.Context, draining bool, requestID string) error {
	conn, err := a.pool.Conn(a.addr(a.cfg.Ports.GRPC))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := havenv1.NewClusterServiceClient(conn)
	if draining {
		_, err = c.DrainNode(ctx, &havenv1.DrainNodeRequest{Node: a.cfg.Name, RequestId: requestID})
	} else {
		_, err = c.ResumeNode(ctx, &havenv1.ResumeNodeRequest{Node: a.cfg.Name, RequestId: requestID})
	}
	return err
}
