package executor

import (
	"sort"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The plan is what the FSM says this node should do with each group it
// has a part in, decided from the FSM alone, apart from the driver calls
// that carry it out. A node has a part in a group as its owner (it runs
// the group at its epoch, or stops it) and as the target of a move in
// flight: its incoming VMs at the move's target epoch are kept, never run
// before the commit and never killed before the move ends. An incoming VM
// no move vouches for (one left by a move rolled back) goes, even at the
// owner's epoch: its memory may be half copied.

type action int

const (
	// actionRun: the group runs here at its epoch.
	actionRun action = iota + 1
	// actionStop: the group stops here, then is reported offline.
	actionStop
)

// task is one group's action on this node.
type task struct {
	group  *havenv1.Group
	action action
}

func (t task) name() string { return t.group.GetSpec().GetName() }

// plan is every task of this node, in name order, and the epoch each VM
// the node may keep must be at.
type plan struct {
	tasks []task
	// epochs lists, per group, the epochs at which its VMs are kept.
	epochs map[string][]uint64
	// incoming is, per group, the epoch at which an incoming VM is kept:
	// the target epoch of a move in flight to this node.
	incoming map[string]uint64
}

func planFor(node string, groups []*havenv1.Group, ops func(id string) *havenv1.Operation) plan {
	p := plan{epochs: map[string][]uint64{}, incoming: map[string]uint64{}}
	for _, g := range groups {
		if op := ops(g.GetOperation()); fsm.InFlight(op) && op.GetTarget() == node {
			p.incoming[g.GetSpec().GetName()] = op.GetTargetEpoch()
		}
		if g.GetOwner() != node || !fsm.Active(g.GetState()) {
			continue
		}
		a := actionRun
		if g.GetState() == havenv1.GroupState_GROUP_STATE_STOPPING {
			a = actionStop
		}
		p.tasks = append(p.tasks, task{group: g, action: a})
		p.epochs[g.GetSpec().GetName()] = append(p.epochs[g.GetSpec().GetName()], g.GetEpoch())
	}
	sort.Slice(p.tasks, func(i, j int) bool { return p.tasks[i].name() < p.tasks[j].name() })
	return p
}

// keeps reports whether the VM has a place in the plan: an incoming VM
// when a move to this node vouches for it, any other when its group has a
// task here at the VM's epoch.
func (p plan) keeps(st driver.Status) bool {
	if st.State == driver.StateIncoming {
		ep, ok := p.incoming[st.ID.Group]
		return ok && ep == st.Epoch
	}
	for _, ep := range p.epochs[st.ID.Group] {
		if ep == st.Epoch {
			return true
		}
	}
	return false
}
