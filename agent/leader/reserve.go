package leader

import (
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
)

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

// reserveSites is the site-loss reserve the leader keeps:
// placement.reserve_sites while at least two sites have a node that can
// host groups, else 0. With one such site there is no other site to
// restart anything in; refusing every HA group there would protect
// nothing, so, as reserveK caps K, the setting waits for a second site
// and status and GetReserve say so. A site counts whether its nodes are
// up or not: a cluster that lost a site keeps the reserve, and refuses
// new HA groups while it cannot keep it.
func reserveSites(st placement.State, configured int) int {
	if configured <= 0 {
		return 0
	}
	sites := map[string]bool{}
	for _, n := range st.Nodes {
		if !n.Witness {
			sites[n.Site] = true
		}
	}
	if len(sites) < 2 {
		return 0
	}
	return min(configured, 1)
}

// reserveSpec is the reserve the leader keeps on st: K node failures and,
// when kept, the loss of any one site.
func (l *Leader) reserveSpec(st placement.State) placement.Spec {
	return placement.Spec{K: reserveK(st, l.cfg.Reserve), SiteLoss: reserveSites(st, l.cfg.ReserveSites) > 0}
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
	// seen is where KeptReserve last found r to be the reserve of the
	// state: a status call that finds the same spares building the state.
	seen reserveSeen
	// checking is held by reserveSoon's check in the background: one at
	// a time.
	checking sync.Mutex
}

// reserveSeen is what a state was read from, short of reading it: the
// FSM's index and gossip's members, with no start pending, at a time;
// and the reserve kept on it (nil: none, with spec off).
type reserveSeen struct {
	index   uint64
	members []heartbeat.Member
	at      time.Time
	r       *placement.Reserve
	spec    placement.Spec
}

// reserveSeenFor bounds how long a reserve seen stays the answer while
// the index and the members stand still: a failure's hold-off ends with
// time alone, which changes the state (recentFailures).
const reserveSeenFor = 5 * time.Second

// seenAt returns the reserve seen where the state is read from now, if
// it is still the one kept.
func (rk *reserveKeeper) seenAt(now reserveSeen) (reserveSeen, bool) {
	rk.mu.Lock()
	defer rk.mu.Unlock()
	s := rk.seen
	ok := s.members != nil && s.index == now.index && now.at.Sub(s.at) < reserveSeenFor &&
		slices.Equal(s.members, now.members) && (!s.spec.On() || s.r == rk.r)
	return s, ok
}

// see records that r (for spec) is the reserve of the state read from
// where; a reserve kept meanwhile for another state is not recorded.
func (rk *reserveKeeper) see(where reserveSeen, r *placement.Reserve, spec placement.Spec) {
	rk.mu.Lock()
	defer rk.mu.Unlock()
	if spec.On() && r != rk.r {
		return
	}
	where.r, where.spec = r, spec
	rk.seen = where
}

// reserveFor returns the reserve of st for spec, computing it if the kept
// one is for another state.
func (l *Leader) reserveFor(st placement.State, spec placement.Spec) *placement.Reserve {
	return l.reserveAt(st, spec, reserveKey(st, spec, nil))
}

// reserveAt is reserveFor with st's key computed.
func (l *Leader) reserveAt(st placement.State, spec placement.Spec, key uint64) *placement.Reserve {
	rk := &l.reserve
	rk.mu.Lock()
	defer rk.mu.Unlock()
	if rk.r != nil && rk.key == key {
		return rk.r
	}
	t0 := time.Now()
	r := placement.CheckReserveSpec(reserveView(st), spec)
	took := time.Since(t0)
	switch {
	case (rk.r == nil || rk.r.OK) && !r.OK:
		l.log.Warn("reserve broken", "k", spec.K, "site_loss", spec.SiteLoss, "summary", r.Summary(), "took", took)
	case rk.r != nil && !rk.r.OK && r.OK:
		l.log.Info("reserve holds again", "k", spec.K, "site_loss", spec.SiteLoss, "summary", r.Summary(), "took", took)
	default:
		l.log.Debug("reserve checked", "k", spec.K, "site_loss", spec.SiteLoss, "ok", r.OK, "sets", r.FailureSets, "broken", r.BrokenSets, "took", took)
	}
	rk.key, rk.r = key, r
	return r
}

// reserveSoon is reserveFor for an answer that may lag behind the state,
// a status call's: when the kept reserve is for another state it answers
// with that one, and checks st in the background, one check at a time.
// exact says whether r is st's. A status call must answer at once, and a
// full check at 10,000 groups takes a tenth of a second of CPU: seconds
// on a node short of it (an agent restarted among 100 on two cores
// answered no status call within 2 s for a minute, its state changing at
// every call as it caught up).
func (l *Leader) reserveSoon(st placement.State, spec placement.Spec) (r *placement.Reserve, exact bool) {
	key := reserveKey(st, spec, nil)
	rk := &l.reserve
	rk.mu.Lock()
	if rk.r != nil && rk.key == key {
		defer rk.mu.Unlock()
		return rk.r, true
	}
	if rk.r == nil || rk.r.Spec() != spec {
		rk.mu.Unlock()
		return l.reserveAt(st, spec, key), true
	}
	stale := rk.r
	rk.mu.Unlock()
	if rk.checking.TryLock() {
		go func() {
			defer rk.checking.Unlock()
			l.reserveAt(st, spec, key)
		}()
	}
	return stale, false
}

// reserveView is st with only the groups that run (or are lost with
// their node): a group with no node takes no room and needs no restart,
// so the reserve is the same without it. Leaving the others out keeps the
// reserve's key from changing at every group created and at the start of
// a group not yet placed, each of which would otherwise cost a check of
// every failure set (groups × nodes) instead of one Admit.
func reserveView(st placement.State) placement.State {
	out := st
	out.Groups = make([]placement.Group, 0, len(st.Assign))
	for _, g := range st.Groups {
		if _, ok := st.Assign[g.Name]; ok {
			out.Groups = append(out.Groups, g)
		}
	}
	return out
}

// keepReserve stores a reserve computed elsewhere (an admission's, for st
// with the admitted group on its node: the assignments in admitted),
// saving the next check.
func (l *Leader) keepReserve(st placement.State, admitted map[string]string, spec placement.Spec, r *placement.Reserve) {
	if r == nil {
		return
	}
	key := reserveKey(st, spec, admitted)
	l.reserve.mu.Lock()
	l.reserve.key, l.reserve.r = key, r
	l.reserve.mu.Unlock()
}

// keptReserve is the last reserve computed or kept, nil before the first.
func (l *Leader) keptReserve() *placement.Reserve {
	l.reserve.mu.Lock()
	defer l.reserve.mu.Unlock()
	return l.reserve.r
}

// refreshReserve recomputes the reserve if the cluster changed; the leader
// loop calls it after every membership reconcile.
func (l *Leader) refreshReserve() {
	st := l.placementState()
	l.reserveFor(st, l.reserveSpec(st))
}

// leaseHolders returns the nodes of st that are up and hold a current lease
// from this leader. A node that holds none cannot start a group before its
// next renewal, and a node that stopped renewing while gossip still calls
// it alive is likely failing, so new work prefers holders. Right after an
// election nobody holds one yet; then the set is empty and nothing is
// preferred.
func (l *Leader) leaseHolders(st placement.State, now time.Time) map[string]bool {
	out := map[string]bool{}
	for _, n := range st.Nodes {
		if n.Up && !n.Witness && l.leases.Holds(n.Name, now) {
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

// admit decides where group g (not running) starts so that the reserve
// spec still holds, preferring lease holders: first with g's
// possible owners narrowed to them, then, if that is refused, with g as it
// is, whose refusal is the one reported. Narrowing the group rather than
// marking the other nodes draining leaves every other group's restart plan
// as it is; it does bind g's own restart to the holders too, so while a
// single node holds a lease (the first to renew after an election) the
// first try is refused and the second decides. With no reserve it is
// plain placement. On success it returns the node and the reserve of the state
// with g there (nil when not known).
func (l *Leader) admit(st placement.State, g placement.Group, spec placement.Spec, holders map[string]bool) (string, *placement.Reserve, error) {
	try := func(g placement.Group) (string, *placement.Reserve, error) {
		if !spec.On() {
			res := placement.Place(withGroup(st, g), []string{g.Name}, placement.Options{})
			if len(res.Unplaced) > 0 {
				return "", nil, &placement.NoRoomError{Unplaced: res.Unplaced[0]}
			}
			return res.Placed[0].To, nil, nil
		}
		adm, err := l.reserveFor(st, spec).Admit(g)
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
func (l *Leader) restartPlan(st placement.State, names, failed []string, holders map[string]bool) (placed map[string]string, reasons map[string]string, fromPlan int) {
	r := l.keptReserve()
	if r == nil {
		r = l.reserveFor(st, l.reserveSpec(st))
	}
	plan, err := r.PlanFor(failed)
	if err != nil {
		l.log.Warn("no restart plan", "failed", failed, "error", err)
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
	l.log.Info("restart plan", "failed", failed, "groups", len(names), "from_kept_plan", fromPlan,
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
