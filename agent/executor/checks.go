package executor

import (
	"context"
	"maps"
	"slices"
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
// change to the FSM; not so for a driver whose verdicts depend on the spec
// alone (driver.SpecOnlyChecker): at 10,000 groups those repeated checks
// were an eighth of an idle agent's CPU, for answers that could not
// change. The report goes only when it says something new: the
// refusals differ from the node's record, or a group was created since the
// last report (a start waits for that, see leader.awaitChecks). The leader
// commits only the first kind.

// DefaultCheckEvery is how often every spec is checked again.
const DefaultCheckEvery = 30 * time.Second

// checkGap is the least time between two passes. A pass reads the groups
// changed since the last one, and every group once CheckEvery has
// passed; groups are created hundreds a second when a cluster is
// provisioned, and a pass per commit would cost every node a report to
// the leader per commit. A start waits for the pass that follows its
// group's creation (leader.awaitChecks), at most this much longer.
const checkGap = 200 * time.Millisecond

// maxReason bounds one refusal's reason: the record of a node holds one
// per group it cannot run.
const maxReason = 300

// checked is one group's verdict, for the spec it was made on.
type checked struct {
	spec        *havenv1.GroupSpec
	createIndex uint64
	reason      string // empty: the driver can run it
	pass        uint64 // the full pass that last saw the group
}

// checkState is the checking goroutine's own.
type checkState struct {
	// byGroup holds the verdict on every group this node may be given, as
	// of the FSM index seen; refused names those the driver cannot run;
	// newest is the newest creation among them. A pass between two full
	// ones reads only the groups changed after seen (GroupsChangedAfter):
	// reading every group on every commit was, at 64 nodes, most of what
	// a node did while groups were created. A deleted group is dropped
	// from refused at once and from byGroup at the next full pass.
	byGroup map[string]checked
	refused map[string]bool
	seen    uint64
	newest  uint64
	// full is when every spec was last checked afresh; index the FSM
	// index of the last pass that reported what it had to (0: report
	// again on the next pass).
	full  time.Time
	pass  uint64
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
	full := cs.byGroup == nil || now.Sub(cs.full) >= e.checkEvery
	if !full && index == cs.index {
		return
	}
	if full {
		cs.full = now
		if cs.byGroup == nil {
			cs.byGroup = map[string]checked{}
		}
		// Every group of the pass is stamped with it; those that are not
		// were deleted.
		cs.pass++
		cs.refused, cs.newest = map[string]bool{}, 0
		for _, g := range e.state.Groups() {
			e.checkGroup(cs, g, true)
		}
		maps.DeleteFunc(cs.byGroup, func(_ string, c checked) bool { return c.pass != cs.pass })
	} else {
		var changed []*havenv1.Group
		e.state.GroupsChangedAfter(cs.seen, func(g *havenv1.Group) bool {
			changed = append(changed, g)
			return true
		})
		for _, g := range changed {
			e.checkGroup(cs, g, false)
		}
		for name := range cs.refused {
			if g := e.state.Group(name); g == nil || g.GetCreateIndex() != cs.byGroup[name].createIndex {
				delete(cs.refused, name)
				delete(cs.byGroup, name)
			}
		}
	}
	cs.seen = index
	refusals := make([]*havenv1.GroupRefusal, 0, len(cs.refused))
	for _, name := range slices.Sorted(maps.Keys(cs.refused)) {
		c := cs.byGroup[name]
		refusals = append(refusals, &havenv1.GroupRefusal{Group: name, CreateIndex: c.createIndex, Reason: c.reason})
	}
	rec := e.state.Node(e.node)
	if rec == nil {
		// The leader has not recorded this node yet; its record comes as
		// a command, which is a new index and a new pass.
		cs.index = index
		return
	}
	if max(rec.GetCheckedIndex(), cs.reported) >= cs.newest && fsm.SameRefusals(rec.GetCannotRun(), refusals) {
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
	cs.index, cs.reported = index, cs.newest
	for _, r := range refusals {
		e.log.Info("the driver cannot run a group here", "group", r.GetGroup(), "reason", r.GetReason())
	}
}

// checkGroup files the verdict on g, checking its spec again when full,
// new or changed.
func (e *Executor) checkGroup(cs *checkState, g *havenv1.Group, full bool) {
	spec := g.GetSpec()
	name := spec.GetName()
	if owners := spec.GetPossibleOwners(); len(owners) > 0 && !containsString(owners, e.node) {
		// Placement keeps it off this node anyway.
		delete(cs.byGroup, name)
		delete(cs.refused, name)
		return
	}
	c, ok := cs.byGroup[name]
	if full && !e.specOnly || !ok || c.createIndex != g.GetCreateIndex() || (c.spec != spec && !proto.Equal(c.spec, spec)) {
		c = checked{spec: spec, createIndex: g.GetCreateIndex(), reason: e.cannotRun(g)}
	}
	// The verdict holds the spec it now stands for: every command on a
	// group (its start, each report) copies the record, spec and all,
	// and a verdict left on the first copy compared every group's spec in
	// full on every pass (a third of an idle agent's CPU at 10,000 groups).
	c.spec = spec
	c.pass = cs.pass
	cs.byGroup[name] = c
	cs.newest = max(cs.newest, g.GetCreateIndex())
	if c.reason != "" {
		cs.refused[name] = true
	} else {
		delete(cs.refused, name)
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
