package agent

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"math"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The leader's side of placement/: it turns its view of the cluster (the
// FSM plus gossip) into a placement.State, asks the pure package, and
// commits what it decided. Every decision that places a group, together
// with its commit, runs under placeMu, so each sees the one before it:
// two StartGroups admitted against the same state could break the reserve
// together although each alone keeps it.

// placementPriority maps haven.v1.Priority onto placement's order, lower
// first. No-auto-start groups come last and are not HA.
func placementPriority(p havenv1.Priority) int {
	switch p {
	case havenv1.Priority_PRIORITY_HIGH:
		return 1
	case havenv1.Priority_PRIORITY_LOW:
		return 3
	case havenv1.Priority_PRIORITY_NO_AUTO_START:
		return 4
	}
	return 2 // medium and unspecified
}

// placementGroup is a group spec as placement sees it. dirtyRate is what
// the balancer assumes the guest dirties per second (drivers do not report
// it yet).
func placementGroup(spec *havenv1.GroupSpec, dirtyRate int64) placement.Group {
	g := placement.Group{
		Name:                 spec.GetName(),
		CPUMillis:            spec.GetCpuMillis(),
		MemoryBytes:          spec.GetMemoryBytes(),
		Priority:             placementPriority(spec.GetPriority()),
		HA:                   spec.GetPriority() != havenv1.Priority_PRIORITY_NO_AUTO_START,
		PossibleOwners:       spec.GetPossibleOwners(),
		PreferredOwners:      spec.GetPreferredOwners(),
		PreferredSite:        spec.GetPreferredSite(),
		RequireLabels:        spec.GetNodeSelector(),
		DirtyRateBytesPerSec: dirtyRate,
	}
	for _, aa := range spec.GetAntiAffinity() {
		g.AntiAffinity = append(g.AntiAffinity, placement.Class{Name: aa.GetClass(), Hard: aa.GetHard(), AcrossSites: aa.GetAcrossSites()})
	}
	return g
}

// buildState is the placement state of the given FSM records. A node is Up
// when the FSM says alive (the leader wrote it from gossip, suspect
// included) and gossip calls it alive now (not suspect): placing a group
// on a node that may be dying only to fail it over again helps nobody.
// A group runs (is in Assign) while its owner may run it: starting, online
// or stopping. A group avoids the nodes it failed on within
// failureHoldOff of now.
func buildState(nodes []*havenv1.Node, groups []*havenv1.Group, gossipAlive map[string]bool, overcommit float64, dirtyRate int64, now time.Time) placement.State {
	st := placement.State{Assign: map[string]string{}}
	for _, n := range nodes {
		st.Nodes = append(st.Nodes, placement.Node{
			Name:          n.GetName(),
			Site:          n.GetSite(),
			CPUMillis:     n.GetCapacity().GetCpuMillis(),
			MemoryBytes:   n.GetCapacity().GetMemoryBytes(),
			CPUOvercommit: overcommit,
			Up:            n.GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE && gossipAlive[n.GetName()],
			Witness:       n.GetWitness(),
			Draining:      n.GetDraining(),
			Labels:        n.GetLabels(),
		})
	}
	for _, g := range groups {
		pg := placementGroup(g.GetSpec(), dirtyRate)
		pg.AvoidNodes = recentFailures(g, now)
		st.Groups = append(st.Groups, pg)
		if g.GetOwner() != "" && fsm.Active(g.GetState()) {
			st.Assign[g.GetSpec().GetName()] = g.GetOwner()
		}
	}
	return st
}

// placementState is the cluster as the leader sees it now. A member that
// gossip knows and the FSM does not yet is taken as gossip describes it:
// a new leader records the members only after its barrier, and a group
// started in between (a fresh cluster's first, say) must not find "no
// nodes".
func (a *Agent) placementState() placement.State {
	alive := map[string]bool{}
	nodes := a.fsm.Nodes()
	known := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		known[n.GetName()] = true
	}
	for _, m := range a.members.Members() {
		alive[m.Name] = m.State == heartbeat.StateAlive
		if !known[m.Name] {
			nodes = append(nodes, memberNode(m))
		}
	}
	return buildState(nodes, a.fsm.Groups(), alive, a.cfg.Placement.CPUOvercommit, a.cfg.Sim.DirtyRate, time.Now())
}

// withGroup returns st with g in place of the group of the same name, or
// added; st itself is not changed.
func withGroup(st placement.State, g placement.Group) placement.State {
	return withGroups(st, map[string]placement.Group{g.Name: g})
}

// withGroups returns st with each group of repl in place of the group of
// the same name, or added (in name order); st itself is not changed.
func withGroups(st placement.State, repl map[string]placement.Group) placement.State {
	out := st
	out.Groups = make([]placement.Group, 0, len(st.Groups)+len(repl))
	seen := make(map[string]bool, len(repl))
	for _, x := range st.Groups {
		if g, ok := repl[x.Name]; ok && !seen[x.Name] {
			x = g
			seen[x.Name] = true
		}
		out.Groups = append(out.Groups, x)
	}
	var added []string
	for name := range repl {
		if !seen[name] {
			added = append(added, name)
		}
	}
	sort.Strings(added)
	for _, name := range added {
		out.Groups = append(out.Groups, repl[name])
	}
	return out
}

// groupsByName indexes the groups of st.
func groupsByName(st placement.State) map[string]placement.Group {
	m := make(map[string]placement.Group, len(st.Groups))
	for _, g := range st.Groups {
		if _, dup := m[g.Name]; !dup {
			m[g.Name] = g
		}
	}
	return m
}

// withAssign returns st with the given groups assigned (st is not
// changed).
func withAssign(st placement.State, moves map[string]string) placement.State {
	out := st
	out.Assign = make(map[string]string, len(st.Assign)+len(moves))
	for g, n := range st.Assign {
		out.Assign[g] = n
	}
	for g, n := range moves {
		out.Assign[g] = n
	}
	return out
}

// reserveK is the reserve the leader keeps: placement.reserve, capped at
// the nodes that can host groups minus one. A single-node cluster has no
// other node to restart anything on; refusing every HA group there would
// protect nothing, so it runs with no reserve, and GetReserve says so
// (configured_k). The cap counts every such node the cluster knows, up or
// not: a cluster that lost nodes keeps its K, and refuses new HA groups
// while it cannot keep it, which is the honest answer.
func reserveK(st placement.State, configured int) int {
	hosts := 0
	for _, n := range st.Nodes {
		if !n.Witness {
			hosts++
		}
	}
	return min(configured, max(hosts-1, 0))
}

// stateKey fingerprints everything a reserve check reads, so a kept
// reserve is reused exactly while the state it was computed on holds.
func stateKey(st placement.State, k int) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	num := func(v int64) {
		binary.LittleEndian.PutUint64(buf[:], uint64(v))
		h.Write(buf[:])
	}
	str := func(s string) {
		num(int64(len(s)))
		h.Write([]byte(s))
	}
	flag := func(b bool) {
		if b {
			num(1)
		} else {
			num(0)
		}
	}
	strs := func(ss []string) {
		num(int64(len(ss)))
		for _, s := range ss {
			str(s)
		}
	}
	labels := func(m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		num(int64(len(keys)))
		for _, k := range keys {
			str(k)
			str(m[k])
		}
	}
	num(int64(k))
	num(int64(len(st.Nodes)))
	for _, n := range st.Nodes {
		str(n.Name)
		str(n.Site)
		num(n.CPUMillis)
		num(n.MemoryBytes)
		num(int64(math.Float64bits(n.CPUOvercommit)))
		flag(n.Up)
		flag(n.Draining)
		flag(n.Witness)
		labels(n.Labels)
	}
	num(int64(len(st.Groups)))
	for _, g := range st.Groups {
		str(g.Name)
		num(g.CPUMillis)
		num(g.MemoryBytes)
		num(int64(g.Priority))
		flag(g.HA)
		strs(g.PossibleOwners)
		strs(g.PreferredOwners)
		str(g.PreferredSite)
		labels(g.RequireLabels)
		strs(g.AvoidNodes)
		num(g.DirtyRateBytesPerSec)
		num(int64(len(g.AntiAffinity)))
		for _, c := range g.AntiAffinity {
			str(c.Name)
			flag(c.Hard)
			flag(c.AcrossSites)
		}
		str(st.Assign[g.Name])
	}
	// Assignments of groups the state does not list (it never builds
	// such, but they would change the answer).
	var extra []string
	known := make(map[string]bool, len(st.Groups))
	for _, g := range st.Groups {
		known[g.Name] = true
	}
	for g := range st.Assign {
		if !known[g] {
			extra = append(extra, g)
		}
	}
	sort.Strings(extra)
	for _, g := range extra {
		str(g)
		str(st.Assign[g])
	}
	return h.Sum64()
}

// reserveKeeper holds the leader's reserve: the answer to "can the cluster
// sustain K failures?" with a restart plan for every failure set, for the
// state it was computed on. It is recomputed lazily, when someone needs it
// and the state has changed since, and on every membership event (so the
// plans are ready before a failover needs them), never on a timer.
type reserveKeeper struct {
	mu  sync.Mutex
	key uint64
	r   *placement.Reserve
}

// reserveFor returns the reserve of st for k failures, computing it if the
// kept one is for another state.
func (a *Agent) reserveFor(st placement.State, k int) *placement.Reserve {
	key := stateKey(st, k)
	rk := &a.reserve
	rk.mu.Lock()
	defer rk.mu.Unlock()
	if rk.r != nil && rk.key == key {
		return rk.r
	}
	t0 := time.Now()
	r := placement.CheckReserve(st, k)
	took := time.Since(t0)
	switch {
	case (rk.r == nil || rk.r.OK) && !r.OK:
		a.log.Warn("reserve broken", "k", k, "summary", r.Summary(), "took", took)
	case rk.r != nil && !rk.r.OK && r.OK:
		a.log.Info("reserve holds again", "k", k, "summary", r.Summary(), "took", took)
	default:
		a.log.Debug("reserve checked", "k", k, "ok", r.OK, "sets", r.FailureSets, "broken", r.BrokenSets, "took", took)
	}
	rk.key, rk.r = key, r
	return r
}

// keepReserve stores a reserve computed elsewhere (an admission's, for the state
// with the admitted group on its node), saving the next check.
func (a *Agent) keepReserve(st placement.State, k int, r *placement.Reserve) {
	if r == nil {
		return
	}
	key := stateKey(st, k)
	a.reserve.mu.Lock()
	a.reserve.key, a.reserve.r = key, r
	a.reserve.mu.Unlock()
}

// keptReserve is the last reserve computed or kept, nil before the first.
func (a *Agent) keptReserve() *placement.Reserve {
	a.reserve.mu.Lock()
	defer a.reserve.mu.Unlock()
	return a.reserve.r
}

// refreshReserve recomputes the reserve if the cluster changed; the leader
// loop calls it after every membership reconcile.
func (a *Agent) refreshReserve() {
	st := a.placementState()
	a.reserveFor(st, reserveK(st, a.cfg.Placement.Reserve))
}

// leaseHolders returns the nodes of st that are up and hold a current lease
// from this leader. A node that holds none cannot start a group before its
// next renewal, and a node that stopped renewing while gossip still calls
// it alive is likely failing, so new work prefers holders. Right after an
// election nobody holds one yet; then the set is empty and nothing is
// preferred.
func (a *Agent) leaseHolders(st placement.State, now time.Time) map[string]bool {
	out := map[string]bool{}
	for _, n := range st.Nodes {
		if n.Up && !n.Witness && a.leases.holds(n.Name, now) {
			out[n.Name] = true
		}
	}
	return out
}

// onlyOn narrows g's possible owners to the allowed nodes; ok is false when
// that leaves none.
func onlyOn(g placement.Group, allowed map[string]bool) (placement.Group, bool) {
	var owners []string
	if len(g.PossibleOwners) == 0 {
		for n := range allowed {
			owners = append(owners, n)
		}
	} else {
		for _, n := range g.PossibleOwners {
			if allowed[n] {
				owners = append(owners, n)
			}
		}
	}
	sort.Strings(owners)
	g.PossibleOwners = owners
	return g, len(owners) > 0
}

// prefer reports whether narrowing to the holders would change anything:
// some node holds a lease and some up node does not.
func prefer(st placement.State, holders map[string]bool) bool {
	if len(holders) == 0 {
		return false
	}
	for _, n := range st.Nodes {
		if n.Up && !n.Witness && !holders[n.Name] {
			return true
		}
	}
	return false
}

// admit decides where group g (not running) starts so that the reserve of
// k failures still holds, preferring lease holders: first with g's
// possible owners narrowed to them, then, if that is refused, with g as it
// is, whose refusal is the one reported. Narrowing the group rather than
// marking the other nodes draining leaves every other group's restart plan
// as it is; it does bind g's own restart to the holders too, so while a
// single node holds a lease (the first to renew after an election) the
// first try is refused and the second decides. With k = 0 it is plain
// placement. On success it returns the node and the reserve of the state
// with g there (nil when not known).
func (a *Agent) admit(st placement.State, g placement.Group, k int, holders map[string]bool) (string, *placement.Reserve, error) {
	try := func(g placement.Group) (string, *placement.Reserve, error) {
		if k == 0 {
			res := placement.Place(withGroup(st, g), []string{g.Name}, placement.Options{})
			if len(res.Unplaced) > 0 {
				return "", nil, &placement.NoRoomError{Unplaced: res.Unplaced[0]}
			}
			return res.Placed[0].To, nil, nil
		}
		adm, err := a.reserveFor(st, k).Admit(g)
		return adm.Node, adm.Reserve, err
	}
	if prefer(st, holders) {
		if narrow, ok := onlyOn(g, holders); ok {
			if node, _, err := try(narrow); err == nil {
				// The reserve Admit returned is for the narrowed spec;
				// it is not kept.
				return node, nil, nil
			}
		}
	}
	return try(g)
}

// placeGroups finds nodes for the named groups (not necessarily running),
// with the nodes in exclude left out: failover, a group that failed on its
// owner, groups waiting for room. The reserve is not consulted: these are
// groups the cluster already accepted, and restarting them is what the
// reserve is kept for. Lease holders are preferred as in admit; a group
// they cannot take is placed among all nodes. Returns group -> node for
// what was placed, and the reason for what was not.
func placeGroups(st placement.State, names []string, exclude []string, holders map[string]bool) (map[string]string, map[string]string) {
	placed := map[string]string{}
	left := names
	if prefer(st, holders) {
		byName := groupsByName(st)
		repl := map[string]placement.Group{}
		for _, name := range names {
			if g, ok := byName[name]; ok {
				if ng, ok := onlyOn(g, holders); ok {
					repl[name] = ng
				}
			}
		}
		var again []string
		res := placement.Place(withGroups(st, repl), names, placement.Options{Exclude: exclude})
		for _, m := range res.Placed {
			placed[m.Group] = m.To
		}
		for _, u := range res.Unplaced {
			again = append(again, u.Group)
		}
		left = again
	}
	reasons := map[string]string{}
	if len(left) > 0 {
		res := placement.Place(withAssign(st, placed), left, placement.Options{Exclude: exclude})
		for _, m := range res.Placed {
			placed[m.Group] = m.To
		}
		for _, u := range res.Unplaced {
			reasons[u.Group] = u.Reason
		}
	}
	return placed, reasons
}

// restartPlan decides where the groups of failed owners restart. It looks
// up the plan the last reserve check made for exactly this failure
// (Reserve.PlanFor on the kept reserve, whatever state it was computed on:
// nothing is searched here when one is kept) and executes it where it
// still holds. A group whose planned node is no longer up, no longer fits
// or, while other nodes hold a lease, holds none, and a group the plan
// does not cover (started after the check), is placed afresh. Checking the
// plan is itself a placement on the current state: each planned group is
// offered its planned node only, in the plan's order, so capacity and
// every hard constraint are checked by the same code that made the plan.
func (a *Agent) restartPlan(st placement.State, names, failed []string, holders map[string]bool) (placed map[string]string, reasons map[string]string, fromPlan int) {
	r := a.keptReserve()
	if r == nil {
		r = a.reserveFor(st, reserveK(st, a.cfg.Placement.Reserve))
	}
	plan, err := r.PlanFor(failed)
	if err != nil {
		a.log.Warn("no restart plan", "failed", failed, "error", err)
	}
	target := map[string]string{}
	for _, m := range plan.Moves {
		target[m.Group] = m.To
	}
	byName := groupsByName(st)
	repl := map[string]placement.Group{}
	var planned []string
	useHolders := prefer(st, holders)
	for _, name := range names {
		to, ok := target[name]
		if !ok || (useHolders && !holders[to]) {
			continue
		}
		if g, ok := byName[name]; ok {
			if g, ok = onlyOn(g, map[string]bool{to: true}); ok {
				repl[name] = g
				planned = append(planned, name)
			}
		}
	}
	placed = map[string]string{}
	if len(planned) > 0 {
		res := placement.Place(withGroups(st, repl), planned, placement.Options{Exclude: failed})
		for _, m := range res.Placed {
			placed[m.Group] = m.To
		}
	}
	fromPlan = len(placed)
	var rest []string
	for _, name := range names {
		if _, ok := placed[name]; !ok {
			rest = append(rest, name)
		}
	}
	if len(rest) > 0 {
		more, why := placeGroups(withAssign(st, placed), rest, failed, holders)
		for g, n := range more {
			placed[g] = n
		}
		reasons = why
	}
	a.log.Info("restart plan", "failed", failed, "groups", len(names), "from_kept_plan", fromPlan,
		"precomputed", plan.Precomputed, "placed_afresh", len(placed)-fromPlan, "unplaced", len(reasons))
	return placed, reasons, fromPlan
}

// history is the last move of each group from one node to another that
// this leader made (failovers, for now), for the balancer's hold-off. A
// start is not a move: holding off every group started in the last hour
// would silence the balancer after any batch of starts. A new leader
// starts with none: it only holds off moves it saw.
type history struct {
	mu sync.Mutex
	h  placement.History
}

func (h *history) record(group, from, to string, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.h == nil {
		h.h = placement.History{}
	}
	h.h[group] = placement.LastMove{At: at, From: from, To: to}
}

func (h *history) snapshot() placement.History {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(placement.History, len(h.h))
	for g, m := range h.h {
		out[g] = m
	}
	return out
}

// placementError maps placement's errors to gRPC codes, in one place.
func placementError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, placement.ErrResourceExhausted):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, placement.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, placement.ErrAlreadyRunning):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
