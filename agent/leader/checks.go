package leader

import (
	"sync"
	"time"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// What nodes report their drivers cannot run (a kernel missing there, a
// machine type their QEMU lacks): every node checks every group's VMs
// with its driver (executor/checks.go) and reports the refusals, which the
// FSM keeps in the node's record. Placement keeps a group off the nodes
// that refused it, with their reasons, instead of trying a start there,
// waiting for it to fail and holding the node off for an hour.

// checkedIndexes is how far each node has checked the specs, as it last
// reported to this leader. A report that changes nothing but the index
// goes here and not to the log: with every node reporting after every
// group created, logging them would make one creation N commits. The
// index only tells a start whether to wait for the nodes' checks
// (awaitChecks); a new leader that has not heard a node yet falls back to
// the index in the node's record, and at worst waits checksWait once.
type checkedIndexes struct {
	mu sync.Mutex
	at map[string]uint64
}

func (c *checkedIndexes) note(node string, index uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at == nil {
		c.at = map[string]uint64{}
	}
	c.at[node] = max(c.at[node], index)
}

func (c *checkedIndexes) get(node string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at[node]
}

// ReportChecks records a node's report of the groups its driver cannot
// run, checked against the group specs at req's index. Only a change of
// the refusals is committed.
func (l *Leader) ReportChecks(req *havenv1.ReportChecksRequest) error {
	if l.current() == nil {
		return ErrNotLeader
	}
	if n := l.state.Node(req.GetNode()); n != nil && fsm.SameRefusals(n.GetCannotRun(), req.GetCannotRun()) {
		l.checks.note(req.GetNode(), req.GetCheckedIndex())
		return nil
	}
	defer l.checks.note(req.GetNode(), req.GetCheckedIndex())
	if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_SetNodeChecks{SetNodeChecks: &havenv1.SetNodeChecksCommand{
		Name: req.GetNode(), CheckedIndex: req.GetCheckedIndex(), CannotRun: req.GetCannotRun(),
	}}}); err != nil {
		return err
	}
	l.log.Debug("node checks recorded", "node", req.GetNode(), "checked_index", req.GetCheckedIndex(), "cannot_run", len(req.GetCannotRun()))
	return nil
}

// nodeRefusals indexes the nodes' refusals by group, then node. A refusal of
// a group deleted since, whose name a new group took, is not the new
// group's: its create index differs.
func nodeRefusals(nodes []*havenv1.Node, groups []*havenv1.Group) map[string]map[string]string {
	// The create indexes of the groups refused only: this runs at every
	// placement decision, over every group, and refusals are few.
	refused := map[string]bool{}
	for _, n := range nodes {
		for _, r := range n.GetCannotRun() {
			refused[r.GetGroup()] = true
		}
	}
	if len(refused) == 0 {
		return nil
	}
	created := make(map[string]uint64, len(refused))
	for _, g := range groups {
		if refused[g.GetSpec().GetName()] {
			created[g.GetSpec().GetName()] = g.GetCreateIndex()
		}
	}
	out := map[string]map[string]string{}
	for _, n := range nodes {
		for _, r := range n.GetCannotRun() {
			if ci, ok := created[r.GetGroup()]; !ok || ci != r.GetCreateIndex() {
				continue
			}
			if out[r.GetGroup()] == nil {
				out[r.GetGroup()] = map[string]string{}
			}
			out[r.GetGroup()][n.GetName()] = r.GetReason()
		}
	}
	return out
}

// cannotRun is what the nodes refused of the group named name.
func (l *Leader) cannotRun(name string) map[string]string {
	g := l.state.Group(name)
	if g == nil {
		return nil
	}
	return nodeRefusals(l.state.Nodes(), []*havenv1.Group{g})[name]
}

// checksWait bounds how long a start waits for the node it chose to check
// a group that node has not seen yet (one created just before, say): a
// node reports within a check pass of applying the group, and a node that
// cannot run it is better left out now than tried and held off for an
// hour. A node that has not reported by then is tried as before: its
// start fails and reports why.
const checksWait = 2 * time.Second

// awaitChecks waits, until deadline at the latest, for checked to hold.
func awaitChecks(checked func() bool, deadline time.Time) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !checked() && time.Now().Before(deadline) {
		<-tick.C
	}
}

// checksSeen is which nodes had checked the specs up to a group's index
// when a decision on it began. A decision is judged by what it saw: a
// report that lands while it decides is not in the state it decided on,
// and counting it would make a refusal final, or send a start to a node,
// on a stale reading of that node's refusals.
type checksSeen struct {
	checked map[string]bool
	all     bool // every alive node that may host groups had
}

// checksAt is which nodes have checked the specs up to index now.
func (l *Leader) checksAt(index uint64) checksSeen {
	s := checksSeen{checked: map[string]bool{}, all: true}
	for _, m := range l.cfg.Members.Members() {
		ok := l.checkedBy(m.Name, index)
		s.checked[m.Name] = ok
		if !ok && !m.Meta.Witness && m.State == heartbeat.StateAlive {
			s.all = false
		}
	}
	return s
}

// checkedBy reports whether node has checked the specs up to index. A
// start waits for the node it chose only, not for every node: the slowest
// of a hundred agents, each reporting after its own check pass, held
// every start for most of checksWait while groups were created by the
// thousand. A node that refuses the group is left out of the decision
// made again once its report is in.
func (l *Leader) checkedBy(node string, index uint64) bool {
	return max(l.state.Node(node).GetCheckedIndex(), l.checks.get(node)) >= index
}
