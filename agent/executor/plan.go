package executor

import (
	"sort"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The plan is what the FSM says this node should do with each group it
// has a part in, decided from the FSM alone, apart from the driver calls
// that carry it out. Today a node has a part in a group only as its owner:
// it runs the group at its epoch, or stops it. An operation in flight (a
// migration's source or target) adds its own action and its own epoch
// here, beside the owner's, and keeps the VMs it needs.

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
}

func planFor(node string, groups []*havenv1.Group) plan {
	p := plan{epochs: map[string][]uint64{}}
	for _, g := range groups {
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

// keeps reports whether the VM has a place in the plan: its group has a
// task here at the VM's epoch.
func (p plan) keeps(st driver.Status) bool {
	for _, ep := range p.epochs[st.ID.Group] {
		if ep == st.Epoch {
			return true
		}
	}
	return false
}
