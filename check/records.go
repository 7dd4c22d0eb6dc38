package check

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/sim"
)

// tick identifies one guest tick: the execution log and the disks get the
// very same encoded line, wall time included, so equal keys are the same
// tick.
type tick struct {
	group, vm, node string
	epoch, counter  uint64
	wall            int64 // UnixNano; JSON keeps every nanosecond
}

func tickOf(r sim.Record) tick {
	return tick{r.Group, r.VM, r.Node, r.Epoch, r.Counter, r.Wall.UnixNano()}
}

// check runs the record checks (everything but the API's).
func (ev *evidence) check(opt Options) Report {
	r := Report{VMs: len(ev.logs), Disks: len(ev.disks), Violations: []Violation{}, Notes: []Violation{}}
	onDisk := make(map[tick]bool)
	hasDisk := make(map[driver.VMID]bool)
	for _, d := range ev.disks {
		r.Records += len(d.recs)
		for _, rec := range d.recs {
			onDisk[tickOf(rec)] = true
			hasDisk[driver.VMID{Group: rec.Group, Resource: rec.VM}] = true
		}
	}
	for _, l := range ev.logs {
		r.Records += len(l.recs)
		runs := splitRuns(l.recs)
		r.Violations = append(r.Violations, checkRunPairs(l, runs, opt.Skew)...)
		for _, rn := range runs {
			if v, ok := checkRunCounter(l, rn, onDisk, hasDisk[l.id]); ok {
				r.Violations = append(r.Violations, v)
			}
		}
	}
	for _, d := range ev.disks {
		r.Violations = append(r.Violations, checkDisk(d, opt.Skew)...)
	}
	return r
}

// run is the ticks of one (node, epoch) in one execution log. A VM frozen
// and thawed stays one run: the lease protocol thaws only at the same
// epoch, so anything another owner did in the gap is itself a violation.
type run struct {
	node  string
	epoch uint64
	recs  []sim.Record // in file order, which is the writer's order
	// first and last are the earliest and latest ticks by wall time: the
	// run's interval.
	first, last sim.Record
}

func (rn *run) String() string {
	return fmt.Sprintf("node %s epoch %d (%s, %s to %s, counters %d to %d)",
		rn.node, rn.epoch, plural(len(rn.recs), "tick"), ts(rn.first.Wall), ts(rn.last.Wall), rn.first.Counter, rn.last.Counter)
}

// ticksIn counts the run's ticks with a wall time in [lo, hi].
func (rn *run) ticksIn(lo, hi time.Time) int {
	n := 0
	for _, r := range rn.recs {
		if !r.Wall.Before(lo) && !r.Wall.After(hi) {
			n++
		}
	}
	return n
}

// splitRuns groups records by (node, epoch), sorted by start time.
func splitRuns(recs []sim.Record) []*run {
	type key struct {
		node  string
		epoch uint64
	}
	byKey := make(map[key]*run)
	var runs []*run
	for _, r := range recs {
		k := key{r.Node, r.Epoch}
		rn := byKey[k]
		if rn == nil {
			rn = &run{node: r.Node, epoch: r.Epoch, first: r, last: r}
			byKey[k] = rn
			runs = append(runs, rn)
		}
		rn.recs = append(rn.recs, r)
		if r.Wall.Before(rn.first.Wall) {
			rn.first = r
		}
		if r.Wall.After(rn.last.Wall) {
			rn.last = r
		}
	}
	slices.SortFunc(runs, func(a, b *run) int {
		return cmp.Or(a.first.Wall.Compare(b.first.Wall), cmp.Compare(a.epoch, b.epoch), cmp.Compare(a.node, b.node))
	})
	return runs
}

// checkRunPairs compares every two runs of one VM: overlapping intervals
// (two runners), one epoch on two nodes (two owners of one token), and an
// older epoch starting after a newer one (a stale decision acted on).
// There are few runs per VM, one per owner change, so all pairs is cheap.
func checkRunPairs(l *execLog, runs []*run, skew time.Duration) []Violation {
	var out []Violation
	add := func(k Kind, format string, args ...any) {
		out = append(out, Violation{Kind: k, Group: l.id.Group, VM: l.id.Resource, Detail: fmt.Sprintf(format, args...)})
	}
	for i, a := range runs {
		for _, b := range runs[i+1:] {
			// Sorted, so a starts no later than b. The intervals, each
			// widened by skew on both sides, intersect iff b starts before
			// a ends plus twice the skew.
			overlap := !b.first.Wall.After(a.last.Wall.Add(2 * skew))
			same := ""
			if a.epoch == b.epoch {
				same = fmt.Sprintf("; epoch %d ran on two nodes, but an epoch is one owner's token", a.epoch)
			}
			switch {
			case overlap:
				add(TwoRunners, "%s%s", overlapDetail(a, b, skew), same)
			case a.epoch == b.epoch:
				add(TwoRunners, "epoch %d ran on two nodes: %s, then %s; an epoch is one owner's token, so one of them ran without owning the group",
					a.epoch, a, b)
			case a.epoch > b.epoch:
				add(EpochBack, "%s started %s after %s had begun: an older owner ran after a newer one",
					b, dur(b.first.Wall.Sub(a.first.Wall)), a)
			}
		}
	}
	return out
}

// overlapDetail describes two overlapping runs, a starting first.
func overlapDetail(a, b *run, skew time.Duration) string {
	lo, hi := b.first.Wall, a.last.Wall
	if b.last.Wall.Before(hi) {
		hi = b.last.Wall
	}
	if hi.Before(lo) {
		// Only the skew allowance makes them overlap.
		return fmt.Sprintf("%s and %s may have run at once: %s's last tick at %s and %s's first at %s are %s apart, within twice the clock skew allowance of %s",
			a, b, a.node, ts(a.last.Wall), b.node, ts(b.first.Wall), dur(lo.Sub(hi)), skew)
	}
	na, nb := a.ticksIn(lo, hi), b.ticksIn(lo, hi)
	if na == 0 {
		// Then b lies wholly in a gap of a: a was frozen (or paused)
		// while b ran, and ran again afterwards.
		var before, after time.Time
		for _, r := range a.recs {
			if r.Wall.Before(lo) && r.Wall.After(before) {
				before = r.Wall
			}
			if r.Wall.After(hi) && (after.IsZero() || r.Wall.Before(after)) {
				after = r.Wall
			}
		}
		return fmt.Sprintf("%s was idle from its tick at %s to its tick at %s, across all of %s: it executed again after another runner had started",
			a, ts(before), ts(after), b)
	}
	return fmt.Sprintf("%s and %s executed at overlapping times: both ran from %s to %s (%s; %s made %s and %s %s in that window)",
		a, b, ts(lo), ts(hi), dur(hi.Sub(lo)), a.node, plural(na, "tick"), b.node, plural(nb, "tick"))
}

// checkRunCounter checks that the guest counter strictly increases along a
// run. It reports the first offending tick and how many more there are.
//
// One repeat is legitimate: the executor restarts a crashed VM in place, at
// the same node and epoch, and the new boot continues from the last record
// of its first disk. The log is written before the disks, so the tick a
// crash cut off between the two is in the log but on no disk, and the
// reboot repeats it. A repeated counter whose earlier tick did reach a
// disk has no such excuse: it takes two guests counting from the same
// place. A VM without disks has nowhere to recover from, so its reboot
// starts again at 1.
func checkRunCounter(l *execLog, rn *run, onDisk map[tick]bool, hasDisk bool) (Violation, bool) {
	first, more := -1, 0
	for j := 1; j < len(rn.recs); j++ {
		p, c := rn.recs[j-1], rn.recs[j]
		switch {
		case c.Counter > p.Counter:
		case hasDisk && c.Counter == p.Counter && !onDisk[tickOf(p)]:
		case !hasDisk && c.Counter == 1:
		case first < 0:
			first = j
		default:
			more++
		}
	}
	if first < 0 {
		return Violation{}, false
	}
	p, c := rn.recs[first-1], rn.recs[first]
	why := ""
	if c.Counter == p.Counter && hasDisk {
		why = ", and the earlier tick reached a disk, so no reboot explains the repeat"
	}
	return Violation{
		Kind: CounterBack, Group: l.id.Group, VM: l.id.Resource,
		Detail: fmt.Sprintf("in the execution log %s, node %s epoch %d ran counter %d at %s after counter %d at %s%s%s",
			l.path, rn.node, rn.epoch, c.Counter, ts(c.Wall), p.Counter, ts(p.Wall), why, moreTicks(more)),
	}, true
}

func moreTicks(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (and %s more like it)", plural(n, "record"))
}

// checkDisk checks one disk's records in file order against each other and
// against its header. Each rule reports its first offending record and how
// many more there are, so one broken writer does not bury the rest.
//
// Every VM of a group may write the group's disks, so the counter, which is
// a VM's, is followed per VM, and the epoch, which is the group's, per
// group.
//
// What is legitimately possible: a claim at a newer epoch before that
// epoch's first write (the header is ahead of every record, or the new
// owner never wrote at all); a gap in counters (ticks fenced, or cut off by
// a freeze between the log and the disk). What is not: an epoch going
// back, a record above the header (written without claiming the disk), and
// an older epoch's record stamped after the newer claim. The last holds
// because a guest stamps its record before taking the disk's lock while a
// claim stamps itself under it: a record stamped later than the claim was
// appended after the claim released the lock, which must have refused it.
// The header keeps only the latest claim, so only that one can be checked.
func checkDisk(d *disk, skew time.Duration) []Violation {
	type rule struct {
		kind        Kind
		first, more int
		prev        int // the record the first offender is compared with
		what        func(i, prev int) string
	}
	recs, h := d.recs, d.hdr
	rules := []*rule{
		{kind: CounterBack, what: func(i, p int) string {
			return fmt.Sprintf("record %d (node %s epoch %d, %s) has counter %d after counter %d in record %d (node %s epoch %d, %s): the guest counter went backwards on the disk",
				i+1, recs[i].Node, recs[i].Epoch, ts(recs[i].Wall), recs[i].Counter, recs[p].Counter, p+1, recs[p].Node, recs[p].Epoch, ts(recs[p].Wall))
		}},
		{kind: EpochBack, what: func(i, p int) string {
			return fmt.Sprintf("record %d (node %s, counter %d, %s) has epoch %d after epoch %d in record %d (node %s, counter %d): a write from an older epoch was accepted after a newer one wrote",
				i+1, recs[i].Node, recs[i].Counter, ts(recs[i].Wall), recs[i].Epoch, recs[p].Epoch, p+1, recs[p].Node, recs[p].Counter)
		}},
		{kind: EpochBack, what: func(i, _ int) string {
			return fmt.Sprintf("record %d (node %s, counter %d, %s) has epoch %d, above the header's claim by epoch %d (node %s): written without claiming the disk",
				i+1, recs[i].Node, recs[i].Counter, ts(recs[i].Wall), recs[i].Epoch, h.Epoch, h.Node)
		}},
		{kind: EpochBack, what: func(i, _ int) string {
			return fmt.Sprintf("record %d (node %s epoch %d, counter %d) is stamped %s, %s after the header's claim by epoch %d (node %s, %s): a fenced write was accepted",
				i+1, recs[i].Node, recs[i].Epoch, recs[i].Counter, ts(recs[i].Wall), dur(recs[i].Wall.Sub(h.Wall)), h.Epoch, h.Node, ts(h.Wall))
		}},
	}
	for _, ru := range rules {
		ru.first = -1
	}
	broken := func(ru *rule, i, prev int) {
		if ru.first < 0 {
			ru.first, ru.prev = i, prev
		} else {
			ru.more++
		}
	}
	lastOfVM := make(map[driver.VMID]int) // index of the VM's previous record
	lastOfGroup := make(map[string]int)   // index of the group's previous record
	for i, r := range recs {
		id := driver.VMID{Group: r.Group, Resource: r.VM}
		if p, ok := lastOfVM[id]; ok && r.Counter <= recs[p].Counter {
			broken(rules[0], i, p)
		}
		lastOfVM[id] = i
		if p, ok := lastOfGroup[r.Group]; ok && r.Epoch < recs[p].Epoch {
			broken(rules[1], i, p)
		}
		lastOfGroup[r.Group] = i
		if r.Epoch > h.Epoch {
			broken(rules[2], i, -1)
		}
		// Two writers' clocks may differ by twice the skew: only a stamp
		// later than that is evidence, since legitimate writes run right
		// up to the claim.
		if r.Epoch < h.Epoch && r.Wall.After(h.Wall.Add(2*skew)) {
			broken(rules[3], i, -1)
		}
	}
	var out []Violation
	for _, ru := range rules {
		if ru.first < 0 {
			continue
		}
		r := recs[ru.first]
		out = append(out, Violation{
			Kind: ru.kind, Group: r.Group, VM: r.VM, Disk: d.path,
			Detail: fmt.Sprintf("disk %s: %s%s", d.path, ru.what(ru.first, ru.prev), moreTicks(ru.more)),
		})
	}
	return out
}
