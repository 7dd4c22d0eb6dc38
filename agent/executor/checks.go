package executor

import (
	"context"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The node's checks: which groups this node's driver cannot run (a kernel
// missing here, a machine type this node's QEMU lacks), asked of the
// driver (driver.Checker) for every group the node may be given, and
// reported to the leader, whose placement then keeps those groups off this
// node. A group's spec is checked when it is new or changed, and all of
// them again every CheckEvery, because a file may appear or go without any
// change to the FSM. The report goes only when it says something new: the
// refusals differ from the node's record, or a group was created since the
// last report (a start waits for that, see leader.awaitChecks). The leader
// commits only the first kind.

// DefaultCheckEvery is how often every spec is checked again.
const DefaultCheckEvery = 30 * time.Second

// checkGap is the least time between two passes. A pass reads every
// group, and groups are created hundreds a second when a cluster is
// provisioned: one pass per commit would cost every node O(groups) per
// commit. A start waits for the pass that follows its group's creation
// (leader.awaitChecks), at most this much longer.
const checkGap = 200 * time.Millisecond

// maxReason bounds one refusal's reason: the record of a node holds one
// per group it cannot run.
const maxReason = 300

// checked is one group's verdict, for the spec it was made on.
type checked struct {
	spec        *havenv1.GroupSpec
	createIndex uint64
	reason      string // empty: the driver can run it
}

// checkState is the checking goroutine's own.
type checkState struct {
	byGroup map[string]checked
	// full is when every spec was last checked afresh; index the FSM
	// index of the last pass that reported what it had to (0: report
	// again on the next pass).
	full  time.Time
	index uint64
	// reported is the newest creation the last delivered report covered:
	// the leader keeps a report that changes no refusal in its memory
	// only, so the node's record does not show it.
	reported uint64
}

func (e *Executor) runChecks(ctx context.Context) {
	if e.reportChecks == nil {
		return
	}
	tick := time.NewTicker(e.checkEvery / 10)
	defer tick.Stop()
	var cs checkState
	for {
		passed := time.Now()
		e.checkPass(ctx, &cs, passed)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-e.checkWake:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(passed.Add(checkGap))):
		}
	}
}

// checkPass checks what changed since the last pass (everything once
// CheckEvery has passed) and reports the node's refusals if the FSM's
// record of them is not what they are.
func (e *Executor) checkPass(ctx context.Context, cs *checkState, now time.Time) {
	index := e.state.Index()
	full := now.Sub(cs.full) >= e.checkEvery
	if !full && index == cs.index {
		return
	}
	if full {
		cs.full = now
	}
	next := map[string]checked{}
	var refusals []*havenv1.GroupRefusal
	var newest uint64
	for _, g := range e.state.Groups() {
		spec := g.GetSpec()
		if owners := spec.GetPossibleOwners(); len(owners) > 0 && !containsString(owners, e.node) {
			continue // placement keeps it off this node anyway
		}
		name := spec.GetName()
		c, ok := cs.byGroup[name]
		if full || !ok || c.createIndex != g.GetCreateIndex() || (c.spec != spec && !proto.Equal(c.spec, spec)) {
			c = checked{spec: spec, createIndex: g.GetCreateIndex(), reason: e.cannotRun(g)}
		}
		next[name] = c
		newest = max(newest, g.GetCreateIndex())
		if c.reason != "" {
			refusals = append(refusals, &havenv1.GroupRefusal{Group: name, CreateIndex: c.createIndex, Reason: c.reason})
		}
	}
	cs.byGroup = next
	rec := e.state.Node(e.node)
	if rec == nil {
		// The leader has not recorded this node yet; its record comes as
		// a command, which is a new index and a new pass.
		cs.index = index
		return
	}
	if max(rec.GetCheckedIndex(), cs.reported) >= newest && fsm.SameRefusals(rec.GetCannotRun(), refusals) {
		cs.index = index
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := e.reportChecks(ctx, &havenv1.ReportChecksRequest{Node: e.node, CheckedIndex: index, CannotRun: refusals})
	if err != nil {
		// Again on the next pass: no leader, or one just elected.
		e.log.Debug("checks report not delivered", "error", err)
		cs.index = 0
		return
	}
	cs.index, cs.reported = index, newest
	for _, r := range refusals {
		e.log.Info("the driver cannot run a group here", "group", r.GetGroup(), "reason", r.GetReason())
	}
}

// cannotRun says why the driver cannot run g's VMs on this node now, or
// "" when it can (or cannot tell: a driver that is no Checker is asked
// only what Start would refuse of the spec itself).
func (e *Executor) cannotRun(g *havenv1.Group) string {
	for _, spec := range vmSpecs(g, e.node) {
		// The epoch a start here would give it: a group never assigned
		// is at 0, which no VM runs at.
		spec.Epoch = g.GetEpoch() + 1
		var err error
		if e.checker != nil {
			err = e.checker.CanRun(spec)
		} else {
			err = spec.Validate()
		}
		if err != nil {
			why := spec.ID.Resource + ": " + strings.TrimPrefix(err.Error(), driver.ErrInvalidSpec.Error()+": ")
			if len(why) > maxReason {
				why = why[:maxReason] + "…"
			}
			return why
		}
	}
	return ""
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
