// Package check verifies haven's safety invariants (DESIGN.md,
// "Invariants") from the evidence the sim driver leaves on shared storage
// and, given an agent, from the cluster state its API reports.
//
// # Evidence
//
// A simulated guest writes every tick twice (driver/sim, disk.go):
//
//   - to its execution log, sharedDir/.exec/<group>/<vm>.log, which is not
//     fenced: it shows every tick a guest executed, including ticks whose
//     disk write was refused;
//   - to each of its disks, which keep the highest epoch that claimed them
//     and refuse writes from an older one: they show what was durably
//     written.
//
// From the execution log the checker proves invariant 1 (one runner): it
// splits a VM's ticks into runs, one per (node, epoch), and reports two runs
// whose time intervals intersect, one epoch seen on two nodes, and an older
// epoch starting after a newer one has run. From the disks it proves that
// fencing held: the guest counter, which lives in VM memory and continues
// from the disk on every boot, never goes backwards on a disk, and no disk
// shows an epoch going backwards or a write its claim should have refused.
// With an agent (Cluster) it adds invariant 2 as far as the API shows it:
// every group the cluster says should run has ticked recently, by its owner
// at its epoch, failed groups are listed with their reasons, and no group
// an operator stopped went on running (a lost stop).
//
// # Clock
//
// Run intervals compare wall-clock stamps written by different writers, so
// the checker assumes all writers share one wall clock: true when every
// agent runs on one host, as in the tests and `haven dev`. Across hosts the
// clocks differ, and Options.Skew must bound how far any writer's clock may
// be from true time. Every run's interval is then widened by Skew on both
// sides, so that any two runs that might have overlapped in true time are
// reported; a real handover leaves a gap of at least a lease (seconds),
// which a skew of milliseconds does not close.
//
// # Limits
//
// The checker sees ticks, not instants: two runs that overlap for less than
// the time between their nearest ticks (one guest tick, 100 ms by default)
// can go unseen. It trusts the execution log to be complete (the sim
// guest crashes rather than run without writing it) and only knows the sim
// driver's files: VMs of other drivers leave no evidence here. A group
// deleted and created again under its name continues above its old epochs
// (a new group's first epoch is its creation's log index), so its old
// logs and disks read as earlier runs of the same VM. Invariants 3 to 5
// (migration outcome and memory, admission, refusals) are outside what
// these records can show.
package check

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Kind names what a Violation is about.
type Kind string

const (
	// TwoRunners: two (node, epoch) runs of one VM executed at overlapping
	// times, or one epoch ran on two nodes (at any times: an epoch is one
	// owner's token).
	TwoRunners Kind = "two-runners"
	// CounterBack: a disk's records, in file order, whose counter does not
	// strictly increase, or an execution-log run whose counter does not
	// (less an in-place reboot that legitimately repeats a tick its disk
	// never got; see the run check).
	CounterBack Kind = "counter-backwards"
	// EpochBack: a disk whose records' epochs decrease in file order, a
	// disk record above its header's epoch (written without a claim), a
	// disk record of an older epoch stamped after the header's newer claim
	// (accepted after fencing), or an execution-log run of an older epoch
	// that started after a run of a newer epoch had begun.
	EpochBack Kind = "epoch-backwards"
	// NotRunning: a group the cluster says should run (STARTING or ONLINE,
	// with an owner) whose VM's execution log shows no tick by the owner at
	// the group's epoch within Options.Freshness before the check.
	NotRunning Kind = "not-running"
	// RunsStopped: a group whose desired state is stopped (an operator
	// stopped it, or created it and never started it) whose VM ticked
	// later than Options.StopWithin after the stop: a lost stop.
	RunsStopped Kind = "runs-stopped"
	// Failed is informational, not a violation: a group in state FAILED,
	// with its reason. It goes to Report.Notes.
	Failed Kind = "failed"
)

// Violation is one finding. Group-level findings leave VM empty.
type Violation struct {
	Kind  Kind   `json:"kind"`
	Group string `json:"group"`
	VM    string `json:"vm,omitempty"`
	// Disk is the disk file, relative to the shared directory, for
	// findings about a disk.
	Disk string `json:"disk,omitempty"`
	// Detail is a sentence naming the nodes, epochs, times and counters.
	Detail string `json:"detail"`
}

func (v Violation) String() string {
	who := v.Group
	if v.VM != "" {
		who += "/" + v.VM
	}
	if who == "" {
		who = "(unnamed)"
	}
	return fmt.Sprintf("%s %s: %s", v.Kind, who, v.Detail)
}

// Report is the result of a check.
type Report struct {
	// VMs is the number of execution logs read, Disks the number of sim
	// disks, Records the records read from both.
	VMs     int `json:"vms"`
	Disks   int `json:"disks"`
	Records int `json:"records"`
	// Violations break an invariant; Notes are informational (Failed).
	Violations []Violation `json:"violations"`
	Notes      []Violation `json:"notes"`
}

// OK reports whether the check found no violation. Notes do not count: a
// failed group with a reason is what invariant 2 allows.
func (r Report) OK() bool { return len(r.Violations) == 0 }

// String is a multi-line summary for a person: a headline, then one line
// per violation and per note.
func (r Report) String() string {
	var b strings.Builder
	if r.OK() {
		fmt.Fprintf(&b, "ok: %d VMs, %d records, no violations", r.VMs, r.Records)
	} else {
		fmt.Fprintf(&b, "%s in %s, %s, %s:", plural(len(r.Violations), "violation"), plural(r.VMs, "VM"), plural(r.Disks, "disk"), plural(r.Records, "record"))
		for _, v := range r.Violations {
			b.WriteString("\n  " + v.String())
		}
	}
	for _, n := range r.Notes {
		b.WriteString("\nnote: " + n.String())
	}
	return b.String()
}

// Options tune the checks.
type Options struct {
	// Freshness is how recent the owner's last tick must be for a group
	// that should run; zero means 2s (twenty ticks at the default 100 ms,
	// so a busy host does not make a running VM look stopped).
	Freshness time.Duration
	// Now is the time of the check; zero means time.Now() once the
	// cluster has answered.
	Now time.Time
	// Skew bounds how far any writer's wall clock may be from true time;
	// zero (the default) asserts one shared clock. See the package doc.
	Skew time.Duration
	// StopWithin is how long a stopped group's VM may go on ticking after
	// the stop was committed: its owner stops it at its next look, or,
	// cut off from the leader, freezes it when its lease ends. Zero means
	// DefaultStopWithin (the default lease.duration plus a second); a
	// cluster with a longer lease needs a longer one.
	StopWithin time.Duration
}

// DefaultFreshness is Options.Freshness when zero. It is below every lease
// a cluster may run with, so an online group whose VM has not ticked for a
// lease is always reported.
const DefaultFreshness = 2 * time.Second

// DefaultStopWithin is Options.StopWithin when zero.
const DefaultStopWithin = 6 * time.Second

func (o Options) normalize() (Options, error) {
	if o.Freshness < 0 {
		return o, fmt.Errorf("check: freshness %s is negative", o.Freshness)
	}
	if o.Skew < 0 {
		return o, fmt.Errorf("check: skew %s is negative", o.Skew)
	}
	if o.StopWithin < 0 {
		return o, fmt.Errorf("check: stop-within %s is negative", o.StopWithin)
	}
	if o.Freshness == 0 {
		o.Freshness = DefaultFreshness
	}
	if o.StopWithin == 0 {
		o.StopWithin = DefaultStopWithin
	}
	return o, nil
}

// Records checks every execution log and disk under sharedDir, assuming one
// shared clock. It walks sharedDir/.exec for VMs; a disk is any file
// outside .exec that starts with a sim disk header.
func Records(sharedDir string) (Report, error) {
	return RecordsWith(sharedDir, Options{})
}

// RecordsWith is Records with options; only Skew matters to it.
func RecordsWith(sharedDir string, opt Options) (Report, error) {
	opt, err := opt.normalize()
	if err != nil {
		return Report{}, err
	}
	ev, err := collect(sharedDir)
	if err != nil {
		return Report{}, err
	}
	return ev.check(opt), nil
}

// Cluster does Records plus the API checks (NotRunning, Failed), with the
// groups of one ListGroups call, whose error, if any, it returns as is.
//
// The groups are listed before the files are read, so a tick written after
// the listing still counts as fresh. A group that has only just been placed
// (STARTING, first tick not yet due) or that is frozen for want of a lease
// is reported as not running: it is not, at that moment; a caller that
// waits for a cluster to settle should retry.
func Cluster(ctx context.Context, c havenv1.ClusterServiceClient, sharedDir string, opt Options) (Report, error) {
	opt, err := opt.normalize()
	if err != nil {
		return Report{}, err
	}
	resp, err := rpcclient.AllGroups(ctx, c, &havenv1.ListGroupsRequest{})
	if err != nil {
		// As the API said it: a gRPC status a caller can act on.
		return Report{}, err
	}
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	ev, err := collect(sharedDir)
	if err != nil {
		return Report{}, err
	}
	r := ev.check(opt)
	ev.checkGroups(&r, resp.GetGroups(), opt)
	return r, nil
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// ts formats a record's wall time: UTC, to the millisecond, which is finer
// than any tick.
func ts(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// dur rounds a duration for reading: to the millisecond, or the microsecond
// below that.
func dur(d time.Duration) time.Duration {
	if d < time.Millisecond && d > -time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
