package placement

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Ranked is one node's rating for a group, for people: like VMM's star
// ratings, with the parts of the score spelled out.
type Ranked struct {
	Node string
	// Score is 0..100: the placement score (see the package comment)
	// scaled, where 100 is an empty node that is the first preferred owner
	// in the preferred site with no anti-affinity partner near.
	Score int
	// Stars is 1..5 for a node the group can go to (the score rounded to
	// quarters), 0 for one it cannot (or, from Reserve.Rank, one where it
	// would break the reserve).
	Stars    int
	Feasible bool
	// KeepsReserve is only filled by Reserve.Rank.
	KeepsReserve bool
	Why          []string

	raw int64
}

// Rank rates every node for group g as if it were created now (a running
// group of the same name is taken off its node first), best first: the
// first feasible entry is where Place would put it.
func Rank(st State, g Group) []Ranked {
	c, gi := compile(st).withGroup(g)
	e := newEngine(c)
	if e.assign[gi] >= 0 {
		e.move(gi, -1)
	}
	return e.rank(gi, Spread)
}

func (e *engine) rank(g int32, strat Strategy) []Ranked {
	e.prepare(g)
	gg := e.c.groups[g]
	out := make([]Ranked, 0, len(e.c.nodes))
	for n := range e.c.nodes {
		ni := int32(n)
		nd := &e.c.nodes[n]
		r := Ranked{Node: nd.name}
		if x, ok := e.exclusion(g, ni); !ok {
			r.Why = []string{fmt.Sprintf("%s: %s", x.Constraint, x.Detail)}
			r.raw = -1 << 62
			out = append(out, r)
			continue
		}
		p := e.parts(g, ni, strat)
		r.Feasible = true
		r.raw = p.total()
		r.Score = displayScore(r.raw, e.c.maxScore(g))
		r.Stars = 1 + (r.Score*4+50)/100
		cpu, mem := e.cpuUsed[n], e.memUsed[n]
		oc := ""
		if nd.overcommit != 1 {
			oc = fmt.Sprintf(" (%gx overcommit)", nd.overcommit)
		}
		if p.softAA > 0 {
			r.Why = append(r.Why, fmt.Sprintf("soft anti-affinity: %d partner(s) already on this node", e.softCnt[n]))
		}
		if p.across > 0 {
			r.Why = append(r.Why, fmt.Sprintf("site spread: %d partner(s) already in site %q", e.siteCnt[nd.site], e.c.sites[nd.site]))
		}
		switch {
		case len(gg.pref) == 0:
		case e.prefStamp[n] == e.stamp:
			r.Why = append(r.Why, fmt.Sprintf("preferred owner #%d of %d", e.prefRank[n]+1, len(gg.pref)))
		default:
			r.Why = append(r.Why, fmt.Sprintf("not a preferred owner (prefers %s)", strings.Join(gg.src.PreferredOwners, ",")))
		}
		switch {
		case gg.prefSite == -1:
		case p.prefSite > 0:
			r.Why = append(r.Why, fmt.Sprintf("in preferred site %s", gg.src.PreferredSite))
		default:
			r.Why = append(r.Why, fmt.Sprintf("outside preferred site %s", gg.src.PreferredSite))
		}
		switch {
		case gg.homeSite < 0:
		case p.homeSite > 0:
			r.Why = append(r.Why, fmt.Sprintf("in the site it runs in (%s)", e.c.sites[gg.homeSite]))
		default:
			r.Why = append(r.Why, fmt.Sprintf("outside the site it runs in (%s)", e.c.sites[gg.homeSite]))
		}
		how := "spread: more room left is better"
		if strat == Pack {
			how = "pack: fuller is better"
		}
		r.Why = append(r.Why,
			fmt.Sprintf("cpu %s -> %s of %s%s", pct(cpu, nd.cpuCap), pct(cpu+gg.cpu, nd.cpuCap), fmtCPU(nd.cpuCap), oc),
			fmt.Sprintf("memory %s -> %s of %s", pct(mem, nd.memCap), pct(mem+gg.mem, nd.memCap), fmtBytes(nd.memCap)),
			fmt.Sprintf("load %.0f of %.0f (%s)", pts(p.load), pts(wLoad), how))
		out = append(out, r)
	}
	sortRanked(out)
	return out
}

func pts(v int64) float64 { return float64(v) / 1000 }

// displayScore maps the raw score onto 0..100 for people, keeping its
// order: a node with no anti-affinity partner near scores 50..100 in
// proportion to its preferences and room; one with partners scores below
// 50, falling by a factor e per partner on the node (e^0.1 per partner in
// the site).
func displayScore(raw, best int64) int {
	if raw >= 0 {
		return int(min(50+(50*raw+best/2)/best, 100))
	}
	return int(50 * math.Exp(float64(raw)/wSoftAA))
}

// sortRanked: usable nodes first (feasible and, when checked, keeping the
// reserve), then by score, then by name.
func sortRanked(rs []Ranked) {
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if ua, ub := a.Stars > 0, b.Stars > 0; ua != ub {
			return ua
		}
		if a.Feasible != b.Feasible {
			return a.Feasible
		}
		if a.raw != b.raw {
			return a.raw > b.raw
		}
		return a.Node < b.Node
	})
}
