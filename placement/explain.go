package placement

import (
	"fmt"
	"sort"
	"strings"
)

// exclusion returns why g cannot go to n, or ok when it can; prepare(g)
// must have run. The order of the checks is the order of the Constraint
// constants: the first failure is the reason given.
func (e *engine) exclusion(g, n int32) (Exclusion, bool) {
	gg := e.c.groups[g]
	nd := &e.c.nodes[n]
	x := Exclusion{Node: nd.name}
	switch {
	case e.failed[n]:
		x.Constraint, x.Detail = ConstraintNodeState, e.failedWord
	case !e.up[n]:
		x.Constraint, x.Detail = ConstraintNodeState, "down"
	case nd.witness:
		x.Constraint, x.Detail = ConstraintNodeState, "witness"
	case !e.eligible[n]:
		// Up, not a witness, yet not eligible: draining, or set aside by
		// the power mode.
		x.Constraint, x.Detail = ConstraintNodeState, "draining"
		if !nd.draining {
			x.Detail = "powering off"
		}
	case !gg.anyOwner && gg.ownerSet[n/64]&(1<<(n%64)) == 0:
		if why, ok := gg.src.CannotRun[nd.name]; ok {
			x.Constraint, x.Detail = ConstraintCannotRun, why
		} else if contains(gg.src.AvoidNodes, nd.name) {
			x.Constraint, x.Detail = ConstraintFailedThere, "failed there lately"
		} else if len(gg.src.PossibleOwners) > 0 && !contains(gg.src.PossibleOwners, nd.name) {
			x.Constraint, x.Detail = ConstraintPossibleOwners, "not a possible owner"
		} else {
			x.Constraint, x.Detail = ConstraintLabels, "lacks "+missingLabels(nd.labels, gg.src.RequireLabels)
		}
	case e.forbidStamp[n] == e.stamp:
		m := e.forbidBy[n]
		x.Constraint = ConstraintAntiAffinity
		x.Detail = fmt.Sprintf("class %s: runs %s", sharedClass(e.c, g, m), e.c.groups[m].name)
	case e.assign[g] != n && e.memUsed[n]+gg.mem > nd.memCap:
		x.Constraint = ConstraintMemory
		x.Detail = fmt.Sprintf("needs %s, has %s free", fmtBytes(gg.mem), fmtBytes(nd.memCap-e.memUsed[n]))
	case e.assign[g] != n && e.cpuUsed[n]+gg.cpu > nd.cpuCap:
		x.Constraint = ConstraintCPU
		x.Detail = fmt.Sprintf("needs %s, has %s free", fmtCPU(gg.cpu), fmtCPU(nd.cpuCap-e.cpuUsed[n]))
	default:
		return x, true
	}
	return x, false
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func missingLabels(have, want map[string]string) string {
	var miss []string
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			miss = append(miss, k+"="+v)
		}
	}
	sort.Strings(miss)
	return strings.Join(miss, ",")
}

func sharedClass(c *compiled, a, b int32) string {
	for _, ca := range c.groups[a].classes {
		for _, cb := range c.groups[b].classes {
			if ca.c == cb.c && (ca.hard || cb.hard) {
				return c.classes[ca.c].name
			}
		}
	}
	return "?"
}

// explain builds the Unplaced record for g against the engine's current
// state: one exclusion per node and a one-line reason grouped by
// constraint.
func (e *engine) explain(g int32) Unplaced {
	e.prepare(g)
	gg := e.c.groups[g]
	u := Unplaced{Group: gg.name}
	byC := map[Constraint][]Exclusion{}
	for n := range e.c.nodes {
		x, ok := e.exclusion(g, int32(n))
		if ok {
			continue
		}
		u.Exclusions = append(u.Exclusions, x)
		byC[x.Constraint] = append(byC[x.Constraint], x)
	}
	if len(e.c.nodes) == 0 {
		u.Reason = "no nodes"
		return u
	}
	if len(u.Exclusions) < len(e.c.nodes) {
		// Only reachable when asked about a group that fits somewhere.
		u.Reason = "fits"
		return u
	}
	var parts []string
	free := func(n string) (int64, int64) {
		i := e.c.nodeIdx[n]
		nd := &e.c.nodes[i]
		return nd.memCap - e.memUsed[i], nd.cpuCap - e.cpuUsed[i]
	}
	for _, c := range []Constraint{ConstraintMemory, ConstraintCPU} {
		xs := byC[c]
		if len(xs) == 0 {
			continue
		}
		need, unit := gg.mem, fmtBytes
		pick := func(n string) int64 { m, _ := free(n); return m }
		if c == ConstraintCPU {
			need, unit = gg.cpu, fmtCPU
			pick = func(n string) int64 { _, c := free(n); return c }
		}
		bestN, bestF := xs[0].Node, pick(xs[0].Node)
		for _, x := range xs[1:] {
			if f := pick(x.Node); f > bestF {
				bestN, bestF = x.Node, f
			}
		}
		if len(xs) == 1 {
			parts = append(parts, fmt.Sprintf("%s: needs %s, node %s has %s free", c, unit(need), bestN, unit(bestF)))
		} else {
			parts = append(parts, fmt.Sprintf("%s: needs %s, at most %s free (node %s) on %s", c, unit(need), unit(bestF), bestN, nodeList(xs)))
		}
	}
	if xs := byC[ConstraintAntiAffinity]; len(xs) > 0 {
		var ds []string
		for _, x := range xs {
			ds = append(ds, x.Node+" "+x.Detail)
		}
		parts = append(parts, fmt.Sprintf("hard anti-affinity: %s", capList(ds, 6, "; ")))
	}
	if xs := byC[ConstraintCannotRun]; len(xs) > 0 {
		var ds []string
		for _, x := range xs {
			ds = append(ds, x.Node+": "+x.Detail)
		}
		lead := "cannot run it: "
		if len(xs) == len(e.c.nodes) {
			lead = "no node can run it: "
		}
		parts = append(parts, lead+capList(ds, 6, "; "))
	}
	if xs := byC[ConstraintPossibleOwners]; len(xs) > 0 {
		parts = append(parts, fmt.Sprintf("%s excluded by possible owners", nodeList(xs)))
	}
	if xs := byC[ConstraintFailedThere]; len(xs) > 0 {
		parts = append(parts, fmt.Sprintf("%s excluded: the group failed there lately", nodeList(xs)))
	}
	if xs := byC[ConstraintLabels]; len(xs) > 0 {
		parts = append(parts, fmt.Sprintf("%s excluded by labels (%s)", nodeList(xs), xs[0].Detail))
	}
	if xs := byC[ConstraintNodeState]; len(xs) > 0 {
		by := map[string][]Exclusion{}
		var keys []string
		for _, x := range xs {
			if by[x.Detail] == nil {
				keys = append(keys, x.Detail)
			}
			by[x.Detail] = append(by[x.Detail], x)
		}
		sort.Strings(keys)
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s: %s", k, nodeList(by[k])))
		}
	}
	u.Reason = strings.Join(parts, "; ")
	return u
}

func nodeList(xs []Exclusion) string {
	ns := make([]string, len(xs))
	for i, x := range xs {
		ns[i] = x.Node
	}
	return capList(ns, 8, ",")
}

func capList(ss []string, n int, sep string) string {
	if len(ss) <= n {
		return strings.Join(ss, sep)
	}
	return strings.Join(ss[:n], sep) + fmt.Sprintf("%s… (%d more)", sep, len(ss)-n)
}

func fmtBytes(b int64) string {
	const (
		mib = 1 << 20
		gib = 1 << 30
	)
	switch {
	case b <= -gib || b >= gib:
		return fmt.Sprintf("%.1f GiB", float64(b)/gib)
	case b <= -mib || b >= mib:
		return fmt.Sprintf("%.0f MiB", float64(b)/mib)
	default:
		return fmt.Sprintf("%d B", b)
	}
}

func fmtCPU(m int64) string { return fmt.Sprintf("%dm", m) }

func pct(used, cap int64) string {
	if cap <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(used)/float64(cap))
}
