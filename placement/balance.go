package placement

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Mode is the balancer's mode.
type Mode int

// The modes. Off proposes nothing; Recommend and Automatic compute the
// same proposal, and Automatic marks it for execution.
const (
	ModeOff Mode = iota
	ModeRecommend
	ModeAutomatic
)

func (m Mode) String() string {
	switch m {
	case ModeOff:
		return "off"
	case ModeRecommend:
		return "recommend"
	case ModeAutomatic:
		return "automatic"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// LastMove is when and where a group last moved, for hysteresis.
type LastMove struct {
	At       time.Time
	From, To string
}

// History is the last move of each group (balancer, drain or failover:
// any change of owner), passed in as data.
type History map[string]LastMove

// BalanceOptions tune Balance. A zero field takes its default; write a
// negative Threshold or CostPerSecond to ask for zero.
type BalanceOptions struct {
	Mode Mode
	// Now is the time the proposal is made at (the leader's clock, passed
	// in): with History it decides what is held off.
	Now time.Time
	// Reserve is the K the balancer must keep: no move may break it.
	Reserve int
	// SiteLoss: the balancer must keep the site-loss reserve too (see
	// Spec).
	SiteLoss bool
	// Threshold: at or below this imbalance nothing moves. Default 0.05.
	Threshold float64
	// MinGain is the hysteresis margin: a move must lower the spread (see
	// Proposal) by more than MinGain after its cost is counted. Default
	// 0.01; it is never below 1e-9, which is what makes the balancer
	// terminate: every move lowers the spread by more than MinGain, and
	// the spread is never negative, so no sequence of moves can cycle,
	// whoever proposes them and whatever the hold-off.
	MinGain float64
	// MaxMoves bounds the moves of one proposal. Default 10; in power mode
	// the default is no bound (a node is only powered off whole).
	MaxMoves int
	// HoldOff: a group that moved less than HoldOff before Now does not
	// move. Default 1h.
	HoldOff time.Duration
	// BandwidthBytesPerSec is the migration link. Default 1.25e9 (10 Gb/s).
	BandwidthBytesPerSec int64
	// CostPerSecond converts a live migration's duration into spread
	// units: a move's cost is its estimated seconds × CostPerSecond.
	// Default 0.0005 (a 20 s migration must gain 0.01 more).
	CostPerSecond float64
	// MaxDirtyRatio: a group that dirties memory faster than this fraction
	// of the bandwidth would not converge in pre-copy and is never moved
	// live by the balancer. Default 0.8.
	MaxDirtyRatio float64
	// Power consolidates instead of spreading: it empties the least loaded
	// nodes onto the others and lists the nodes that can then be powered
	// off while the reserve holds. At least Reserve+1 nodes stay on.
	Power bool
	// DryRun: the proposal is never to be executed, whatever the mode.
	DryRun bool
}

func (o BalanceOptions) withDefaults() BalanceOptions {
	switch {
	case o.Threshold == 0:
		o.Threshold = 0.05
	case o.Threshold < 0:
		o.Threshold = 0
	}
	if o.MinGain == 0 {
		o.MinGain = 0.01
	}
	o.MinGain = math.Max(o.MinGain, 1e-9)
	if o.MaxMoves == 0 && !o.Power {
		o.MaxMoves = 10
	}
	if o.HoldOff == 0 {
		o.HoldOff = time.Hour
	}
	if o.BandwidthBytesPerSec <= 0 {
		o.BandwidthBytesPerSec = 1_250_000_000
	}
	switch {
	case o.CostPerSecond == 0:
		o.CostPerSecond = 0.0005
	case o.CostPerSecond < 0:
		o.CostPerSecond = 0
	}
	if o.MaxDirtyRatio <= 0 {
		o.MaxDirtyRatio = 0.8
	}
	return o
}

// ProposedMove is one live migration the balancer proposes, with its
// explanation.
type ProposedMove struct {
	Move
	// Gain is how much the spread drops (0 in power mode).
	Gain float64
	// Bytes and Seconds estimate the live migration: memory plus what the
	// guest dirties while it is copied.
	Bytes   int64
	Seconds float64
	Why     string
}

// Proposal is what the balancer would do.
type Proposal struct {
	Mode Mode
	// Execute: Mode is automatic and this is not a dry run.
	Execute bool
	// Before and After are the imbalance: the standard deviation of the
	// nodes' utilisation, pooled over CPU and memory,
	// sqrt((Σ(cpu−mean)² + Σ(mem−mean)²) / N) over the N nodes that take
	// work (DRS uses the deviation of host load; Ganeti's hbal adds such
	// deviations). Threshold applies to it.
	//
	// Moves are chosen by the spread: the same sums of squared deviations
	// without the division and root. It falls exactly when the imbalance
	// falls, but a move's effect on it does not shrink as the cluster
	// grows (moving 2% of a node from a 90% node to an empty one gains
	// ~0.036 on 4 nodes or on 400), so MinGain and CostPerSecond mean the
	// same at any size.
	Before, After float64
	Moves         []ProposedMove
	// PowerOff lists the nodes that can be powered off after Moves (power
	// mode only).
	PowerOff []string
	// Stopped says why the balancer stopped proposing.
	Stopped string
	Notes   []string
	// Reserve is the reserve check after the moves (nil when no reserve is
	// kept: Reserve 0 and no SiteLoss).
	Reserve *Reserve
}

func (o BalanceOptions) spec() Spec { return Spec{K: o.Reserve, SiteLoss: o.SiteLoss} }

// Balance proposes live migrations that bring the imbalance under the
// threshold with as few moves as it can (greedy: each step takes the move
// with the best gain after cost), never breaking a hard constraint, never
// making a group's soft preferences worse, never breaking the reserve, and
// never moving a group that moved within the hold-off. With Power it
// consolidates instead (see BalanceOptions.Power).
func Balance(st State, opts BalanceOptions, hist History) Proposal {
	opts = opts.withDefaults()
	c := compile(st)
	e := newEngine(c)
	b := &balancer{e: e, opts: opts, hist: hist, moved: map[int32]bool{}}
	b.util = newUtil(e)
	p := Proposal{Mode: opts.Mode, Execute: opts.Mode == ModeAutomatic && !opts.DryRun}
	p.Before = b.util.score()
	p.After = p.Before
	if opts.Mode == ModeOff {
		p.Execute = false
		p.Stopped = "balancer is off"
		return p
	}
	if opts.spec().On() {
		b.res = e.clone().reserve(opts.spec(), nil, nil)
		if !b.res.OK {
			p.Notes = append(p.Notes, fmt.Sprintf("%s is already broken (%s); moves may not break more failure sets", opts.spec(), b.res.Breach))
		}
	}
	if opts.Power {
		b.consolidate(&p)
	} else {
		b.spread(&p)
	}
	p.After = b.util.score()
	p.Reserve = b.res
	p.Notes = append(p.Notes, b.notes()...)
	return p
}

type balancer struct {
	e     *engine
	opts  BalanceOptions
	hist  History
	util  *util
	res   *Reserve
	moved map[int32]bool

	held      []string
	tooDirty  []string
	reserveNo int
}

// movable reports whether g may be moved now, noting why not.
func (b *balancer) movable(g int32) bool {
	gg := b.e.c.groups[g]
	if b.moved[g] {
		return false
	}
	if lm, ok := b.hist[gg.name]; ok && b.opts.Now.Sub(lm.At) < b.opts.HoldOff {
		b.held = append(b.held, gg.name)
		return false
	}
	if float64(gg.dirty) >= b.opts.MaxDirtyRatio*float64(b.opts.BandwidthBytesPerSec) {
		b.tooDirty = append(b.tooDirty, gg.name)
		return false
	}
	return true
}

// cost estimates a live migration of g: pre-copy sends memory, then what
// was dirtied meanwhile, and so on: mem × (1 + r + r² + …) = mem / (1−r)
// with r = dirty rate / bandwidth.
func (b *balancer) cost(g int32) (bytes int64, secs float64) {
	gg := b.e.c.groups[g]
	bw := float64(b.opts.BandwidthBytesPerSec)
	r := float64(gg.dirty) / bw
	by := float64(gg.mem) / (1 - r)
	return int64(by), by / bw
}

type candidate struct {
	g, from, to int32
	gain, net   float64
}

// better orders candidates: best gain after cost, then by group and node
// name, so equal inputs always give equal proposals.
func (b *balancer) better(x, y candidate) bool {
	if x.net != y.net {
		return x.net > y.net
	}
	if gx, gy := b.e.c.groups[x.g].name, b.e.c.groups[y.g].name; gx != gy {
		return gx < gy
	}
	return x.to < y.to
}

const maxTries = 32

func (b *balancer) spread(p *Proposal) {
	e := b.e
	for {
		if len(p.Moves) >= b.opts.MaxMoves {
			p.Stopped = fmt.Sprintf("reached the limit of %d moves", b.opts.MaxMoves)
			return
		}
		score, sp := b.util.score(), b.util.spread()
		if score <= b.opts.Threshold {
			p.Stopped = fmt.Sprintf("imbalance %.4f is at or below the threshold %.4f", score, b.opts.Threshold)
			return
		}
		b.held, b.tooDirty = b.held[:0], b.tooDirty[:0]
		var top []candidate
		for g := range e.c.groups {
			gi := int32(g)
			a := e.assign[g]
			if a < 0 || !e.eligible[a] || !b.movable(gi) {
				continue
			}
			e.prepare(gi)
			stay := e.parts(gi, a, Spread).prefScore()
			_, secs := b.cost(gi)
			costPts := secs * b.opts.CostPerSecond
			for n := range e.c.nodes {
				to := int32(n)
				if to == a || !e.fits(gi, to) || e.parts(gi, to, Spread).prefScore() < stay {
					continue
				}
				gain := sp - b.util.spreadAfter(gi, a, to)
				net := gain - costPts
				if net <= b.opts.MinGain {
					continue
				}
				top = insertTop(top, candidate{g: gi, from: a, to: to, gain: gain, net: net}, maxTries, b.better)
			}
		}
		if len(top) == 0 {
			p.Stopped = fmt.Sprintf("no move lowers the spread %.4f (imbalance %.4f) by more than %.4f after its cost", sp, score, b.opts.MinGain)
			return
		}
		accepted := false
		for _, cd := range top {
			if nr, ok := b.keepsReserve([]int32{cd.from, cd.to}, func() { e.move(cd.g, cd.to) }); ok {
				b.commit(p, cd, score, nr)
				accepted = true
				break
			}
			b.reserveNo++
		}
		if !accepted {
			p.Stopped = fmt.Sprintf("the %d best moves would each break %s", len(top), b.opts.spec())
			return
		}
	}
}

func insertTop(top []candidate, c candidate, n int, better func(a, b candidate) bool) []candidate {
	if len(top) == n && !better(c, top[n-1]) {
		return top
	}
	i := sort.Search(len(top), func(i int) bool { return better(c, top[i]) })
	if len(top) < n {
		top = append(top, candidate{})
	}
	copy(top[i+1:], top[i:])
	top[i] = c
	return top
}

// keepsReserve applies change to the engine and checks the reserve. On
// success the change stays (the undo log is cleared) and the new reserve
// is returned; otherwise the change is rolled back. A reserve that holds
// must still hold; a broken one must not get more broken sets.
func (b *balancer) keepsReserve(dirtyNodes []int32, change func()) (*Reserve, bool) {
	e := b.e
	mark := len(e.log)
	change()
	if b.res == nil {
		e.log = e.log[:0]
		return nil, true
	}
	dirty := make([]bool, len(e.c.nodes))
	for _, n := range dirtyNodes {
		dirty[n] = true
	}
	nr := e.clone().reserve(b.opts.spec(), b.res.data, dirty)
	if (b.res.OK && !nr.OK) || nr.BrokenSets > b.res.BrokenSets {
		e.rollback(mark)
		return nr, false
	}
	e.log = e.log[:0]
	return nr, true
}

func (b *balancer) commit(p *Proposal, cd candidate, before float64, nr *Reserve) {
	e := b.e
	gg := e.c.groups[cd.g]
	from, to := &e.c.nodes[cd.from], &e.c.nodes[cd.to]
	// The engine already has the move; the utilisation view follows.
	b.util.refresh()
	after := b.util.score()
	by, secs := b.cost(cd.g)
	res := ""
	if nr != nil {
		b.res = nr
		res = fmt.Sprintf("; %s %s", b.opts.spec(), map[bool]string{true: "holds", false: "stays broken"}[nr.OK])
	}
	why := fmt.Sprintf("%s: %s (cpu %s, mem %s) -> %s (cpu %s, mem %s); imbalance %.4f -> %.4f (spread gain %.4f); moves %s in ~%.1fs (dirty %s/s), cost %.4f%s",
		gg.name,
		from.name, pct(e.cpuUsed[cd.from]+gg.cpu, from.cpuCap), pct(e.memUsed[cd.from]+gg.mem, from.memCap),
		to.name, pct(e.cpuUsed[cd.to]-gg.cpu, to.cpuCap), pct(e.memUsed[cd.to]-gg.mem, to.memCap),
		before, after, cd.gain, fmtBytes(by), secs, fmtBytes(gg.dirty), cd.gain-cd.net, res)
	p.Moves = append(p.Moves, ProposedMove{
		Move: Move{Group: gg.name, From: from.name, To: to.name},
		Gain: cd.gain, Bytes: by, Seconds: secs, Why: why,
	})
	b.moved[cd.g] = true
}

func (b *balancer) notes() []string {
	var out []string
	if len(b.held) > 0 {
		hs := append([]string(nil), b.held...)
		sort.Strings(hs)
		out = append(out, fmt.Sprintf("held off (moved within %s): %s", b.opts.HoldOff, capList(hs, 10, ",")))
	}
	if len(b.tooDirty) > 0 {
		ds := append([]string(nil), b.tooDirty...)
		sort.Strings(ds)
		out = append(out, fmt.Sprintf("not moved live (dirty rate too high for pre-copy): %s", capList(ds, 10, ",")))
	}
	if b.reserveNo > 0 {
		out = append(out, fmt.Sprintf("%d candidate move(s) rejected because they would break %s", b.reserveNo, b.opts.spec()))
	}
	return out
}

// consolidate empties the least loaded nodes, one whole node at a time,
// packing their groups onto the others, and keeps a node off only if the
// reserve still holds without it.
func (b *balancer) consolidate(p *Proposal) {
	e := b.e
	var on []int32
	for n := range e.c.nodes {
		if e.eligible[n] {
			on = append(on, int32(n))
		}
	}
	load := func(n int32) float64 {
		nd := &e.c.nodes[n]
		return math.Max(frac(e.cpuUsed[n], nd.cpuCap), frac(e.memUsed[n], nd.memCap))
	}
	minOn := max(1, b.opts.Reserve+1)
	left := len(on)
	tried := make([]bool, len(e.c.nodes))
	for {
		// The least loaded node not tried yet (loads change as nodes are
		// emptied onto others).
		n := int32(-1)
		for _, m := range on {
			if !tried[m] && e.eligible[m] && (n < 0 || load(m) < load(n)) {
				n = m
			}
		}
		if n < 0 {
			break
		}
		tried[n] = true
		nd := &e.c.nodes[n]
		if left <= minOn {
			p.Notes = append(p.Notes, fmt.Sprintf("keeping the last %d node(s) on (reserve %d needs %d)", left, b.opts.Reserve, minOn))
			break
		}
		var gs []int32
		blocked := ""
		for g := range e.c.groups {
			if e.assign[g] == n {
				gs = append(gs, int32(g))
				if !b.movable(int32(g)) && blocked == "" {
					blocked = e.c.groups[g].name
				}
			}
		}
		if blocked != "" {
			p.Notes = append(p.Notes, fmt.Sprintf("keeping %s on: group %s cannot move now", nd.name, blocked))
			continue
		}
		if b.opts.MaxMoves > 0 && len(p.Moves)+len(gs) > b.opts.MaxMoves {
			p.Notes = append(p.Notes, fmt.Sprintf("keeping %s on: emptying it needs %d moves, over the limit of %d", nd.name, len(gs), b.opts.MaxMoves))
			continue
		}
		e.sortByRank(gs)
		mark := len(e.log)
		e.eligible[n] = false
		var moves []candidate
		failedG := int32(-1)
		for _, g := range gs {
			to := e.best(g, Pack)
			if to < 0 {
				failedG = g
				break
			}
			e.move(g, to)
			moves = append(moves, candidate{g: g, from: n, to: to})
		}
		if failedG >= 0 {
			u := e.explain(failedG)
			e.rollback(mark)
			e.eligible[n] = true
			p.Notes = append(p.Notes, fmt.Sprintf("keeping %s on: group %s has no room elsewhere (%s)", nd.name, u.Group, u.Reason))
			continue
		}
		e.up[n] = false
		dirty := []int32{n}
		for _, m := range moves {
			dirty = append(dirty, m.to)
		}
		nr, ok := b.keepsReserve(dirty, func() {})
		if !ok {
			e.rollback(mark)
			e.up[n], e.eligible[n] = true, true
			p.Notes = append(p.Notes, fmt.Sprintf("keeping %s on: powering it off breaks %s: %s", nd.name, b.opts.spec(), nr.Breach))
			continue
		}
		e.log = e.log[:0]
		if nr != nil {
			b.res = nr
		}
		// Record the moves against the utilisation view and explain them.
		for _, m := range moves {
			gg := e.c.groups[m.g]
			to := &e.c.nodes[m.to]
			by, secs := b.cost(m.g)
			p.Moves = append(p.Moves, ProposedMove{
				Move: Move{Group: gg.name, From: nd.name, To: to.name}, Bytes: by, Seconds: secs,
				Why: fmt.Sprintf("%s: empty %s to power it off: -> %s (now cpu %s, mem %s); moves %s in ~%.1fs",
					gg.name, nd.name, to.name, pct(e.cpuUsed[m.to], to.cpuCap), pct(e.memUsed[m.to], to.memCap), fmtBytes(by), secs),
			})
			b.moved[m.g] = true
		}
		b.util.remove(n)
		p.PowerOff = append(p.PowerOff, nd.name)
		left--
	}
	sort.Strings(p.PowerOff)
	if p.Stopped == "" {
		p.Stopped = fmt.Sprintf("consolidated: %d node(s) can be powered off", len(p.PowerOff))
	}
}

func frac(used, cap int64) float64 {
	if cap <= 0 {
		return 0
	}
	return float64(used) / float64(cap)
}

// util keeps the sums behind the imbalance score so that the effect of a
// move is computed in O(1).
type util struct {
	e       *engine
	in      []bool
	n       float64
	sc, sc2 float64
	sm, sm2 float64
}

func newUtil(e *engine) *util {
	return newUtilFrom(e, append([]bool(nil), e.eligible...))
}

func (u *util) score() float64 {
	if u.n <= 1 {
		return 0
	}
	return math.Sqrt(u.spread() / u.n)
}

// sqDev is Σ (u − mean)² = S2 − S²/N.
func sqDev(s, s2, n float64) float64 {
	if n <= 1 {
		return 0
	}
	return math.Max(0, s2-s*s/n)
}

func (u *util) spread() float64 { return sqDev(u.sc, u.sc2, u.n) + sqDev(u.sm, u.sm2, u.n) }

// spreadAfter is the spread if g moved from a to b (the engine has not
// moved it yet), in O(1).
func (u *util) spreadAfter(g, a, b int32) float64 {
	e := u.e
	gg := e.c.groups[g]
	na, nb := &e.c.nodes[a], &e.c.nodes[b]
	sc, sc2, sm, sm2 := u.sc, u.sc2, u.sm, u.sm2
	upd := func(s, s2 *float64, old, nw float64) {
		*s += nw - old
		*s2 += nw*nw - old*old
	}
	if u.in[a] {
		upd(&sc, &sc2, frac(e.cpuUsed[a], na.cpuCap), frac(e.cpuUsed[a]-gg.cpu, na.cpuCap))
		upd(&sm, &sm2, frac(e.memUsed[a], na.memCap), frac(e.memUsed[a]-gg.mem, na.memCap))
	}
	if u.in[b] {
		upd(&sc, &sc2, frac(e.cpuUsed[b], nb.cpuCap), frac(e.cpuUsed[b]+gg.cpu, nb.cpuCap))
		upd(&sm, &sm2, frac(e.memUsed[b], nb.memCap), frac(e.memUsed[b]+gg.mem, nb.memCap))
	}
	return sqDev(sc, sc2, u.n) + sqDev(sm, sm2, u.n)
}

// refresh recomputes the sums after the engine made a move: exact (no
// drift from repeated updates), and done only once per accepted move.
func (u *util) refresh() { *u = *newUtilFrom(u.e, u.in) }

// remove takes a powered-off node out of the score.
func (u *util) remove(n int32) {
	in := append([]bool(nil), u.in...)
	in[n] = false
	*u = *newUtilFrom(u.e, in)
}

func newUtilFrom(e *engine, in []bool) *util {
	u := &util{e: e, in: in}
	for n, nd := range e.c.nodes {
		if !in[n] {
			continue
		}
		u.n++
		c, m := frac(e.cpuUsed[n], nd.cpuCap), frac(e.memUsed[n], nd.memCap)
		u.sc += c
		u.sc2 += c * c
		u.sm += m
		u.sm2 += m * m
	}
	return u
}
