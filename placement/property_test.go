package placement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// rapid drives the seeds (and reports the failing one); the clusters are
// built from them by genCluster, so a failure reproduces from its seed.
func drawCluster(t *rapid.T, p genParams) (State, *rand.Rand) {
	seed := rapid.Uint64().Draw(t, "seed")
	r := rand.New(rand.NewPCG(seed, 7))
	return genCluster(r, p), r
}

var small = genParams{minNodes: 2, maxNodes: 6, minGroups: 1, maxGroups: 12, downDrain: true, minFill: 0.2, maxFill: 0.9}

// No placement ever violates capacity, hard anti-affinity, possible
// owners, labels or node state: Place from scratch, Place on top of a
// running cluster with nodes excluded, Drain.
func TestPropPlaceNeverViolates(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st, r := drawCluster(t, genParams{minNodes: 1, maxNodes: 8, minGroups: 1, maxGroups: 25, downDrain: true})
		mustNoViolations(t, "initial placement", violations(st, st.Assign, setOf(keys(st.Assign)), nil))

		// Re-place a random subset (as failover does) with random exclusions.
		var gs []string
		for _, g := range st.Groups {
			if r.IntN(2) == 0 {
				gs = append(gs, g.Name)
			}
		}
		var excl []string
		for _, n := range st.Nodes {
			if r.IntN(4) == 0 {
				excl = append(excl, n.Name)
			}
		}
		res := Place(st, gs, Options{Strategy: Strategy(r.IntN(2)), Exclude: excl})
		assign := map[string]string{}
		for g, n := range st.Assign {
			assign[g] = n
		}
		for _, g := range gs {
			delete(assign, g)
		}
		for _, m := range res.Placed {
			assign[m.Group] = m.To
		}
		mustNoViolations(t, "re-placement", violations(st, assign, setOf(gsPlaced(res)), setOf(excl)))
		if len(res.Placed)+len(res.Unplaced) != len(gs) {
			t.Fatalf("placed %d + unplaced %d != asked %d", len(res.Placed), len(res.Unplaced), len(gs))
		}
		for _, u := range res.Unplaced {
			if u.Reason == "" || u.Reason == "fits" {
				t.Fatalf("unplaced %s without a reason: %+v", u.Group, u)
			}
		}
	})
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func gsPlaced(r Result) []string {
	var out []string
	for _, m := range r.Placed {
		out = append(out, m.Group)
	}
	return out
}

// The reserve check never says "yes" where an exhaustive search finds a
// failure set with no feasible restart, every plan it keeps is valid, and
// a "no" names a set whose plan really fails.
func TestPropReserveSound(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st, _ := drawCluster(t, small)
		k := rapid.IntRange(0, 3).Draw(t, "k")
		res := CheckReserve(st, k)
		sets := failureSets(st, k)
		if len(displacedBy(st, nil)) > 0 {
			sets = append([][]string{nil}, sets...)
		}
		for _, F := range sets {
			p, err := res.PlanFor(F)
			if err != nil {
				t.Fatal(err)
			}
			if !p.Precomputed && res.Method == MethodEnumerated {
				t.Fatalf("set %v within K=%d has no precomputed plan", F, k)
			}
			mustNoViolations(t, fmt.Sprintf("plan for %v", F), checkPlan(st, F, p))
			if res.OK && !p.OK {
				t.Fatalf("reserve says yes but the plan for %v leaves %v out", F, p.Unplaced)
			}
			if res.OK && !exhaustiveRestart(st, setOf(F)) {
				t.Fatalf("reserve says yes but no restart exists for %v", F)
			}
		}
		if !res.OK {
			if res.Breach == nil || res.Breach.Group == "" || res.Breach.Reason == "" {
				t.Fatalf("no without a breach: %+v", res)
			}
			p, _ := res.PlanFor(res.Breach.Failed)
			if p.OK {
				t.Fatalf("breach %v has a working plan", res.Breach)
			}
		}
	})
}

// On clusters too large for the exhaustive search, every kept plan is
// still checked independently, and an admission's incremental reserve
// agrees with a fresh check.
func TestPropReserveMedium(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st, r := drawCluster(t, genParams{minNodes: 6, maxNodes: 14, minGroups: 20, maxGroups: 70, downDrain: true, minFill: 0.3, maxFill: 0.8})
		k := rapid.IntRange(1, 2).Draw(t, "k")
		res := CheckReserve(st, k)
		for _, F := range failureSets(st, k) {
			p, _ := res.PlanFor(F)
			mustNoViolations(t, fmt.Sprintf("plan for %v", F), checkPlan(st, F, p))
			if res.OK && !p.OK {
				t.Fatalf("yes, but the plan for %v fails", F)
			}
		}
		g := Group{Name: "new", CPUMillis: 1000, MemoryBytes: int64(1+r.IntN(8)) * gib, HA: true, Priority: 1 + r.IntN(3)}
		a, err := res.Admit(g)
		if err != nil {
			return
		}
		st2 := withGroup(st, g, a.Node)
		if fresh := CheckReserve(st2, k); !fresh.OK || fresh.Summary() != a.Reserve.Summary() {
			t.Fatalf("admission reserve %q, fresh check %q", a.Reserve.Summary(), fresh.Summary())
		}
		for _, F := range failureSets(st2, k) {
			p, _ := a.Reserve.PlanFor(F)
			mustNoViolations(t, fmt.Sprintf("admission plan for %v", F), checkPlan(st2, F, p))
		}
	})
}

// TestReserveFalseNoRate measures how often the greedy says "no" where an
// exhaustive search finds a restart for every failure set (the
// conservative error bin packing forces on a heuristic), and checks it
// never says "yes" wrongly. Seeded, so the figures are reproducible. Two
// mixes: every constraint (owners, labels, anti-affinity, draining and
// down nodes), and pure capacity (where only packing can go wrong).
func TestReserveFalseNoRate(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 300
	}
	mixes := []struct {
		name string
		p    genParams
		pure bool
	}{
		{"constrained", genParams{minNodes: 3, maxNodes: 6, minGroups: 4, maxGroups: 16, downDrain: true, minFill: 0.3, maxFill: 0.8}, false},
		{"capacity-only", genParams{minNodes: 3, maxNodes: 6, minGroups: 4, maxGroups: 16, minFill: 0.4, maxFill: 0.85}, true},
		{"medium", genParams{minNodes: 6, maxNodes: 9, minGroups: 16, maxGroups: 32, minFill: 0.5, maxFill: 0.85}, true},
	}
	defer func() { exactSearch = true }()
	for _, search := range []bool{false, true} {
		exactSearch = search
		how := "greedy only"
		if search {
			how = "greedy + bounded search"
		}
		for _, mix := range mixes {
			falseNoRate(t, n, how, mix.name, mix.p, mix.pure)
		}
	}
}

func falseNoRate(t *testing.T, n int, how, name string, params genParams, pure bool) {
	r := rand.New(rand.NewPCG(2026, 11))
	for k := 1; k <= 2; k++ {
		var yes, trueNo, falseNo, setsNo, setsFalseNo int
		for i := 0; i < n; i++ {
			st := genCluster(r, params)
			if pure {
				st = capacityOnly(st)
			}
			res := CheckReserve(st, k)
			allFeasible := true
			for _, F := range failureSets(st, k) {
				feasible := exhaustiveRestart(st, setOf(F))
				p, _ := res.PlanFor(F)
				if !p.OK {
					setsNo++
					if feasible {
						setsFalseNo++
					}
				}
				allFeasible = allFeasible && feasible
			}
			if len(displacedBy(st, nil)) > 0 {
				allFeasible = allFeasible && exhaustiveRestart(st, nil)
			}
			switch {
			case res.OK && !allFeasible:
				t.Fatalf("%s case %d K=%d: reserve says yes, exhaustive search finds an infeasible set", name, i, k)
			case res.OK:
				yes++
			case allFeasible:
				falseNo++
			default:
				trueNo++
			}
		}
		rate := float64(falseNo) / float64(max(yes+falseNo, 1))
		t.Logf("%s, %s K=%d: %d clusters: %d yes, %d no (%d right, %d wrong): said no for %.2f%% of the clusters that survive K failures; per failure set: %d of %d failing plans had a feasible restart",
			how, name, k, n, yes, trueNo+falseNo, trueNo, falseNo, 100*rate, setsFalseNo, setsNo)
		if rate > 0.10 {
			t.Errorf("%s, %s K=%d: false-no rate %.1f%% above 10%%", how, name, k, 100*rate)
		}
	}
}

// capacityOnly strips every constraint but capacity.
func capacityOnly(st State) State {
	out := State{Nodes: st.Nodes, Assign: st.Assign}
	for _, g := range st.Groups {
		g.PossibleOwners, g.PreferredOwners, g.RequireLabels, g.AntiAffinity, g.PreferredSite = nil, nil, nil, nil, ""
		out.Groups = append(out.Groups, g)
	}
	return out
}

// An admission that succeeds leaves a state whose reserve holds and whose
// constraints hold; a refusal is ResourceExhausted with a failure set and
// a group, or no room at all.
func TestPropAdmit(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st, r := drawCluster(t, small)
		k := rapid.IntRange(0, 2).Draw(t, "k")
		g := Group{
			Name: "new", CPUMillis: []int64{500, 2000, 8000}[r.IntN(3)], MemoryBytes: []int64{1, 4, 12}[r.IntN(3)] * gib,
			HA: r.IntN(4) != 0, Priority: 1 + r.IntN(3),
		}
		if r.IntN(3) == 0 {
			g.AntiAffinity = []Class{{Name: "sql", Hard: true}}
		}
		a, err := Admit(st, g, k)
		if err != nil {
			if !errors.Is(err, ErrResourceExhausted) {
				t.Fatalf("refusal is not ResourceExhausted: %v", err)
			}
			var re *ReserveError
			if errors.As(err, &re) && re.Breach.Group == "" {
				t.Fatalf("reserve refusal without failure set or group: %v", err)
			}
			return
		}
		st2 := withGroup(st, g, a.Node)
		mustNoViolations(t, "after admission", violations(st2, st2.Assign, map[string]bool{"new": true}, nil))
		res := CheckReserve(st2, k)
		if !res.OK {
			t.Fatalf("admitted on %s but reserve %d broken: %s", a.Node, k, res.Summary())
		}
		if a.Reserve == nil || !a.Reserve.OK {
			t.Fatalf("admission carries no holding reserve")
		}
		// The admission's incremental reserve keeps valid plans too.
		for _, F := range failureSets(st2, k) {
			p, _ := a.Reserve.PlanFor(F)
			mustNoViolations(t, fmt.Sprintf("admission plan for %v", F), checkPlan(st2, F, p))
			if !p.OK {
				t.Fatalf("admission reserve OK but plan for %v fails", F)
			}
		}
	})
}

func withGroup(st State, g Group, node string) State {
	out := State{Nodes: st.Nodes, Assign: map[string]string{}}
	for _, h := range st.Groups {
		if h.Name != g.Name {
			out.Groups = append(out.Groups, h)
		}
	}
	out.Groups = append(out.Groups, g)
	for k, v := range st.Assign {
		out.Assign[k] = v
	}
	out.Assign[g.Name] = node
	return out
}

func applyMoves(st State, moves []ProposedMove) State {
	out := State{Nodes: st.Nodes, Groups: st.Groups, Assign: map[string]string{}}
	for k, v := range st.Assign {
		out.Assign[k] = v
	}
	for _, m := range moves {
		out.Assign[m.Group] = m.To
	}
	return out
}

var balanceParams = genParams{minNodes: 3, maxNodes: 8, minGroups: 6, maxGroups: 30}

// imbalanced starts every group on a few nodes so there is work to do.
func imbalanced(t *rapid.T) State {
	st, r := drawCluster(t, balanceParams)
	few := 1 + r.IntN(2)
	var crowded []string
	for i := 0; i < few && i < len(st.Nodes); i++ {
		crowded = append(crowded, st.Nodes[i].Name)
	}
	var names []string
	for _, g := range st.Groups {
		names = append(names, g.Name)
	}
	var excl []string
	for _, n := range st.Nodes[len(crowded):] {
		excl = append(excl, n.Name)
	}
	st.Assign = map[string]string{}
	st.Assign = Place(st, names, Options{Exclude: excl}).Assign()
	rest := Place(st, unplacedNames(st), Options{}).Assign()
	for k, v := range rest {
		st.Assign[k] = v
	}
	return st
}

func unplacedNames(st State) []string {
	var out []string
	for _, g := range st.Groups {
		if _, ok := st.Assign[g.Name]; !ok {
			out = append(out, g.Name)
		}
	}
	return out
}

// The balancer never breaks a constraint or the reserve, and never
// proposes a move it would undo on the next round: the next round (hold-off
// in force) moves none of the groups just moved, and when the first round
// stopped for lack of gain the next proposes nothing at all. Across rounds
// with the hold-off expired the imbalance only falls and the rounds end.
func TestPropBalanceNoUndo(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st := imbalanced(t)
		k := rapid.IntRange(0, 1).Draw(t, "k")
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		opts := BalanceOptions{Mode: ModeAutomatic, Now: now, Reserve: k, MaxMoves: rapid.IntRange(1, 6).Draw(t, "maxMoves")}
		before := CheckReserve(st, k)
		p1 := Balance(st, opts, nil)
		st1 := applyMoves(st, p1.Moves)
		mustNoViolations(t, "after round 1", violations(st1, st1.Assign, setOf(movedNames(p1)), nil))
		if before.OK && !CheckReserve(st1, k).OK {
			t.Fatalf("round 1 broke the reserve: %v", p1.Moves)
		}
		if len(p1.Moves) > 0 && p1.After >= p1.Before {
			t.Fatalf("moves did not lower the imbalance: %.4f -> %.4f", p1.Before, p1.After)
		}
		hist := History{}
		for _, m := range p1.Moves {
			hist[m.Group] = LastMove{At: now, From: m.From, To: m.To}
		}
		opts.Now = now.Add(time.Minute)
		p2 := Balance(st1, opts, hist)
		for _, m := range p2.Moves {
			if lm, ok := hist[m.Group]; ok {
				t.Fatalf("round 2 moves %s again (%s -> %s) right after %s -> %s", m.Group, m.From, m.To, lm.From, lm.To)
			}
		}
		if strings.HasPrefix(p1.Stopped, "no move lowers") && len(p2.Moves) > 0 {
			t.Fatalf("round 1 found no gain, round 2 proposes %v", p2.Moves)
		}
		// Rounds with the hold-off expired: strictly falling, finite.
		cur, score := st1, p1.After
		for round := 0; round < 50; round++ {
			opts.Now = opts.Now.Add(2 * time.Hour)
			p := Balance(cur, opts, hist)
			if len(p.Moves) == 0 {
				return
			}
			if p.After >= score {
				t.Fatalf("round %d did not lower the imbalance: %.4f -> %.4f", round, score, p.After)
			}
			cur, score = applyMoves(cur, p.Moves), p.After
			mustNoViolations(t, "later round", violations(cur, cur.Assign, setOf(movedNames(p)), nil))
			for _, m := range p.Moves {
				hist[m.Group] = LastMove{At: opts.Now, From: m.From, To: m.To}
			}
		}
		t.Fatalf("balancer still moving after 50 rounds")
	})
}

func movedNames(p Proposal) []string {
	var out []string
	for _, m := range p.Moves {
		out = append(out, m.Group)
	}
	return out
}

// Power mode never powers off a node the reserve needs, and its moves
// empty exactly the nodes it lists.
func TestPropPowerKeepsReserve(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st, _ := drawCluster(t, genParams{minNodes: 3, maxNodes: 7, minGroups: 2, maxGroups: 14})
		k := rapid.IntRange(0, 2).Draw(t, "k")
		before := CheckReserve(st, k)
		p := Balance(st, BalanceOptions{Mode: ModeRecommend, Power: true, Reserve: k}, nil)
		st1 := applyMoves(st, p.Moves)
		off := setOf(p.PowerOff)
		for g, n := range st1.Assign {
			if off[n] {
				t.Fatalf("group %s still on powered-off %s", g, n)
			}
		}
		mustNoViolations(t, "after consolidation", violations(st1, st1.Assign, setOf(movedNames(p)), off))
		for i := range st1.Nodes {
			if off[st1.Nodes[i].Name] {
				st1.Nodes = append([]Node(nil), st1.Nodes...)
				st1.Nodes[i].Up = false
			}
		}
		if before.OK && !CheckReserve(st1, k).OK {
			t.Fatalf("powering off %v breaks reserve %d", p.PowerOff, k)
		}
	})
}

// Equal inputs give equal outputs, whatever the order of nodes and
// groups in the state.
func TestPropDeterministic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st, r := drawCluster(t, small)
		sh := State{Nodes: append([]Node(nil), st.Nodes...), Groups: append([]Group(nil), st.Groups...), Assign: st.Assign}
		r.Shuffle(len(sh.Nodes), func(i, j int) { sh.Nodes[i], sh.Nodes[j] = sh.Nodes[j], sh.Nodes[i] })
		r.Shuffle(len(sh.Groups), func(i, j int) { sh.Groups[i], sh.Groups[j] = sh.Groups[j], sh.Groups[i] })
		names := keys(st.Assign)
		if a, b := Place(st, names, Options{}), Place(sh, names, Options{}); !reflect.DeepEqual(a, b) {
			t.Fatalf("Place depends on input order:\n%+v\n%+v", a, b)
		}
		a, b := CheckReserve(st, 2), CheckReserve(sh, 2)
		if a.Summary() != b.Summary() {
			t.Fatalf("reserve depends on input order:\n%s\n%s", a.Summary(), b.Summary())
		}
		for _, F := range failureSets(st, 2) {
			pa, _ := a.PlanFor(F)
			pb, _ := b.PlanFor(F)
			if !reflect.DeepEqual(pa, pb) {
				t.Fatalf("plan for %v depends on input order", F)
			}
		}
		ba := Balance(st, BalanceOptions{Mode: ModeRecommend, Reserve: 1}, nil)
		bb := Balance(sh, BalanceOptions{Mode: ModeRecommend, Reserve: 1}, nil)
		if !reflect.DeepEqual(ba.Moves, bb.Moves) {
			t.Fatalf("Balance depends on input order")
		}
	})
}

// The K > 2 bound is sound: when it says yes, every failure set of up to
// K nodes has a feasible restart (and our greedy finds it, which is what
// the leader relies on).
func TestPropBoundSound(t *testing.T) {
	var yes, total int
	rapid.Check(t, func(t *rapid.T) {
		st, _ := drawCluster(t, genParams{minNodes: 4, maxNodes: 8, minGroups: 1, maxGroups: 10, minFill: 0.1, maxFill: 0.6})
		k := rapid.IntRange(1, 3).Draw(t, "k")
		e := newEngine(compile(st))
		r := &Reserve{K: k, snap: e}
		haOn := make([][]int32, len(e.c.nodes))
		var base []int32
		for g := range e.c.groups {
			if e.needsRestart(int32(g)) {
				base = append(base, int32(g))
			} else if n := e.assign[g]; n >= 0 && e.c.groups[g].ha {
				haOn[n] = append(haOn[n], int32(g))
			}
		}
		e.bound(r, e.universe(), haOn, base)
		total++
		if !r.OK {
			return
		}
		yes++
		exact := CheckReserve(st, k)
		for _, F := range failureSets(st, k) {
			if !exhaustiveRestart(st, setOf(F)) {
				t.Fatalf("bound says yes for K=%d, but %v has no restart", k, F)
			}
			p, _ := exact.PlanFor(F)
			if !p.OK {
				t.Fatalf("bound says yes for K=%d, but the greedy fails for %v", k, F)
			}
		}
	})
	t.Logf("bound said yes in %d of %d random clusters", yes, total)
}
