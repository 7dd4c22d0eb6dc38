package check

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/sim"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

const tickEvery = 100 * time.Millisecond

// lab is a shared directory written the way sim guests write it. Record
// times are t0 plus an offset; t0 lies an hour back so that every disk
// claim, which sim stamps with the real clock, comes after every record,
// as it would when the claims happen as the scenario says.
type lab struct {
	t   *testing.T
	dir string
	t0  time.Time
}

func newLab(t *testing.T) *lab {
	return &lab{t: t, dir: t.TempDir(), t0: time.Now().Add(-time.Hour).Truncate(time.Second).UTC()}
}

// guest is one boot of a VM at (node, epoch), doing what sim's boot and
// tick do: claim the disks, recover the counter from the first disk, then
// per tick write the execution log first and the disks after.
type guest struct {
	l               *lab
	group, vm, node string
	epoch           uint64
	disks           []string
	counter         uint64
	fenced          bool
}

func (l *lab) boot(group, vm, node string, epoch uint64, disks ...string) *guest {
	l.t.Helper()
	g := &guest{l: l, group: group, vm: vm, node: node, epoch: epoch}
	for _, d := range disks {
		p := filepath.Join(l.dir, d)
		if err := sim.ClaimDisk(p, node, epoch); err != nil {
			l.t.Fatalf("claim %s at epoch %d: %v", d, epoch, err)
		}
		g.disks = append(g.disks, p)
	}
	// Like sim's boot: the VM's own last record on its first disk. Read
	// with ReadDisk, the format's stable reader, rather than sim's tail
	// reader, which is not what is under test here.
	if len(g.disks) > 0 {
		_, recs, err := sim.ReadDisk(g.disks[0])
		if err != nil {
			l.t.Fatal(err)
		}
		for _, r := range slices.Backward(recs) {
			if r.Group == group && r.VM == vm {
				g.counter = r.Counter
				break
			}
		}
	}
	return g
}

func (g *guest) record(at time.Duration) sim.Record {
	return sim.Record{Node: g.node, Group: g.group, VM: g.vm, Epoch: g.epoch, Counter: g.counter, Wall: g.l.t0.Add(at)}
}

// tick runs one guest tick at t0+at. A refused disk write crashes the
// guest, as in sim: it is marked fenced and must not tick again.
func (g *guest) tick(at time.Duration) {
	g.l.t.Helper()
	if g.fenced {
		g.l.t.Fatalf("%s/%s on %s epoch %d ticks after being fenced", g.group, g.vm, g.node, g.epoch)
	}
	g.counter++
	r := g.record(at)
	g.l.execLog(r)
	for _, d := range g.disks {
		err := sim.AppendRecord(d, r)
		var fe *sim.FencedError
		if errors.As(err, &fe) {
			g.fenced = true
			return
		}
		if err != nil {
			g.l.t.Fatal(err)
		}
	}
}

// run ticks n times from t0+start, one tick apart.
func (g *guest) run(start time.Duration, n int) {
	g.l.t.Helper()
	for i := range n {
		g.tick(start + time.Duration(i)*tickEvery)
	}
}

// crashAfterLog is a tick cut short by a crash between the execution log
// and the disks.
func (g *guest) crashAfterLog(at time.Duration) {
	g.counter++
	g.l.execLog(g.record(at))
}

// execLog appends r as sim does: one JSON line per write, O_APPEND.
func (l *lab) execLog(r sim.Record) {
	l.t.Helper()
	p := sim.ExecLogPath(l.dir, driver.VMID{Group: r.Group, Resource: r.VM})
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		l.t.Fatal(err)
	}
	appendJSON(l.t, p, r)
}

// rawDiskWrite appends r to a disk without the epoch check: what a writer
// that bypasses fencing (a broken lock, a buggy driver) would leave.
func (l *lab) rawDiskWrite(disk string, r sim.Record) {
	l.t.Helper()
	appendJSON(l.t, filepath.Join(l.dir, disk), r)
}

func appendJSON(t *testing.T, p string, r sim.Record) {
	t.Helper()
	line, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		t.Fatal(err)
	}
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func kinds(vs []Violation) []Kind {
	var ks []Kind
	for _, v := range vs {
		ks = append(ks, v.Kind)
	}
	slices.Sort(ks)
	return ks
}

const disk0 = "web/disk0.img"

func TestRecords(t *testing.T) {
	tests := []struct {
		name string
		// build writes the scenario in the order it happens.
		build func(l *lab)
		skew  time.Duration
		want  []Kind
		// detail, if set, must appear in the first violation.
		detail []string
	}{
		{
			name: "clean handover",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1, disk0).run(0, 10)
				l.boot("web", "vm", "n2", 2, disk0).run(2*time.Second, 10)
			},
		},
		{
			name: "overlap by one tick",
			build: func(l *lab) {
				a := l.boot("web", "vm", "n1", 1, disk0)
				a.run(0, 9)
				b := l.boot("web", "vm", "n2", 2, disk0)
				b.tick(ms(850))
				a.tick(ms(900)) // executes (logged) but its disk write is fenced
				if !a.fenced {
					l.t.Fatal("the old runner's write was not fenced")
				}
				b.run(ms(950), 5)
			},
			want: []Kind{TwoRunners},
			detail: []string{"node n1 epoch 1", "node n2 epoch 2", "both ran from",
				".850Z to", ".900Z (50ms; n1 made 1 tick and n2 1 tick in that window)"},
		},
		{
			name: "same epoch on two nodes",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1, disk0).run(0, 5)
				// A claim at the same epoch is allowed (an in-place
				// restart), so the disk does not stop the second node.
				l.boot("web", "vm", "n2", 1, disk0).run(2*time.Second, 5)
			},
			want:   []Kind{TwoRunners},
			detail: []string{"epoch 1 ran on two nodes", "node n1 epoch 1", "node n2 epoch 1"},
		},
		{
			name: "counter backwards on disk",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1, disk0).run(0, 10)
				b := l.boot("web", "vm", "n2", 2, disk0)
				b.counter = 0 // a guest that did not recover its counter
				b.run(2*time.Second, 5)
			},
			want:   []Kind{CounterBack},
			detail: []string{"disk web/disk0.img", "record 11 (node n2 epoch 2", "has counter 1 after counter 10 in record 10 (node n1 epoch 1"},
		},
		{
			name: "counter resets across runs in the log but continues on disk",
			build: func(l *lab) {
				a := l.boot("web", "vm", "n1", 1, disk0)
				a.run(0, 8)
				b := l.boot("web", "vm", "n2", 2, disk0) // recovers 8
				a.tick(ms(800))                          // logs 9, refused on disk
				if !a.fenced {
					l.t.Fatal("the old runner's write was not fenced")
				}
				b.run(2*time.Second, 5) // 9..13 again in the log
			},
		},
		{
			name: "frozen gap inside a run",
			build: func(l *lab) {
				a := l.boot("web", "vm", "n1", 1, disk0)
				a.run(0, 5)
				a.run(3*time.Second, 5) // thawed by a renewal at the same epoch
			},
		},
		{
			name: "thaw after a newer epoch ran",
			build: func(l *lab) {
				a := l.boot("web", "vm", "n1", 1)
				a.run(0, 5)
				l.boot("web", "vm", "n2", 2).run(time.Second, 5)
				a.run(3*time.Second, 1)
			},
			want:   []Kind{TwoRunners},
			detail: []string{"node n1 epoch 1", "was idle from its tick at", "across all of node n2 epoch 2", "executed again"},
		},
		{
			name: "counter backwards inside a run",
			build: func(l *lab) {
				a := l.boot("web", "vm", "n1", 1)
				a.run(0, 3)
				a.counter = 1
				a.run(ms(300), 2)
			},
			want:   []Kind{CounterBack},
			detail: []string{"execution log .exec/web/vm.log", "node n1 epoch 1 ran counter 2", "after counter 3"},
		},
		{
			name: "in-place reboot repeats the tick its disk never got",
			build: func(l *lab) {
				a := l.boot("web", "vm", "n1", 1, disk0)
				a.run(0, 5)
				a.crashAfterLog(ms(500)) // counter 6 in the log only
				// The executor restarts it in place; it recovers 5.
				l.boot("web", "vm", "n1", 1, disk0).run(2*time.Second, 3)
			},
		},
		{
			name: "repeat of a tick that reached the disk",
			build: func(l *lab) {
				a := l.boot("web", "vm", "n1", 1, disk0)
				a.run(0, 5)
				b := l.boot("web", "vm", "n1", 1, disk0)
				b.counter = 4 // counts from where another guest already was
				b.run(2*time.Second, 3)
			},
			want:   []Kind{CounterBack, CounterBack},
			detail: []string{"ran counter 5", "after counter 5", "reached a disk"},
		},
		{
			name: "diskless reboot starts at 1",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1).run(0, 5)
				l.boot("web", "vm", "n1", 1).run(2*time.Second, 3)
			},
		},
		{
			name: "older epoch written after a newer one",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1, disk0).run(0, 5)
				l.boot("web", "vm", "n2", 2, disk0).run(time.Second, 3)
				l.rawDiskWrite(disk0, sim.Record{Node: "n1", Group: "web", VM: "vm", Epoch: 1, Counter: 100, Wall: l.t0.Add(2 * time.Second)})
			},
			want:   []Kind{EpochBack},
			detail: []string{"record 9 (node n1, counter 100", "has epoch 1 after epoch 2 in record 8 (node n2"},
		},
		{
			name: "record above the header",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1, disk0).run(0, 3)
				// AppendRecord only refuses older epochs; a newer one
				// that never claimed the disk gets through.
				r := sim.Record{Node: "n2", Group: "web", VM: "vm", Epoch: 2, Counter: 4, Wall: l.t0.Add(time.Second)}
				if err := sim.AppendRecord(filepath.Join(l.dir, disk0), r); err != nil {
					l.t.Fatal(err)
				}
			},
			want:   []Kind{EpochBack},
			detail: []string{"has epoch 2, above the header's claim by epoch 1 (node n1)", "without claiming"},
		},
		{
			name: "fenced write stamped after the claim",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1, disk0).run(0, 3)
				l.boot("web", "vm", "n2", 2, disk0) // claims, never writes
				l.rawDiskWrite(disk0, sim.Record{Node: "n1", Group: "web", VM: "vm", Epoch: 1, Counter: 4, Wall: time.Now().Add(time.Hour)})
			},
			want:   []Kind{EpochBack},
			detail: []string{"record 4 (node n1 epoch 1, counter 4)", "after the header's claim by epoch 2 (node n2", "fenced write was accepted"},
		},
		{
			name: "older epoch starts after a newer one",
			build: func(l *lab) {
				l.boot("web", "vm", "n2", 4).run(0, 3)
				l.boot("web", "vm", "n1", 3).run(2*time.Second, 3)
			},
			want:   []Kind{EpochBack},
			detail: []string{"node n1 epoch 3", "started 2s after node n2 epoch 4"},
		},
		{
			name: "two VMs of a group share its disk",
			build: func(l *lab) {
				// Every VM of a group writes the group's disks: their
				// counters interleave on the disk, each increasing.
				v1 := l.boot("web", "vm1", "n1", 1, disk0)
				v2 := l.boot("web", "vm2", "n1", 1, disk0)
				v2.counter = 1000
				for i := range 5 {
					v1.tick(ms(100 * i))
					v2.tick(ms(100*i + 50))
				}
				w1 := l.boot("web", "vm1", "n2", 2, disk0)
				w2 := l.boot("web", "vm2", "n2", 2, disk0)
				if w1.counter != 5 || w2.counter != 1005 {
					l.t.Fatalf("recovered counters %d and %d", w1.counter, w2.counter)
				}
				w1.run(2*time.Second, 3)
				w2.run(2*time.Second, 3)
			},
		},
		{
			name: "different VMs run at once",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1, disk0).run(0, 10)
				l.boot("db", "vm", "n2", 1, "db/disk0.img").run(0, 10)
				l.boot("web", "vm2", "n2", 1).run(0, 10)
			},
		},
		{
			name: "gap of 50ms without skew",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1).run(0, 5)
				l.boot("web", "vm", "n2", 2).run(ms(450), 5)
			},
		},
		{
			name: "gap of 50ms within twice a skew of 30ms",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1).run(0, 5)
				l.boot("web", "vm", "n2", 2).run(ms(450), 5)
			},
			skew:   ms(30),
			want:   []Kind{TwoRunners},
			detail: []string{"are 50ms apart, within twice the clock skew allowance of 30ms"},
		},
		{
			name: "gap of 50ms beyond twice a skew of 20ms",
			build: func(l *lab) {
				l.boot("web", "vm", "n1", 1).run(0, 5)
				l.boot("web", "vm", "n2", 2).run(ms(450), 5)
			},
			skew: ms(20),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLab(t)
			tt.build(l)
			r, err := RecordsWith(l.dir, Options{Skew: tt.skew})
			if err != nil {
				t.Fatal(err)
			}
			if got := kinds(r.Violations); !slices.Equal(got, tt.want) {
				t.Fatalf("kinds = %v, want %v\n%s", got, tt.want, r)
			}
			if r.OK() != (len(tt.want) == 0) {
				t.Errorf("OK() = %v with %d violations", r.OK(), len(r.Violations))
			}
			for _, s := range tt.detail {
				if !strings.Contains(r.Violations[0].Detail, s) {
					t.Errorf("detail %q\nlacks %q", r.Violations[0].Detail, s)
				}
			}
			for _, v := range r.Violations {
				if v.Group == "" || v.VM == "" {
					t.Errorf("violation without its VM: %+v", v)
				}
			}
		})
	}
}

func TestRecordsCounts(t *testing.T) {
	l := newLab(t)
	l.boot("web", "vm", "n1", 1, disk0, "web/disk1.img").run(0, 10)
	l.boot("web", "vm", "n2", 2, disk0, "web/disk1.img").run(2*time.Second, 10)
	r, err := Records(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	// 20 ticks, each in the log and on both disks.
	if r.VMs != 1 || r.Disks != 2 || r.Records != 60 {
		t.Errorf("counts: %d VMs, %d disks, %d records; want 1, 2, 60", r.VMs, r.Disks, r.Records)
	}
	if got, want := r.String(), "ok: 1 VMs, 60 records, no violations"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestRecordsEmptyDir(t *testing.T) {
	r, err := Records(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.VMs != 0 || r.Disks != 0 || r.Records != 0 {
		t.Errorf("empty dir: %+v", r)
	}
}

func TestRecordsMissingDir(t *testing.T) {
	if _, err := Records(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want not-exist", err)
	}
}

// TestRecordsSkipsOtherFiles: shared storage holds more than sim disks
// (saved state, other drivers' images); only files with a sim header are
// read as disks.
func TestRecordsSkipsOtherFiles(t *testing.T) {
	l := newLab(t)
	l.boot("web", "vm", "n1", 1, disk0).run(0, 3)
	files := map[string][]byte{
		"notes.txt":             []byte("hello\n"),
		"web/state.bin":         make([]byte, 3*sim.HeaderSize),
		"other/disk.img":        append([]byte(`{"magic":"qcow-ish"}`), make([]byte, sim.HeaderSize)...),
		".exec/web/README":      []byte("not a log"),
		".exec/stray.log":       []byte("not in a group dir\n"),
		"deep/er/still/x.bytes": []byte{1, 2, 3},
	}
	for name, data := range files {
		p := filepath.Join(l.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Records(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.VMs != 1 || r.Disks != 1 || r.Records != 6 {
		t.Errorf("got %+v, want 1 VM, 1 disk, 6 records and no violation", r)
	}
}

// TestRecordsCorruptDisk: a sim disk whose records cannot be read is an
// error, not a pass: the evidence is gone.
func TestRecordsCorruptDisk(t *testing.T) {
	l := newLab(t)
	l.boot("web", "vm", "n1", 1, disk0).run(0, 3)
	f, err := os.OpenFile(filepath.Join(l.dir, disk0), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("garbage\n")
	f.Close()
	if _, err := Records(l.dir); err == nil || !strings.Contains(err.Error(), "record 4") {
		t.Errorf("err = %v, want one naming record 4", err)
	}
}

func TestOptionsRefuseNegative(t *testing.T) {
	dir := t.TempDir()
	if _, err := RecordsWith(dir, Options{Skew: -time.Second}); err == nil {
		t.Error("negative skew accepted")
	}
	if _, err := Cluster(context.Background(), &fakeCluster{}, dir, Options{Freshness: -time.Second}); err == nil {
		t.Error("negative freshness accepted")
	}
}

func TestReportString(t *testing.T) {
	r := Report{VMs: 2, Disks: 1, Records: 30,
		Violations: []Violation{{Kind: TwoRunners, Group: "web", VM: "vm", Detail: "x"}},
		Notes:      []Violation{{Kind: Failed, Group: "db", Detail: "y"}},
	}
	want := "1 violation in 2 VMs, 1 disk, 30 records:\n  two-runners web/vm: x\nnote: failed db: y"
	if got := r.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
}

// fakeCluster answers ListGroups with canned groups; the embedded nil
// interface panics if the checker calls anything else, which it must not.
type fakeCluster struct {
	havenv1.ClusterServiceClient
	groups []*havenv1.Group
	err    error
}

func (f *fakeCluster) ListGroups(context.Context, *havenv1.ListGroupsRequest, ...grpc.CallOption) (*havenv1.ListGroupsResponse, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &havenv1.ListGroupsResponse{Groups: f.groups}, nil
}

// vmGroup is the standard group shape: config, a disk, and a VM named vm.
func vmGroup(name string, state havenv1.GroupState, owner string, epoch uint64, reason string) *havenv1.Group {
	return &havenv1.Group{
		Spec: &havenv1.GroupSpec{Name: name, Resources: []*havenv1.Resource{
			{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG},
			{Name: "disk0", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK},
			{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config", "disk0"}},
		}},
		State: state, Owner: owner, Epoch: epoch, StateReason: reason,
	}
}

func TestCluster(t *testing.T) {
	const (
		online   = havenv1.GroupState_GROUP_STATE_ONLINE
		starting = havenv1.GroupState_GROUP_STATE_STARTING
		offline  = havenv1.GroupState_GROUP_STATE_OFFLINE
		failed   = havenv1.GroupState_GROUP_STATE_FAILED
	)
	// web ran on n1 at epoch 3 from t0 to t0+900ms.
	tests := []struct {
		name      string
		group     *havenv1.Group
		now       time.Duration // after t0
		freshness time.Duration
		// stoppedAt, when set, is when an operator stopped the group,
		// after t0 (negative: before).
		stoppedAt *time.Duration
		want      []Kind
		notes     []Kind
		detail    []string
	}{
		{name: "fresh", group: vmGroup("web", online, "n1", 3, ""), now: ms(1500)},
		{name: "starting and fresh", group: vmGroup("web", starting, "n1", 3, ""), now: ms(1500)},
		{
			name: "stale", group: vmGroup("web", online, "n1", 3, ""), now: 10 * time.Second,
			want:   []Kind{NotRunning},
			detail: []string{"group web is online on n1 at epoch 3", "last tick there (counter 10)", "9.1s before the check", "within 2s"},
		},
		{name: "stale within a longer freshness", group: vmGroup("web", online, "n1", 3, ""), now: 10 * time.Second, freshness: 20 * time.Second},
		{
			name: "fresh ticks by another epoch", group: vmGroup("web", online, "n1", 4, ""), now: ms(1500),
			want:   []Kind{NotRunning},
			detail: []string{"no tick by n1 at epoch 4", "its latest is by n1 at epoch 3"},
		},
		{
			name: "no execution log", group: vmGroup("db", starting, "n2", 1, ""), now: ms(1500),
			want:   []Kind{NotRunning},
			detail: []string{"group db is starting on n2 at epoch 1", "no execution log (.exec/db/vm.log)"},
		},
		{name: "offline and stale", group: vmGroup("web", offline, "", 4, ""), now: time.Minute},
		{name: "online without owner", group: vmGroup("web", online, "", 4, ""), now: time.Minute},
		{
			name: "stopped long before it last ticked", group: vmGroup("web", offline, "", 3, ""), now: time.Minute, stoppedAt: dp(-10 * time.Second),
			want:   []Kind{RunsStopped},
			detail: []string{"group web was stopped at", "but VM vm ticked on n1 at epoch 3", "10.9s later (allowed: 6s)"},
		},
		{name: "stopped within its stop time", group: vmGroup("web", offline, "", 3, ""), now: time.Minute, stoppedAt: dp(-5 * time.Second)},
		{name: "stopping now", group: vmGroup("web", havenv1.GroupState_GROUP_STATE_STOPPING, "n1", 3, ""), now: ms(1500), stoppedAt: dp(ms(500))},
		{
			name: "failed", group: vmGroup("web", failed, "n1", 3, "vm vm crashed on n1 (boom): restart limit reached"), now: time.Minute,
			notes:  []Kind{Failed},
			detail: []string{"group web is failed at epoch 3 on n1: vm vm crashed on n1 (boom): restart limit reached"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLab(t)
			l.boot("web", "vm", "n1", 3, disk0).run(0, 10)
			g := proto.Clone(tt.group).(*havenv1.Group)
			if tt.stoppedAt != nil {
				g.Desired, g.DesiredIndex, g.DesiredTime = havenv1.DesiredState_DESIRED_STATE_STOPPED, 7, timestamppb.New(l.t0.Add(*tt.stoppedAt))
			}
			c := &fakeCluster{groups: []*havenv1.Group{g}}
			r, err := Cluster(context.Background(), c, l.dir, Options{Now: l.t0.Add(tt.now), Freshness: tt.freshness})
			if err != nil {
				t.Fatal(err)
			}
			if got := kinds(r.Violations); !slices.Equal(got, tt.want) {
				t.Fatalf("violations = %v, want %v\n%s", got, tt.want, r)
			}
			if got := kinds(r.Notes); !slices.Equal(got, tt.notes) {
				t.Fatalf("notes = %v, want %v\n%s", got, tt.notes, r)
			}
			if r.OK() != (len(tt.want) == 0) {
				t.Errorf("OK() = %v", r.OK())
			}
			all := append(slices.Clone(r.Violations), r.Notes...)
			for _, s := range tt.detail {
				if !strings.Contains(all[0].Detail, s) {
					t.Errorf("detail %q\nlacks %q", all[0].Detail, s)
				}
			}
		})
	}
}

func dp(d time.Duration) *time.Duration { return &d }

// TestClusterIncludesRecords: Cluster is Records plus the API checks.
func TestClusterIncludesRecords(t *testing.T) {
	l := newLab(t)
	l.boot("web", "vm", "n1", 1).run(0, 5)
	l.boot("web", "vm", "n2", 2).run(ms(300), 5)
	c := &fakeCluster{groups: []*havenv1.Group{vmGroup("web", havenv1.GroupState_GROUP_STATE_ONLINE, "n2", 2, "")}}
	r, err := Cluster(context.Background(), c, l.dir, Options{Now: l.t0.Add(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := kinds(r.Violations), []Kind{TwoRunners}; !slices.Equal(got, want) {
		t.Errorf("violations = %v, want %v\n%s", got, want, r)
	}
}

func TestClusterListError(t *testing.T) {
	c := &fakeCluster{err: status.Error(codes.Unavailable, "no leader")}
	_, err := Cluster(context.Background(), c, t.TempDir(), Options{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("err = %v", err)
	}
}

// TestRecordsOnLiveSim runs the real sim driver: a VM that fails over by
// the book, with its old runner killed before the new one starts, must
// check clean, and the checker must read disks while guests write them.
func TestRecordsOnLiveSim(t *testing.T) {
	dir := t.TempDir()
	id := driver.VMID{Group: "web", Resource: "vm"}
	spec := func(node string, epoch uint64) driver.VMSpec {
		return driver.VMSpec{ID: id, Node: node, Epoch: epoch, MemoryBytes: 1 << 20,
			Disks: []driver.DiskSpec{{Name: "disk0", Path: disk0}}}
	}
	ctx := context.Background()
	lease := time.Now().Add(time.Minute)
	guest := sim.Guest{Tick: 5 * time.Millisecond}
	d1 := sim.New(sim.Config{Node: "n1", SharedDir: dir, Guest: guest})
	defer d1.Close()
	d2 := sim.New(sim.Config{Node: "n2", SharedDir: dir, Guest: guest})
	defer d2.Close()
	if err := d1.Start(ctx, spec("n1", 1), lease); err != nil {
		t.Fatal(err)
	}
	waitTicks(t, dir, id, 10)
	if r, err := Records(dir); err != nil || !r.OK() {
		t.Fatalf("while running: %v\n%s", err, r)
	}
	if err := d1.Kill(id, 1); err != nil {
		t.Fatal(err)
	}
	if err := d2.Start(ctx, spec("n2", 2), lease); err != nil {
		t.Fatal(err)
	}
	waitTicks(t, dir, id, 20)
	if err := d2.Stop(ctx, id, 2); err != nil {
		t.Fatal(err)
	}
	r, err := Records(dir)
	if err != nil || !r.OK() {
		t.Fatalf("after failover: %v\n%s", err, r)
	}
	if r.VMs != 1 || r.Disks != 1 {
		t.Errorf("%+v", r)
	}
}

func waitTicks(t *testing.T, dir string, id driver.VMID, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		recs, _ := sim.ReadExecLog(sim.ExecLogPath(dir, id))
		if len(recs) >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("fewer than %d ticks of %s after 10s", n, id)
}
