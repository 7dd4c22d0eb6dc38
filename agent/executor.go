package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// executor makes this node's hypervisor match the FSM: it runs the groups
// the FSM assigns to this node, at their current epoch, while a lease grant
// confirms them, and nothing else.
type executor struct {
	a   *Agent
	drv driver.Hypervisor
	// send delivers a report to the leader.
	send func(context.Context, *havenv1.ReportGroupRequest) error

	mu sync.Mutex
	// leaseEnd and confirmed are from the last grant: the node may run a
	// group at an epoch only while a grant lists it at that epoch and the
	// grant's lease has not ended.
	leaseEnd  time.Time
	confirmed map[string]uint64
	// reported remembers the last report per group, so one is sent once.
	reported map[string]report
	// restarts holds the times of in-place restarts per group and epoch.
	restarts map[string][]time.Time
	// startFails counts failed starts per group at one epoch and desired
	// index, for the bounded retry with backoff.
	startFails map[string]*startFail
	wake       chan struct{}
	// renewNow asks the lease loop for a renewal at once: a group was just
	// assigned here and waits for a grant that confirms its epoch.
	renewNow chan struct{}
}

type report struct {
	epoch, desiredIndex uint64
	state               havenv1.GroupState
}

// startFail is the retry state of a group whose start failed.
type startFail struct {
	key      string // group@epoch/desired_index
	attempts int
	next     time.Time
}

// Start failures are retried startAttempts times in all, waiting
// startBackoff, then twice that, and so on; then the group is reported
// failed, and the leader moves it or marks it failed with the driver's
// reason.
const (
	startAttempts = 3
	startBackoff  = 500 * time.Millisecond
)

func newExecutor(a *Agent, drv driver.Hypervisor) *executor {
	return &executor{a: a, drv: drv, send: a.sendReport, confirmed: map[string]uint64{}, reported: map[string]report{}, restarts: map[string][]time.Time{}, startFails: map[string]*startFail{}, wake: make(chan struct{}, 1), renewNow: make(chan struct{}, 1)}
}

func (e *executor) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// granted applies a lease grant: confirmed VMs get the new lease end (a
// frozen one thaws, if the driver's gate still allows it); VMs the grant
// leaves out keep their old end and freeze when it passes.
func (e *executor) granted(end time.Time, groups []*havenv1.GroupEpoch) {
	e.mu.Lock()
	e.leaseEnd = end
	e.confirmed = make(map[string]uint64, len(groups))
	for _, g := range groups {
		e.confirmed[g.GetName()] = g.GetEpoch()
	}
	e.mu.Unlock()
	for _, st := range e.drv.List() {
		if ep, ok := e.confirmedEpoch(st.ID.Group); ok && ep == st.Epoch && (st.State == driver.StateRunning || st.State == driver.StateFrozen) {
			if err := e.drv.ExtendLease(st.ID, st.Epoch, end); err != nil && !errors.Is(err, driver.ErrLeaseExpired) {
				e.a.log.Warn("lease extension refused", "vm", st.ID.String(), "epoch", st.Epoch, "error", err)
			}
		}
	}
	e.poke()
}

func (e *executor) confirmedEpoch(group string) (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ep, ok := e.confirmed[group]
	return ep, ok
}

// mayRun reports whether the last grant lets the node run group at epoch
// now, and until when.
func (e *executor) mayRun(group string, epoch uint64, now time.Time) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ep, ok := e.confirmed[group]
	return e.leaseEnd, ok && ep == epoch && now.Before(e.leaseEnd)
}

func (e *executor) run(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		e.reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-e.wake:
		}
	}
}

func (e *executor) reconcile(ctx context.Context) {
	me := e.a.cfg.Name
	want := map[string]*havenv1.Group{}
	for _, g := range e.a.fsm.Groups() {
		if g.GetOwner() == me && fsm.Active(g.GetState()) {
			want[g.GetSpec().GetName()] = g
		}
	}
	// Anything the FSM does not give this node at this epoch goes: a
	// newer epoch means the group runs, or is about to, elsewhere.
	running := map[string][]driver.Status{}
	for _, st := range e.drv.List() {
		g := want[st.ID.Group]
		if g == nil || g.GetEpoch() != st.Epoch {
			if st.State == driver.StateRunning || st.State == driver.StateFrozen {
				e.a.log.Info("killing vm the node no longer owns", "vm", st.ID.String(), "epoch", st.Epoch)
				if err := e.drv.Kill(st.ID, st.Epoch); err != nil && !errors.Is(err, driver.ErrNotFound) {
					e.a.log.Warn("kill failed", "vm", st.ID.String(), "error", err)
					continue
				}
			}
			_ = e.drv.Forget(st.ID)
			continue
		}
		running[st.ID.Group] = append(running[st.ID.Group], st)
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if ctx.Err() != nil {
			return
		}
		g := want[name]
		if g.GetState() == havenv1.GroupState_GROUP_STATE_STOPPING {
			e.stop(ctx, g, running[name])
			continue
		}
		e.ensureRunning(ctx, g, running[name])
	}
}

// stop stops a group's VMs in reverse dependency order (a VM before one
// it depends on), then reports it offline.
func (e *executor) stop(ctx context.Context, g *havenv1.Group, vms []driver.Status) {
	byRes := map[string]driver.Status{}
	for _, st := range vms {
		byRes[st.ID.Resource] = st
	}
	order := orderedResources(g.GetSpec())
	for i := len(order) - 1; i >= 0; i-- {
		st, ok := byRes[order[i].GetName()]
		if !ok {
			continue
		}
		delete(byRes, order[i].GetName())
		if !e.stopVM(ctx, st) {
			return
		}
	}
	// VMs the spec no longer names (none today: specs do not change).
	for _, st := range byRes {
		if !e.stopVM(ctx, st) {
			return
		}
	}
	e.report(ctx, g, havenv1.GroupState_GROUP_STATE_OFFLINE, "stopped on request")
}

func (e *executor) stopVM(ctx context.Context, st driver.Status) bool {
	if st.State == driver.StateRunning || st.State == driver.StateFrozen {
		if err := e.drv.Stop(ctx, st.ID, st.Epoch); err != nil {
			e.a.log.Warn("stop failed", "vm", st.ID.String(), "error", err)
			return false
		}
	}
	_ = e.drv.Forget(st.ID)
	return true
}

func (e *executor) ensureRunning(ctx context.Context, g *havenv1.Group, vms []driver.Status) {
	name, epoch := g.GetSpec().GetName(), g.GetEpoch()
	specs := vmSpecs(g, e.a.cfg)
	have := map[string]driver.Status{}
	for _, st := range vms {
		have[st.ID.Resource] = st
	}
	allUp := true
	for _, spec := range specs {
		st, ok := have[spec.ID.Resource]
		switch {
		case ok && (st.State == driver.StateRunning || st.State == driver.StateFrozen):
			if st.State == driver.StateFrozen {
				allUp = false
			}
			continue
		case ok && st.State == driver.StateCrashed:
			if !e.restartAllowed(g) {
				e.report(ctx, g, havenv1.GroupState_GROUP_STATE_FAILED, fmt.Sprintf("vm %s crashed on %s (%s): restart limit reached", spec.ID.Resource, e.a.cfg.Name, st.Reason))
				return
			}
			e.a.log.Warn("vm crashed: restarting in place", "vm", spec.ID.String(), "reason", st.Reason)
			_ = e.drv.Forget(spec.ID)
		}
		end, ok := e.mayRun(name, epoch, time.Now())
		if !ok {
			// No grant confirms this epoch yet: ask for one now rather
			// than at the next renewal, a quarter lease away.
			select {
			case e.renewNow <- struct{}{}:
			default:
			}
			return
		}
		if !e.stillWanted(g) {
			return
		}
		if !e.startDue(g, time.Now()) {
			return
		}
		if err := e.drv.Start(ctx, spec, end); err != nil {
			if ctx.Err() != nil {
				return
			}
			e.a.log.Warn("start failed", "vm", spec.ID.String(), "epoch", epoch, "error", err)
			// A disk claimed by a newer epoch fences this one for good,
			// and a spec the driver refuses stays refused: retrying
			// cannot help.
			final := errors.Is(err, driver.ErrStaleEpoch) || errors.Is(err, driver.ErrInvalidSpec)
			if e.startFailed(g, time.Now(), final) {
				reason := fmt.Sprintf("vm %s could not start on %s: %v", spec.ID.Resource, e.a.cfg.Name, err)
				if errors.Is(err, driver.ErrStaleEpoch) {
					reason = fmt.Sprintf("vm %s fenced on %s: %v", spec.ID.Resource, e.a.cfg.Name, err)
				}
				e.report(ctx, g, havenv1.GroupState_GROUP_STATE_FAILED, reason)
			}
			return
		}
		e.a.log.Info("vm started", "vm", spec.ID.String(), "epoch", epoch)
	}
	if allUp {
		e.startSucceeded(g)
		if g.GetState() == havenv1.GroupState_GROUP_STATE_STARTING {
			e.report(ctx, g, havenv1.GroupState_GROUP_STATE_ONLINE, "")
		}
	}
}

// stillWanted re-reads the group just before a start: an operator's stop
// (or a move) applied since this pass read the state must win. What is
// started after this check and stopped a moment later is the race the
// FSM closes: the start's "online" report is refused, and the next pass
// sees the stop.
func (e *executor) stillWanted(g *havenv1.Group) bool {
	cur := e.a.fsm.Group(g.GetSpec().GetName())
	return cur != nil && cur.GetOwner() == e.a.cfg.Name && cur.GetEpoch() == g.GetEpoch() &&
		cur.GetDesiredIndex() == g.GetDesiredIndex() && fsm.WantsRun(cur) &&
		(cur.GetState() == havenv1.GroupState_GROUP_STATE_STARTING || cur.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE)
}

func startKey(g *havenv1.Group) string {
	return fmt.Sprintf("%s@%d/%d", g.GetSpec().GetName(), g.GetEpoch(), g.GetDesiredIndex())
}

// startDue reports whether a start may be tried now: not while a failed
// one backs off.
func (e *executor) startDue(g *havenv1.Group, now time.Time) bool {
	f := e.startFails[g.GetSpec().GetName()]
	return f == nil || f.key != startKey(g) || !now.Before(f.next)
}

// startFailed counts a failed start and reports whether the group should
// now be reported failed: the attempts are used up, or final says that
// retrying cannot help.
func (e *executor) startFailed(g *havenv1.Group, now time.Time, final bool) bool {
	name, key := g.GetSpec().GetName(), startKey(g)
	f := e.startFails[name]
	if f == nil || f.key != key {
		f = &startFail{key: key}
		e.startFails[name] = f
	}
	f.attempts++
	f.next = now.Add(startBackoff << (f.attempts - 1))
	return final || f.attempts >= startAttempts
}

func (e *executor) startSucceeded(g *havenv1.Group) {
	delete(e.startFails, g.GetSpec().GetName())
}

// restartAllowed counts an in-place restart against the group's policy: at
// most max_restarts within period; with no policy, one per minute.
func (e *executor) restartAllowed(g *havenv1.Group) bool {
	limit, period := uint32(1), time.Minute
	if rp := g.GetSpec().GetRestart(); rp != nil {
		limit = rp.GetMaxRestarts()
		if rp.GetPeriod() != nil && rp.GetPeriod().AsDuration() > 0 {
			period = rp.GetPeriod().AsDuration()
		}
	}
	key := fmt.Sprintf("%s@%d", g.GetSpec().GetName(), g.GetEpoch())
	now := time.Now()
	var recent []time.Time
	for _, t := range e.restarts[key] {
		if now.Sub(t) < period {
			recent = append(recent, t)
		}
	}
	if uint32(len(recent)) >= limit {
		e.restarts[key] = recent
		return false
	}
	e.restarts[key] = append(recent, now)
	return true
}

// report tells the leader, once per (group, epoch, desired index, state).
func (e *executor) report(ctx context.Context, g *havenv1.Group, st havenv1.GroupState, reason string) {
	name := g.GetSpec().GetName()
	r := report{epoch: g.GetEpoch(), desiredIndex: g.GetDesiredIndex(), state: st}
	e.mu.Lock()
	if e.reported[name] == r {
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()
	err := e.send(ctx, &havenv1.ReportGroupRequest{
		Node: e.a.cfg.Name, Name: name, Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(), State: st, Reason: reason,
	})
	if err != nil {
		e.a.log.Debug("report failed; will retry", "group", name, "state", st, "error", err)
		return
	}
	e.mu.Lock()
	e.reported[name] = r
	e.mu.Unlock()
}

// sendReport sends a report to the leader.
func (a *Agent) sendReport(ctx context.Context, req *havenv1.ReportGroupRequest) error {
	_, addr, err := a.leader()
	if err != nil {
		return err
	}
	conn, err := a.fwd.conn(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = havenv1.NewNodeServiceClient(conn).ReportGroup(ctx, req)
	return err
}

// vmSpecs turns a group's VM resources into driver specs; every VM of the
// group gets every disk of the group.
func vmSpecs(g *havenv1.Group, cfg Config) []driver.VMSpec {
	var disks []driver.DiskSpec
	for _, r := range g.GetSpec().GetResources() {
		if d := r.GetDisk(); d != nil {
			disks = append(disks, driver.DiskSpec{Name: r.GetName(), Path: d.GetPath(), SizeBytes: d.GetSizeBytes()})
		}
	}
	var out []driver.VMSpec
	for _, r := range orderedResources(g.GetSpec()) {
		vm := r.GetVm()
		if vm == nil {
			continue
		}
		out = append(out, driver.VMSpec{
			ID:                   driver.VMID{Group: g.GetSpec().GetName(), Resource: r.GetName()},
			Node:                 cfg.Name,
			Epoch:                g.GetEpoch(),
			VCPUs:                int(vm.GetVcpus()),
			MemoryBytes:          vm.GetMemoryBytes(),
			Disks:                disks,
			DirtyRateBytesPerSec: cfg.Sim.DirtyRate,
			WorkingSetBytes:      min(cfg.Sim.WorkingSetBytes, vm.GetMemoryBytes()),
			Tick:                 cfg.Sim.Tick,
		})
	}
	return out
}

// orderedResources lists resources so that each comes after what it
// depends on (the spec was validated acyclic); ties keep spec order.
func orderedResources(spec *havenv1.GroupSpec) []*havenv1.Resource {
	done := map[string]bool{}
	var out []*havenv1.Resource
	for len(out) < len(spec.GetResources()) {
		progressed := false
		for _, r := range spec.GetResources() {
			if done[r.GetName()] {
				continue
			}
			ready := true
			for _, d := range r.GetDependsOn() {
				ready = ready && done[d]
			}
			if ready {
				done[r.GetName()] = true
				out = append(out, r)
				progressed = true
			}
		}
		if !progressed {
			break
		}
	}
	return out
}
