package agent

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The leader's group duties: place groups on start, restart the groups of
// fenced nodes elsewhere, act on the owners' reports.

var priorityRank = map[havenv1.Priority]int{
	havenv1.Priority_PRIORITY_HIGH:          0,
	havenv1.Priority_PRIORITY_MEDIUM:        1,
	havenv1.Priority_PRIORITY_UNSPECIFIED:   1,
	havenv1.Priority_PRIORITY_LOW:           2,
	havenv1.Priority_PRIORITY_NO_AUTO_START: 3,
}

// groupsLoop runs while this node leads and its barrier is applied.
func (a *Agent) groupsLoop(ctx context.Context, stop <-chan struct{}) {
	const every = 100 * time.Millisecond
	tick := time.NewTicker(every)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		if now.Sub(last) > 5*every {
			// This process could not run (SIGSTOP, starvation): nodes
			// could not renew with it either.
			a.log.Warn("leader stalled; restarting every node's silence", "stalled", now.Sub(last).Round(time.Millisecond))
			a.leases.mu.Lock()
			if a.leases.grants != nil {
				a.leases.grants.Stalled(now)
			}
			a.leases.mu.Unlock()
		}
		last = now
		a.failover(now)
		a.placeWaiting()
	}
}

// failover moves the groups of every node that has been silent past its
// failover time. The decision and marking the groups pending happen under
// the lease lock, so no grant can list them from then on (step 5).
func (a *Agent) failover(now time.Time) {
	byOwner := map[string][]*havenv1.Group{}
	for _, g := range a.fsm.Groups() {
		if o := g.GetOwner(); o != "" && o != a.cfg.Name && active(g.GetState()) {
			byOwner[o] = append(byOwner[o], g)
		}
	}
	var moving []*havenv1.Group
	a.leases.mu.Lock()
	if a.leases.grants == nil || !a.leases.grants.CanGrant() {
		a.leases.mu.Unlock()
		return
	}
	for owner, groups := range byOwner {
		if now.Before(a.leases.grants.FailoverAt(owner)) {
			continue
		}
		for _, g := range groups {
			if !a.leases.pending[g.GetSpec().GetName()] {
				a.leases.pending[g.GetSpec().GetName()] = true
				moving = append(moving, g)
			}
		}
	}
	a.leases.mu.Unlock()
	if len(moving) == 0 {
		return
	}
	sortByPriority(moving)
	load := a.load()
	for _, g := range moving {
		name, from := g.GetSpec().GetName(), g.GetOwner()
		var owner, reason string
		st := havenv1.GroupState_GROUP_STATE_STARTING
		switch {
		case g.GetState() == havenv1.GroupState_GROUP_STATE_STOPPING:
			st, reason = havenv1.GroupState_GROUP_STATE_OFFLINE, fmt.Sprintf("was stopping on %s, which failed", from)
		case g.GetSpec().GetPriority() == havenv1.Priority_PRIORITY_NO_AUTO_START:
			st, reason = havenv1.GroupState_GROUP_STATE_OFFLINE, fmt.Sprintf("owner %s failed; no-auto-start groups wait for an operator", from)
		default:
			var err error
			owner, err = a.place(g, load, map[string]bool{from: true}, "")
			if err != nil {
				st, reason = havenv1.GroupState_GROUP_STATE_FAILED, fmt.Sprintf("owner %s failed and %v", from, err)
			} else {
				reason = fmt.Sprintf("failed over from %s", from)
				load.add(owner, g)
			}
		}
		err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: name, ExpectEpoch: g.GetEpoch(), Owner: owner, State: st, Reason: reason,
		}}})
		a.leases.mu.Lock()
		delete(a.leases.pending, name)
		a.leases.mu.Unlock()
		if err != nil {
			a.log.Warn("failover not committed", "group", name, "from", from, "error", err)
			continue
		}
		a.log.Info("group failed over", "group", name, "from", from, "to", owner, "epoch", g.GetEpoch()+1, "state", st)
	}
}

// placeWaiting retries groups that failed for want of a node.
func (a *Agent) placeWaiting() {
	var waiting []*havenv1.Group
	for _, g := range a.fsm.Groups() {
		if g.GetState() == havenv1.GroupState_GROUP_STATE_FAILED && g.GetOwner() == "" {
			waiting = append(waiting, g)
		}
	}
	if len(waiting) == 0 {
		return
	}
	sortByPriority(waiting)
	load := a.load()
	for _, g := range waiting {
		owner, err := a.place(g, load, nil, "")
		if err != nil {
			continue
		}
		load.add(owner, g)
		if err := a.applyInternal(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: g.GetSpec().GetName(), ExpectEpoch: g.GetEpoch(), Owner: owner, State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "placed after waiting for a node",
		}}}); err != nil {
			a.log.Warn("placement not committed", "group", g.GetSpec().GetName(), "error", err)
		}
	}
}

func sortByPriority(gs []*havenv1.Group) {
	sort.SliceStable(gs, func(i, j int) bool {
		pi, pj := priorityRank[gs[i].GetSpec().GetPriority()], priorityRank[gs[j].GetSpec().GetPriority()]
		if pi != pj {
			return pi < pj
		}
		return gs[i].GetSpec().GetName() < gs[j].GetSpec().GetName()
	})
}

// loads is the demand already placed per node.
type loads map[string]*havenv1.Capacity

func (l loads) add(node string, g *havenv1.Group) {
	c := l[node]
	if c == nil {
		c = &havenv1.Capacity{}
		l[node] = c
	}
	c.CpuMillis += g.GetSpec().GetCpuMillis()
	c.MemoryBytes += g.GetSpec().GetMemoryBytes()
}

func (a *Agent) load() loads {
	l := loads{}
	for _, g := range a.fsm.Groups() {
		if g.GetOwner() != "" && active(g.GetState()) {
			l.add(g.GetOwner(), g)
		}
	}
	return l
}

// place picks a node for g: alive in gossip, not a witness, a possible
// owner, with room for the demand (memory is never overcommitted; CPU up to
// 4x). Nodes holding a current lease come first, since they can start the
// group at once (a node without one starts it after its next renewal);
// then preferred owners in their order; then the least loaded by memory.
// This is the simple placement the placement package replaces.
func (a *Agent) place(g *havenv1.Group, load loads, exclude map[string]bool, want string) (string, error) {
	spec := g.GetSpec()
	alive := map[string]bool{}
	for _, m := range a.gossip.Members() {
		alive[m.Name] = m.State == heartbeat.StateAlive
	}
	now := time.Now()
	var why []string
	type cand struct {
		name  string
		lease bool
		pref  int
		free  float64
	}
	var cands []cand
	for _, n := range a.fsm.Nodes() {
		name := n.GetName()
		if want != "" && name != want {
			continue
		}
		reject := func(r string) { why = append(why, name+": "+r) }
		switch {
		case exclude[name]:
			reject("excluded")
			continue
		case n.GetWitness():
			reject("witness")
			continue
		case !alive[name] || n.GetStatus() != havenv1.NodeStatus_NODE_STATUS_ALIVE:
			reject("not alive")
			continue
		case len(spec.GetPossibleOwners()) > 0 && !contains(spec.GetPossibleOwners(), name):
			reject("not a possible owner")
			continue
		}
		used := load[name]
		if used == nil {
			used = &havenv1.Capacity{}
		}
		capy := n.GetCapacity()
		if used.GetMemoryBytes()+spec.GetMemoryBytes() > capy.GetMemoryBytes() {
			reject(fmt.Sprintf("memory: needs %d MiB, %d MiB free", spec.GetMemoryBytes()>>20, (capy.GetMemoryBytes()-used.GetMemoryBytes())>>20))
			continue
		}
		if used.GetCpuMillis()+spec.GetCpuMillis() > 4*capy.GetCpuMillis() {
			reject(fmt.Sprintf("cpu: needs %dm, %dm free at 4x overcommit", spec.GetCpuMillis(), 4*capy.GetCpuMillis()-used.GetCpuMillis()))
			continue
		}
		pref := len(spec.GetPreferredOwners())
		for i, p := range spec.GetPreferredOwners() {
			if p == name {
				pref = i
			}
		}
		free := float64(capy.GetMemoryBytes()-used.GetMemoryBytes()-spec.GetMemoryBytes()) / float64(max(capy.GetMemoryBytes(), 1))
		cands = append(cands, cand{name, a.leases.holds(name, now), pref, free})
	}
	if len(cands) == 0 {
		if len(why) == 0 {
			why = append(why, "no nodes")
		}
		return "", fmt.Errorf("no node can host it: %s", strings.Join(why, "; "))
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		switch {
		case a.lease != b.lease:
			return a.lease
		case a.pref != b.pref:
			return a.pref < b.pref
		case a.free != b.free:
			return a.free > b.free
		}
		return a.name < b.name
	})
	return cands[0].name, nil
}

// holds reports whether node renewed its lease with this leader recently
// enough to be running now.
func (l *leases) holds(node string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.grants != nil && now.Before(l.grants.LeaseEnd(node))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// handleReport applies an owner's report at its epoch. A group that failed
// on its owner after its restarts moves to another node.
func (a *Agent) handleReport(req *havenv1.ReportGroupRequest) error {
	g := a.fsm.Group(req.GetName())
	if g == nil {
		return status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	if g.GetOwner() != req.GetNode() || g.GetEpoch() != req.GetEpoch() {
		return status.Errorf(codes.FailedPrecondition, "group %q is owned by %q at epoch %d, not %q at %d", req.GetName(), g.GetOwner(), g.GetEpoch(), req.GetNode(), req.GetEpoch())
	}
	if req.GetState() == havenv1.GroupState_GROUP_STATE_FAILED {
		owner, err := a.place(g, a.load(), map[string]bool{req.GetNode(): true}, "")
		st, reason := havenv1.GroupState_GROUP_STATE_STARTING, req.GetReason()+"; failed over"
		if err != nil {
			st, reason = havenv1.GroupState_GROUP_STATE_FAILED, req.GetReason()+"; "+err.Error()
		}
		return a.commit(&havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
			Name: req.GetName(), ExpectEpoch: req.GetEpoch(), Owner: owner, State: st, Reason: reason,
		}}})
	}
	return a.commit(&havenv1.Command{Cmd: &havenv1.Command_SetGroupState{SetGroupState: &havenv1.SetGroupStateCommand{
		Name: req.GetName(), Epoch: req.GetEpoch(), State: req.GetState(), Reason: req.GetReason(),
	}}})
}

// commit proposes c and maps a refusal to its status.
func (a *Agent) commit(c *havenv1.Command) error {
	res, err := a.propose(c)
	if err != nil {
		return err
	}
	if res.Err != nil {
		return fsmError(res.Err)
	}
	return nil
}
