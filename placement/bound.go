package placement

import (
	"fmt"
	"math"
	"sort"
)

// The conservative bound for K > 2 (when there are more than
// MaxEnumeratedSets failure sets). It never says "yes" when unsure; it
// says "yes" only when it can prove that the leader's greedy placement
// (any greedy that places a group whenever some node fits it, which Place
// is) restarts every displaced HA group after any K failures.
//
// Let D_cpu, D_mem bound the displaced demand: what waits for a restart
// now plus the K largest per-node HA loads (taken per resource, which can
// only overestimate). Let s_cpu, s_mem be the largest single HA group.
// For a node n that takes work, with free room f_n before the failure,
// let x_n = max(0, f_cpu,n − s_cpu) / D_cpu and y_n likewise for memory.
//
// Claim: if group g finds no node, then every node n that g may use and
// that is neither failed nor holding a hard anti-affinity partner of g is
// short of CPU (set A) or of memory (set B) for g. A node in A received
// more than f_cpu,n − s_cpu of displaced CPU (it had f_cpu,n, now has less
// than g's demand ≤ s_cpu), and all displaced CPU together is less than
// D_cpu, so Σ_A x_n < 1; likewise Σ_B y_n < 1. Hence
// Σ min(x_n, y_n) < 2 over those nodes. Contrapositive: if, over the
// nodes g may use, Σ min(x_n, y_n) ≥ 2 even after removing the K + h_g
// largest terms (K failed nodes, h_g nodes that hard anti-affinity may
// forbid: at most one per other member of g's hard classes), g is always
// placed. The check is made for every HA group that may need a restart;
// groups with no possible-owner or label restriction share one check per
// distinct h_g.
//
// The factor 2 and the per-resource worst cases make the bound loose: it
// can say "no" for clusters that would survive. The answer then reads
// "cannot prove", and MethodBound tells the operator why.
func (e *engine) bound(r *Reserve, u []int32, haOn [][]int32, base []int32) {
	r.Method = MethodBound
	k := r.K
	h := e.headroomTerms(haOn, base)

	// Headroom: per resource, the worst K nodes to lose are those with the
	// largest terms, and the terms add up (see headTerms).
	var worstCPU, worstMem []int64
	for _, n := range u {
		worstCPU = append(worstCPU, h.termCPU[n])
		worstMem = append(worstMem, h.termMem[n])
	}
	r.Headroom = Headroom{CPUMillis: h.freeCPU - h.baseCPU - topSum(worstCPU, k), MemoryBytes: h.freeMem - h.baseMem - topSum(worstMem, k)}
	byNorm := append([]int32(nil), u...)
	sort.SliceStable(byNorm, func(i, j int) bool {
		return -h.norm(-h.termCPU[byNorm[i]], -h.termMem[byNorm[i]]) > -h.norm(-h.termCPU[byNorm[j]], -h.termMem[byNorm[j]])
	})
	r.WorstFailure = e.nodeNames(sortedPrefix(byNorm, k))

	var haCPU, haMem []int64
	var sCPU, sMem int64
	var cands []int32
	for _, n := range u {
		var c, m int64
		for _, g := range haOn[n] {
			c += e.c.groups[g].cpu
			m += e.c.groups[g].mem
			cands = append(cands, g)
		}
		haCPU = append(haCPU, c)
		haMem = append(haMem, m)
	}
	cands = append(cands, base...)
	for _, g := range cands {
		sCPU = max(sCPU, e.c.groups[g].cpu)
		sMem = max(sMem, e.c.groups[g].mem)
	}
	dCPU := h.baseCPU + topSum(haCPU, k)
	dMem := h.baseMem + topSum(haMem, k)
	if len(cands) == 0 || (dCPU == 0 && dMem == 0) {
		r.OK = true
		return
	}
	t := make([]float64, len(e.c.nodes))
	for n, nd := range e.c.nodes {
		if !e.eligible[n] {
			continue
		}
		x, y := math.Inf(1), math.Inf(1)
		if dCPU > 0 {
			x = float64(max(0, nd.cpuCap-e.cpuUsed[n]-sCPU)) / float64(dCPU)
		}
		if dMem > 0 {
			y = float64(max(0, nd.memCap-e.memUsed[n]-sMem)) / float64(dMem)
		}
		t[n] = math.Min(x, y)
	}
	// margin: never round towards "yes".
	const need = 2 + 1e-9
	check := func(g int32, hg int) (float64, bool) {
		gg := e.c.groups[g]
		var vals []float64
		if gg.anyOwner {
			for n := range e.c.nodes {
				if e.eligible[n] {
					vals = append(vals, t[n])
				}
			}
		} else {
			for _, n := range gg.owners {
				if e.eligible[n] {
					vals = append(vals, t[n])
				}
			}
		}
		sort.Sort(sort.Reverse(sort.Float64Slice(vals)))
		drop := min(k+hg, len(vals))
		s := 0.0
		for _, v := range vals[drop:] {
			s += v
		}
		return s, s >= need
	}
	e.sortByRank(cands)
	cache := map[int]bool{}
	for _, g := range cands {
		hg := e.hardPartners(g)
		gg := e.c.groups[g]
		if gg.anyOwner {
			if ok, done := cache[hg]; done && ok {
				continue
			}
		}
		s, ok := check(g, hg)
		if gg.anyOwner {
			cache[hg] = ok
		}
		if !ok {
			r.BrokenSets = 1
			r.Breach = &Breach{
				Failed: e.nodeNames(sortedPrefix(byNorm, k)),
				Group:  gg.name,
				Reason: fmt.Sprintf("cannot prove room after %d failures (conservative bound: %.2f < 2 of the displaced demand %s cpu, %s memory fits with fragmentation on the nodes it may use)", k, s, fmtCPU(dCPU), fmtBytes(dMem)),
			}
			return
		}
	}
	r.OK = true
}

// hardPartners counts the other groups that hard anti-affinity may use to
// keep g off a node: each can forbid at most the one node it runs on.
func (e *engine) hardPartners(g int32) int {
	seen := map[int32]bool{}
	for _, cr := range e.c.groups[g].classes {
		for _, m := range e.c.classes[cr.c].members {
			if m.g != g && (cr.hard || m.hard) {
				seen[m.g] = true
			}
		}
	}
	return len(seen)
}

func topSum(v []int64, k int) int64 {
	s := append([]int64(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] > s[j] })
	var sum int64
	for i := 0; i < k && i < len(s); i++ {
		sum += s[i]
	}
	return sum
}

func sortedPrefix(ns []int32, k int) []int32 {
	p := append([]int32(nil), ns[:min(k, len(ns))]...)
	sort.Slice(p, func(i, j int) bool { return p[i] < p[j] })
	return p
}
