package leader

import (
	"fmt"
	"sort"
	"time"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Failback brings a group that failed over back to a more preferred owner
// once that node has been up for placement.failback_after, when the
// group's policy allows it now (immediately, or inside its daily window).
// It moves the group live, as a drain does (planned.go); a group that
// cannot move is restarted there in two committed steps, so a leader
// change between them loses nothing: the group is stopped on its owner
// with move_to naming the target, and once the owner reports it offline
// it is assigned to the target at a new epoch.

// failbackAllowed reports whether a group's policy lets it move back at
// now (UTC hours; a window may wrap midnight).
func failbackAllowed(fb *havenv1.FailbackPolicy, now time.Time) bool {
	switch fb.GetMode() {
	case havenv1.FailbackMode_FAILBACK_MODE_IMMEDIATE:
		return true
	case havenv1.FailbackMode_FAILBACK_MODE_WINDOW:
		h, from, to := uint32(now.UTC().Hour()), fb.GetWindowStartHour(), fb.GetWindowEndHour()
		if from <= to {
			return h >= from && h < to
		}
		return h >= from || h < to
	}
	return false
}

// failback starts the planned moves back to preferred owners, and finishes
// the planned restarts whose group is now offline.
func (l *Leader) failback(t *term, now time.Time) {
	l.finishMoves()
	var candidates bool
	for _, g := range l.state.Groups() {
		if g.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE && len(g.GetSpec().GetPreferredOwners()) > 0 && failbackAllowed(g.GetSpec().GetFailback(), now) {
			candidates = true
			break
		}
	}
	if !candidates {
		return
	}
	// The decision and its commits under one hold of placeMu: a start
	// placed in between would be placed on a view without these moves.
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	st := l.placementState()
	holders := l.leaseHolders(st, now)
	// Only nodes up and renewing for failback_after may receive a group
	// back; the others are taken out of this computation.
	for i, n := range st.Nodes {
		fn := l.state.Node(n.Name)
		settled := fn != nil && now.Sub(fn.GetStatusTime().AsTime()) >= l.cfg.FailbackAfter
		if !holders[n.Name] || !settled {
			st.Nodes[i].Draining = true
		}
	}
	busy := l.movesBusy()
	for _, m := range placement.Failback(st) {
		g := l.state.Group(m.Group)
		if g == nil || g.GetState() != havenv1.GroupState_GROUP_STATE_ONLINE || !fsm.WantsRun(g) || g.GetOwner() != m.From ||
			g.GetOperation() != "" || !failbackAllowed(g.GetSpec().GetFailback(), now) {
			continue
		}
		if l.plannedMove(t, g, m.To, causeFailback, busy) == started {
			l.log.Info("failing back", "group", m.Group, "from", m.From, "to", m.To)
		}
	}
}

// finishMoves assigns every group that stopped for a planned move
// (failback, drain) to its target, or, when the target can no longer take
// it, wherever it fits. Each placement and its commit hold placeMu
// together, so a concurrent start sees the room the move took.
func (l *Leader) finishMoves() {
	for _, g := range l.state.Groups() {
		if g.GetState() == havenv1.GroupState_GROUP_STATE_OFFLINE && g.GetMoveTo() != "" && fsm.WantsRun(g) {
			l.finishMove(g)
		}
	}
}

func (l *Leader) finishMove(g *havenv1.Group) {
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	name, from, to := g.GetSpec().GetName(), g.GetOwner(), g.GetMoveTo()
	st := l.placementState()
	targets, why := placeGroups(st, []string{name}, nil, map[string]bool{to: true})
	owner, state, reason := targets[name], havenv1.GroupState_GROUP_STATE_STARTING, fmt.Sprintf("moved from %s", from)
	if owner != to {
		reason = fmt.Sprintf("planned move to %s no longer possible; placed again", to)
	}
	if owner == "" {
		state, reason = havenv1.GroupState_GROUP_STATE_FAILED, fmt.Sprintf("planned move to %s: no node can host it: %s", to, why[name])
	}
	if err := l.apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner, State: state, Reason: reason,
	}}}); err != nil {
		l.log.Warn("planned move not committed", "group", name, "to", to, "error", err)
		return
	}
	if owner != "" {
		l.leases.Assigned(name, time.Now())
	}
	l.log.Info("moved", "group", name, "from", from, "to", owner)
}

// drainable is what a drain of node moves: its online groups that are
// meant to run and not already moving, by name, and their names most
// important first.
func (l *Leader) drainable(node string) ([]string, map[string]*havenv1.Group) {
	var names []string
	groups := map[string]*havenv1.Group{}
	for _, g := range l.state.Groups() {
		if g.GetOwner() == node && g.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE && g.GetMoveTo() == "" && g.GetOperation() == "" && fsm.WantsRun(g) {
			names = append(names, g.GetSpec().GetName())
			groups[g.GetSpec().GetName()] = g
		}
	}
	sort.Slice(names, func(i, j int) bool {
		pi, pj := placementPriority(groups[names[i]].GetSpec().GetPriority()), placementPriority(groups[names[j]].GetSpec().GetPriority())
		if pi != pj {
			return pi < pj
		}
		return names[i] < names[j]
	})
	return names, groups
}

// drain moves every online group off a draining node, most important
// first, to where placement puts it with the node left out (planned.go
// says how and how many at once). A group no other node can take stays
// where it is, and the node stays draining: the operator sees it in the
// node's group list.
func (l *Leader) drain(t *term, now time.Time) {
	for _, n := range l.state.Nodes() {
		if n.GetDraining() {
			l.drainNode(t, n.GetName(), now)
		}
	}
}

// drainNode starts the planned moves off one draining node; placement and
// commits hold placeMu together, as in finishMove.
func (l *Leader) drainNode(t *term, node string, now time.Time) {
	names, groups := l.drainable(node)
	if len(names) == 0 {
		return
	}
	l.placeMu.Lock()
	defer l.placeMu.Unlock()
	st := l.placementState()
	key := stateKey(st, placement.Spec{})
	memo := t.drainMemo
	if memo[node] == key {
		// Nothing changed since the last pass, which left groups here.
		return
	}
	targets, why := placeGroups(st, names, []string{node}, l.leaseHolders(st, now))
	busy := l.movesBusy()
	memo[node] = 0
	for _, name := range names {
		to := targets[name]
		if to == "" {
			memo[node] = key
			l.log.Warn("drain: group has nowhere to go", "node", node, "group", name, "reason", why[name])
			continue
		}
		switch l.plannedMove(t, groups[name], to, causeDrain, busy) {
		case started:
			l.log.Info("draining", "node", node, "group", name, "to", to)
		case busyLinks, refused:
			// For a pass on a changed state: a move's end changes it.
			memo[node] = key
		}
	}
}
