// Package executor makes this node's hypervisor match the FSM: it runs
// what the FSM says this node should run (plan.go), each VM at its group's
// epoch and only while a lease grant confirms that epoch, stops what it
// should stop, kills everything else, hot-plugs the disks a running VM
// lacks or no longer has in its spec (disks.go), and reports what happened
// to the leader. It knows a driver only as driver.Hypervisor and the
// optional interfaces the driver reports.
package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/logging"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// State is what the executor reads of the FSM.
type State interface {
	Index() uint64
	Groups() []*havenv1.Group
	// GroupsChangedAfter visits the groups created or changed after an
	// index (fsm.FSM); fn must be quick and must not call the State.
	GroupsChangedAfter(index uint64, fn func(*havenv1.Group) bool)
	// GroupsFor is what node owns and what moves to it.
	GroupsFor(node string) []*havenv1.Group
	Group(name string) *havenv1.Group
	Operation(id string) *havenv1.Operation
	// Node is this node's record, with what it reported it cannot run.
	Node(name string) *havenv1.Node
}

// Config is what an Executor needs.
type Config struct {
	// Node is this node's name.
	Node   string
	State  State
	Driver driver.Hypervisor
	// Report delivers a report to the leader.
	Report func(context.Context, *havenv1.ReportGroupRequest) error
	// ReportDisk delivers a report on a pending disk change to the
	// leader (disks.go); nil sends none.
	ReportDisk func(context.Context, *havenv1.ReportDiskChangeRequest) error
	Logger     *slog.Logger
	// SharedDir is the shared storage root, where quick moves keep their
	// state files; empty leaves them for the operator.
	SharedDir string
	// ReportChecks delivers the node's checks, the groups its driver
	// cannot run, to the leader (checks.go); nil checks nothing.
	ReportChecks func(context.Context, *havenv1.ReportChecksRequest) error
	// CheckEvery is how often every group is checked again, for files
	// that appeared or went; zero is DefaultCheckEvery.
	CheckEvery time.Duration
	// Freezes is told of every VM of this node that froze at its lease
	// end or thawed (freezes.go); it must not block. Nil tells nothing.
	Freezes func(Freeze)
}

// Executor is this node's executor.
type Executor struct {
	node  string
	state State
	drv   driver.Hypervisor
	send  func(context.Context, *havenv1.ReportGroupRequest) error
	log   *slog.Logger
	// hotPlug is the driver as a DiskHotPlugger, nil when it reports
	// none; reportDisk is Config.ReportDisk.
	hotPlug    driver.DiskHotPlugger
	reportDisk func(context.Context, *havenv1.ReportDiskChangeRequest) error
	// sharedDir is Config.SharedDir.
	sharedDir string
	// checker is the driver as a Checker, nil when it is none;
	// reportChecks, checkEvery and checkWake are the checks' (checks.go).
	checker driver.Checker
	// specOnly: the checker's verdicts depend on the spec alone (or there
	// is none, and Validate decides), so the periodic pass asks nothing
	// again of a spec it has a verdict on.
	specOnly     bool
	reportChecks func(context.Context, *havenv1.ReportChecksRequest) error
	checkEvery   time.Duration
	checkWake    chan struct{}

	// plan is the reconcile's, of the state at planIndex (currentPlan).
	plan      plan
	planIndex uint64
	planned   bool
	// freezes is Config.Freezes.
	freezes func(Freeze)

	mu sync.Mutex
	// frozen holds the VMs last seen frozen, at their epoch.
	frozen map[driver.VMID]uint64
	// leaseEnd and confirmed are from the last grant: the node may run a
	// group at an epoch only while a grant lists it at that epoch and the
	// grant's lease has not ended.
	leaseEnd  time.Time
	confirmed map[string]*havenv1.GroupEpoch
	// reported remembers the last report per group, so one is sent once.
	reported map[string]report
	// outbox holds the reports of the reconcile under way (flush); only
	// the reconciling goroutine touches it.
	outbox []outgoing
	// restarts holds the times of in-place restarts per group and epoch.
	restarts map[string][]time.Time
	// startFails counts failed starts per group at one epoch and desired
	// index, for the bounded retry with backoff.
	startFails map[string]*startFail
	// asked is the last group@epoch that waited for a grant, logged once.
	asked string
	// diskFails holds the retry state of hot-plugs per group, and
	// diskReported the index of the last disk change reported per group
	// (disks.go); only the reconciling goroutine touches them.
	diskFails    map[string]*diskFail
	diskReported map[string]uint64
	wake         chan struct{}
	// applied is Wake's: a command was applied. planInputs are the
	// records the plan was made of (sameInputs).
	applied    chan struct{}
	planInputs []any
	// renewNow asks the lease loop for a renewal at once: a group was just
	// assigned here and waits for a grant that confirms its epoch.
	renewNow chan struct{}
	// holds are the fault-injection holds of moves (holds.go).
	holds holds
	// watched is the driver as a Watched, nil when it counts no changes.
	// busy: the reconcile under way left something to do (a VM not
	// running as planned, a report to send); only the Run goroutine
	// touches it.
	watched driver.Watched
	busy    bool
	// steadyEvery is the constant but in tests that show what wakes a
	// steady executor.
	steadyEvery time.Duration
}

type report struct {
	epoch, desiredIndex uint64
	state               havenv1.GroupState
}

type outgoing struct {
	r   report
	req *havenv1.ReportGroupRequest
}

// maxReports bounds the reports one reconcile has in flight at once.
const maxReports = 32

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

// The reconcile runs every passEvery. On a node whose last reconcile
// found every VM running as planned, with nothing to report, it runs
// only every steadyEvery, unless the FSM, a grant, the driver or the end
// of the lease brings a change: the driver must count and signal its
// changes for that (driver.Watched), or the executor would learn of a
// crash late. Listing the VMs was most of an idle agent's reconcile, ten
// times a second. The steady pass is only a safety net under that
// contract (a change the driver failed to count): once a second it was
// still a fifth of a quiet agent's CPU in the 64-agent scale scenario
// (100 VMs listed and matched with the plan).
const (
	passEvery   = 100 * time.Millisecond
	steadyEvery = 5 * time.Second
)

// New returns an executor; Run drives it.
func New(cfg Config) *Executor {
	log := cfg.Logger
	if log == nil {
		log = logging.Discard()
	}
	e := &Executor{node: cfg.Node, state: cfg.State, drv: cfg.Driver, send: cfg.Report, log: log, sharedDir: cfg.SharedDir,
		reportDisk: cfg.ReportDisk, reportChecks: cfg.ReportChecks, checkEvery: cfg.CheckEvery, checkWake: make(chan struct{}, 1),
		confirmed: map[string]*havenv1.GroupEpoch{}, reported: map[string]report{}, restarts: map[string][]time.Time{},
		startFails: map[string]*startFail{}, diskFails: map[string]*diskFail{}, diskReported: map[string]uint64{},
		wake: make(chan struct{}, 1), applied: make(chan struct{}, 1), renewNow: make(chan struct{}, 1), freezes: cfg.Freezes, frozen: map[driver.VMID]uint64{}}
	if e.checkEvery <= 0 {
		e.checkEvery = DefaultCheckEvery
	}
	// A Checker needs no flag: a driver either can tell or is asked
	// nothing.
	e.checker, _ = cfg.Driver.(driver.Checker)
	if so, ok := cfg.Driver.(driver.SpecOnlyChecker); e.checker == nil || ok && so.ChecksSpecOnly() {
		e.specOnly = true
	}
	e.watched, _ = cfg.Driver.(driver.Watched)
	e.steadyEvery = steadyEvery
	// The flag first, as with every optional interface: a wrapper may
	// have the methods without the ability.
	if hp, ok := cfg.Driver.(driver.DiskHotPlugger); ok && cfg.Driver.Capabilities().HotPlugDisks {
		e.hotPlug = hp
	}
	return e
}

// RenewNow delivers a request for a lease renewal at once: a group was
// assigned here and waits for a grant that confirms its epoch.
func (e *Executor) RenewNow() <-chan struct{} { return e.renewNow }

// Wake tells the executor that the FSM applied a command. It looks
// again at once when what this node runs may have changed (sameInputs),
// and otherwise at its next tick: in a cluster of many nodes most
// commands are about other nodes' groups, and a pass per command on
// every node was most of a large cluster's cost while groups were
// created.
func (e *Executor) Wake() {
	signal(e.applied)
	signal(e.checkWake)
}

func (e *Executor) poke() {
	signal(e.wake)
	signal(e.checkWake)
}

// signal sends on a channel of one slot without blocking: a signal
// already waiting covers this one.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Granted applies a lease grant: confirmed VMs get the new lease end (a
// frozen one thaws, if the driver's gate still allows it); VMs the grant
// leaves out keep their old end and freeze when it passes.
func (e *Executor) Granted(end time.Time, groups []*havenv1.GroupEpoch) {
	// A freeze this grant ends is noted before the grant, under the lease
	// it froze under.
	vms := e.drv.List()
	e.noteStates(vms, time.Now())
	e.mu.Lock()
	// Without a lease in force before this grant (the first, or the last
	// ran out) no VM could start: now they can.
	unleased := e.leaseEnd.IsZero() || !time.Now().Before(e.leaseEnd)
	same := len(groups) == len(e.confirmed)
	e.leaseEnd = end
	confirmed := make(map[string]*havenv1.GroupEpoch, len(groups))
	for _, g := range groups {
		confirmed[g.GetName()] = g
		was, ok := e.confirmed[g.GetName()]
		same = same && ok && was.GetEpoch() == g.GetEpoch() && was.GetMoving() == g.GetMoving()
	}
	e.confirmed = confirmed
	e.mu.Unlock()
	thawing := false
	for _, st := range vms {
		if ep, ok := e.confirmedEpoch(st.ID.Group); ok && ep == st.Epoch && (st.State == driver.StateRunning || st.State == driver.StateFrozen) {
			if err := e.drv.ExtendLease(st.ID, st.Epoch, end); err != nil && !errors.Is(err, driver.ErrLeaseExpired) {
				e.log.Warn("lease extension refused", "vm", st.ID.String(), "epoch", st.Epoch, "error", err)
			}
			thawing = thawing || st.State == driver.StateFrozen
		}
	}
	// Only a VM frozen before the extension can have thawed: a grant that
	// found none frozen (every grant of a steady node) lists the VMs once,
	// not three times (a twentieth of an idle agent's CPU at 64 agents).
	if thawing {
		e.noteStates(e.drv.List(), time.Now())
	}
	// A grant in time that confirms what the last one did changes no
	// plan: a VM it thawed is a change of the driver's, which wakes a
	// steady executor (driver.Watched) or shows at the next pass.
	if unleased || !same {
		e.log.Debug("grant changes what may run", "groups", len(groups), "lease_end", end, "unleased", unleased)
		e.poke()
	}
}

// everGranted reports whether a grant has come since the executor began.
func (e *Executor) everGranted() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.leaseEnd.IsZero()
}

func (e *Executor) confirmedEpoch(group string) (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	g, ok := e.confirmed[group]
	return g.GetEpoch(), ok
}

// mayRun reports whether the last grant lets the node run group at epoch
// now, and until when. A VM that runs may go on (and a frozen one thaw)
// on that alone; fresh also asks whether a new VM may be started: not
// while the grant says the group is moving off this node.
func (e *Executor) mayRun(group string, epoch uint64, now time.Time, fresh bool) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	g, ok := e.confirmed[group]
	return e.leaseEnd, ok && g.GetEpoch() == epoch && now.Before(e.leaseEnd) && !(fresh && g.GetMoving())
}

func (e *Executor) Run(ctx context.Context) {
	// Checks run beside the reconcile, so that a slow report to the
	// leader never delays a start or a stop.
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		e.runChecks(ctx)
	}()
	// A node with something left to do looks again after passEvery. A
	// steady one waits for a change (the driver's signal, the FSM, a
	// grant that confirms something new), for its lease to end unrenewed,
	// or for the safety pass. Polling the driver's count every passEvery
	// instead woke every agent ten times a second for nothing.
	next := time.NewTimer(passEvery)
	defer next.Stop()
	leaseEnd := time.NewTimer(time.Hour)
	defer leaseEnd.Stop()
	var swept time.Time
	for {
		// Read before the reconcile lists the VMs: a change after the
		// list moves the count past it.
		var changes uint64
		if e.watched != nil {
			changes = e.watched.Changes()
		}
		e.busy = false
		e.reconcile(ctx)
		passed := time.Now()
		if passed.Sub(swept) >= sweepEvery {
			swept = passed
			e.sweepStateFiles(passed)
		}
		var changed <-chan struct{}
		leaseEnd.Stop()
		if e.watched != nil && !e.busy {
			next.Reset(e.steadyEvery)
			changed = e.watched.Changed()
			// At the end of the lease this pass ran under, the VMs
			// freeze unless a grant came; a driver that learns of such
			// a freeze only when it looks (QEMU's) is looked at then.
			if end := e.currentLeaseEnd(); passed.Before(end) {
				leaseEnd.Reset(end.Sub(passed))
			}
		} else {
			next.Reset(passEvery)
		}
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				return
			case <-next.C:
				waiting = false
			case <-changed:
				// A signal of a change the count already had before
				// this pass is stale.
				waiting = e.watched.Changes() == changes
			case now := <-leaseEnd.C:
				if end := e.currentLeaseEnd(); now.Before(end) {
					leaseEnd.Reset(end.Sub(now))
				} else {
					waiting = false
				}
			case <-e.wake:
				waiting = false
			case <-e.applied:
				waiting = e.sameInputs()
			}
		}
	}
}

// currentLeaseEnd is the end of the lease the last grant gave.
func (e *Executor) currentLeaseEnd() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leaseEnd
}

func (e *Executor) reconcile(ctx context.Context) {
	defer e.flush(ctx)
	p := e.currentPlan()
	// A VM the plan does not keep goes: at another epoch, the group runs
	// (or is about to) elsewhere. But not on the local state alone while
	// it may lag the leader's: an agent that restarts under VMs it left
	// running (qemu) replays its log from a snapshot, and for a while
	// does not know of the groups it got since. Until the first grant
	// since the start it kills nothing, and it never kills a VM the last
	// grant confirms: the lease gates every VM meanwhile, so waiting is
	// safe, and killing a VM the leader says is ours would be an outage.
	vms := map[string][]driver.Status{}
	all := e.drv.List()
	e.noteStates(all, time.Now())
	for _, st := range all {
		if !p.keeps(st) {
			e.busy = true
			if ep, ok := e.confirmedEpoch(st.ID.Group); !e.everGranted() || (ok && ep == st.Epoch) {
				continue
			}
			if holdsGuest(st.State) {
				e.log.Info("killing vm the node no longer owns", "vm", st.ID.String(), "epoch", st.Epoch)
				if err := e.drv.Kill(st.ID, st.Epoch); err != nil && !errors.Is(err, driver.ErrNotFound) {
					e.log.Warn("kill failed", "vm", st.ID.String(), "error", err)
					continue
				}
			}
			_ = e.drv.Forget(st.ID, st.Epoch)
			continue
		}
		vms[st.ID.Group] = append(vms[st.ID.Group], st)
	}
	for _, t := range p.tasks {
		if ctx.Err() != nil {
			return
		}
		switch t.action {
		case actionStop:
			if len(vms[t.name()]) > 0 {
				e.busy = true
			}
			e.stop(ctx, t.group, vms[t.name()])
		case actionRun:
			e.ensureRunning(ctx, t.group, vms[t.name()])
		}
	}
}

// currentPlan is the plan of the FSM's state now. The plan is a function
// of the state alone, so it is made again only when the index moved: the
// reconcile runs up to ten times a second, and at steady state nothing
// changes.
// The index is read first, so a plan that saw a newer state is made again
// on the next pass, never kept past a change.
func (e *Executor) currentPlan() plan {
	index := e.state.Index()
	if !e.planned || e.planIndex != index {
		groups := e.state.GroupsFor(e.node)
		e.plan = planFor(e.node, groups, e.state.Operation)
		e.planIndex, e.planned = index, true
		e.planInputs = e.inputs(groups)
	}
	return e.plan
}

// inputs are the records a plan of groups reads: the groups and their
// operations. The FSM replaces a record to change it, never writes into
// one (its snapshots share them), so the same pointers are the same
// records.
func (e *Executor) inputs(groups []*havenv1.Group) []any {
	out := make([]any, 0, 2*len(groups))
	for _, g := range groups {
		out = append(out, g, e.state.Operation(g.GetOperation()))
	}
	return out
}

// sameInputs reports whether the records the plan was made of are still
// the FSM's: then a command applied since changed nothing this node runs.
func (e *Executor) sameInputs() bool {
	if !e.planned {
		return false
	}
	index := e.state.Index()
	if index == e.planIndex {
		return true
	}
	now := e.inputs(e.state.GroupsFor(e.node))
	if len(now) != len(e.planInputs) {
		return false
	}
	for i := range now {
		if now[i] != e.planInputs[i] {
			return false
		}
	}
	// The plan holds at this index too.
	e.planIndex = index
	return true
}

// stop stops a group's VMs in reverse dependency order (a VM before one
// it depends on), then reports it offline.
func (e *Executor) stop(ctx context.Context, g *havenv1.Group, vms []driver.Status) {
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
	// VMs the spec no longer names (none today: a spec's disks change,
	// its VMs do not).
	for _, st := range byRes {
		if !e.stopVM(ctx, st) {
			return
		}
	}
	e.report(g, havenv1.GroupState_GROUP_STATE_OFFLINE, "stopped on request")
}

// holdsGuest reports whether a VM in state s still exists as a guest that
// a Stop or Kill must end.
func holdsGuest(s driver.State) bool {
	switch s {
	case driver.StateRunning, driver.StateFrozen, driver.StatePaused, driver.StateIncoming:
		return true
	}
	return false
}

func (e *Executor) stopVM(ctx context.Context, st driver.Status) bool {
	if holdsGuest(st.State) {
		if err := e.drv.Stop(ctx, st.ID, st.Epoch); err != nil {
			e.log.Warn("stop failed", "vm", st.ID.String(), "error", err)
			return false
		}
	}
	_ = e.drv.Forget(st.ID, st.Epoch)
	return true
}

func (e *Executor) ensureRunning(ctx context.Context, g *havenv1.Group, vms []driver.Status) {
	name, epoch := g.GetSpec().GetName(), g.GetEpoch()
	specs := vmSpecs(g, e.node)
	have := map[string]driver.Status{}
	for _, st := range vms {
		have[st.ID.Resource] = st
	}
	allUp, disksMatch := true, true
	var diskFailure error
	for _, spec := range specs {
		st, ok := have[spec.ID.Resource]
		if !ok || st.State != driver.StateRunning {
			e.busy = true
		}
		switch {
		case ok && st.State == driver.StateFrozen:
			allUp = false
			continue
		case ok && st.State == driver.StateRunning:
			match, err := e.syncDisks(ctx, g, spec)
			disksMatch = disksMatch && match
			if diskFailure == nil {
				diskFailure = err
			}
			continue
		case ok && (st.State == driver.StatePaused || st.State == driver.StateIncoming):
			// One end of a move: it runs again only by the move's end.
			allUp = false
			e.switchover(g, st)
			continue
		case ok && st.State == driver.StateCrashed:
			if !e.restartAllowed(g) {
				e.report(g, havenv1.GroupState_GROUP_STATE_FAILED, fmt.Sprintf("vm %s crashed on %s (%s): restart limit reached", spec.ID.Resource, e.node, st.Reason))
				return
			}
			e.log.Warn("vm crashed: restarting in place", "vm", spec.ID.String(), "reason", st.Reason)
			_ = e.drv.Forget(spec.ID, st.Epoch)
		}
		if fsm.MovingFrom(e.state.Operation(g.GetOperation()), e.node) {
			// The move's source lost its VM (a restarted agent): its state
			// may be on the target already, so nothing starts here until
			// the move has ended.
			return
		}
		end, ok := e.mayRun(name, epoch, time.Now(), true)
		if !ok {
			// No grant confirms this epoch yet: ask for one now rather
			// than at the next renewal, a quarter lease away.
			if key := fmt.Sprintf("%s@%d", name, epoch); key != e.asked {
				e.asked = key
				e.log.Debug("waiting for a grant of the group's epoch", "group", name, "epoch", epoch)
			}
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
			e.log.Warn("start failed", "vm", spec.ID.String(), "epoch", epoch, "error", err)
			// A disk claimed by a newer epoch fences this one for good,
			// and a spec the driver refuses stays refused: retrying
			// cannot help.
			final := errors.Is(err, driver.ErrStaleEpoch) || errors.Is(err, driver.ErrInvalidSpec)
			if e.startFailed(g, time.Now(), final) {
				reason := fmt.Sprintf("vm %s could not start on %s: %v", spec.ID.Resource, e.node, err)
				if errors.Is(err, driver.ErrStaleEpoch) {
					reason = fmt.Sprintf("vm %s fenced on %s: %v", spec.ID.Resource, e.node, err)
				}
				e.report(g, havenv1.GroupState_GROUP_STATE_FAILED, reason)
			}
			return
		}
		e.log.Info("vm started", "vm", spec.ID.String(), "epoch", epoch)
	}
	if allUp {
		e.startSucceeded(g)
		if g.GetState() == havenv1.GroupState_GROUP_STATE_STARTING {
			if op := e.state.Operation(g.GetOperation()); fsm.InFlight(op) && fsm.Committed(op) && op.GetTarget() == e.node &&
				e.held(havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_RESUMED, op.GetId()) {
				e.busy = true
				return
			}
			e.report(g, havenv1.GroupState_GROUP_STATE_ONLINE, "")
		}
	}
	if !disksMatch || diskFailure != nil {
		e.busy = true
	}
	e.endDiskChange(ctx, g, specs, allUp && disksMatch, diskFailure)
}

// switchover ends a pause or an incoming VM of an owned group: the target
// of a committed move activates its VM once a grant confirms the new
// epoch; the source of a move that ended without committing resumes its
// paused VM. Either waits while the move is in flight: a paused source
// may have handed its state over, and the plan keeps an incoming VM at the
// owner's epoch only when the committed move vouches for it.
func (e *Executor) switchover(g *havenv1.Group, st driver.Status) {
	sw, ok := e.drv.(driver.Switcher)
	if !ok {
		return
	}
	name, epoch := g.GetSpec().GetName(), g.GetEpoch()
	if st.Epoch != epoch {
		return
	}
	op := e.state.Operation(g.GetOperation())
	switch {
	case st.State == driver.StateIncoming && fsm.InFlight(op) && fsm.Committed(op) && op.GetTarget() == e.node && op.GetTargetEpoch() == epoch:
		end, ok := e.mayRun(name, epoch, time.Now(), false)
		if !ok {
			select {
			case e.renewNow <- struct{}{}:
			default:
			}
			return
		}
		if e.held(havenv1.MoveHoldPhase_MOVE_HOLD_PHASE_COMMITTED, op.GetId()) {
			return
		}
		if err := sw.Activate(st.ID, epoch, end); err != nil {
			e.log.Warn("activation refused", "vm", st.ID.String(), "epoch", epoch, "error", err)
			return
		}
		e.log.Info("vm activated after move", "vm", st.ID.String(), "epoch", epoch, "operation", op.GetId())
		if op.GetKind() == havenv1.MoveKind_MOVE_KIND_QUICK {
			e.removeStateFiles(op.GetId())
		}
	case st.State == driver.StatePaused && !fsm.InFlight(op):
		end, ok := e.mayRun(name, epoch, time.Now(), false)
		if !ok {
			return
		}
		if err := sw.Resume(st.ID, epoch, end); err != nil {
			e.log.Warn("resume refused", "vm", st.ID.String(), "epoch", epoch, "error", err)
			return
		}
		e.log.Info("vm resumed: move rolled back", "vm", st.ID.String(), "epoch", epoch)
	}
}

// stillWanted re-reads the group just before a start: an operator's stop
// (or a move) applied since this pass read the state must win. What is
// started after this check and stopped a moment later is the race the
// FSM closes: the start's "online" report is refused, and the next pass
// sees the stop.
func (e *Executor) stillWanted(g *havenv1.Group) bool {
	cur := e.state.Group(g.GetSpec().GetName())
	return cur != nil && cur.GetOwner() == e.node && cur.GetEpoch() == g.GetEpoch() &&
		cur.GetDesiredIndex() == g.GetDesiredIndex() && fsm.WantsRun(cur) &&
		(cur.GetState() == havenv1.GroupState_GROUP_STATE_STARTING || cur.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE)
}

func startKey(g *havenv1.Group) string {
	return fmt.Sprintf("%s@%d/%d", g.GetSpec().GetName(), g.GetEpoch(), g.GetDesiredIndex())
}

// startDue reports whether a start may be tried now: not while a failed
// one backs off.
func (e *Executor) startDue(g *havenv1.Group, now time.Time) bool {
	f := e.startFails[g.GetSpec().GetName()]
	return f == nil || f.key != startKey(g) || !now.Before(f.next)
}

// startFailed counts a failed start and reports whether the group should
// now be reported failed: the attempts are used up, or final says that
// retrying cannot help.
func (e *Executor) startFailed(g *havenv1.Group, now time.Time, final bool) bool {
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

func (e *Executor) startSucceeded(g *havenv1.Group) {
	delete(e.startFails, g.GetSpec().GetName())
}

// restartAllowed counts an in-place restart against the group's policy: at
// most max_restarts within period; with no policy, one per minute.
func (e *Executor) restartAllowed(g *havenv1.Group) bool {
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

// report queues a report to the leader for the end of this reconcile,
// once per (group, epoch, desired index, state).
func (e *Executor) report(g *havenv1.Group, st havenv1.GroupState, reason string) {
	name := g.GetSpec().GetName()
	r := report{epoch: g.GetEpoch(), desiredIndex: g.GetDesiredIndex(), state: st}
	e.mu.Lock()
	sent := e.reported[name] == r
	e.mu.Unlock()
	if sent {
		return
	}
	e.outbox = append(e.outbox, outgoing{r: r, req: &havenv1.ReportGroupRequest{
		Node: e.node, Name: name, Epoch: g.GetEpoch(), DesiredIndex: g.GetDesiredIndex(), State: st, Reason: reason,
	}})
}

// flush sends the reconcile's reports all at once and waits for them. The
// leader commits each through Raft, and commits under way together share
// one log write and one round of replication (hashicorp/raft's group
// commit); one after another, a node handed 25 groups by a failover on a
// busy machine spent more than a second reporting them online. A report
// that fails is sent again by a later reconcile.
func (e *Executor) flush(ctx context.Context) {
	out := e.outbox
	e.outbox = nil
	if len(out) > 0 {
		e.busy = true
	}
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxReports)
	for _, o := range out {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			if err := e.send(ctx, o.req); err != nil {
				e.log.Debug("report failed; will retry", "group", o.req.GetName(), "state", o.r.state, "error", err)
				return
			}
			e.mu.Lock()
			e.reported[o.req.GetName()] = o.r
			e.mu.Unlock()
		}()
	}
	wg.Wait()
}

// vmSpecs turns a group's VM resources into driver specs; every VM of the
// group gets every disk of the group but one a pending detach takes away.
func vmSpecs(g *havenv1.Group, node string) []driver.VMSpec {
	var disks []driver.DiskSpec
	gone := detaching(g)
	for _, r := range g.GetSpec().GetResources() {
		if d := r.GetDisk(); d != nil && r.GetName() != gone {
			disks = append(disks, driver.DiskSpec{Name: r.GetName(), Path: d.GetPath(), SizeBytes: d.GetSizeBytes(), Format: d.GetFormat(), Slot: int(d.GetSlot())})
		}
	}
	var out []driver.VMSpec
	for _, r := range orderedResources(g.GetSpec()) {
		vm := r.GetVm()
		if vm == nil {
			continue
		}
		out = append(out, driver.VMSpec{
			ID:          driver.VMID{Group: g.GetSpec().GetName(), Resource: r.GetName()},
			Node:        node,
			Epoch:       g.GetEpoch(),
			VCPUs:       int(vm.GetVcpus()),
			MemoryBytes: vm.GetMemoryBytes(),
			Disks:       disks,
			Boot:        driver.Boot{Kernel: vm.GetKernel(), Initrd: vm.GetInitrd(), Cmdline: vm.GetCmdline()},
			Machine:     vm.GetMachine(),
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
