package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/internal/fuzzcorpus"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The fuzz targets feed raw bytes where Raft feeds the FSM: a log entry's
// data (FuzzApply) and a snapshot (FuzzRestore). Their seeds are real
// values (seedLog); testdata/fuzz holds them and whatever the fuzzer
// found that was worth keeping. `make fuzz` runs them for longer.

// splitEntries cuts the input into log entries: each is a varint length
// and that many bytes, as protodelim writes them; the rest, when a length
// runs past the end, is one last entry.
func splitEntries(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(len(data)-k) {
			return append(out, data)
		}
		out = append(out, data[k:k+int(n)])
		data = data[k+int(n):]
	}
	return out
}

// joinEntries is splitEntries' inverse.
func joinEntries(cmds ...*havenv1.Command) []byte {
	var b bytes.Buffer
	for _, c := range cmds {
		if _, err := protodelim.MarshalTo(&b, c); err != nil {
			panic(err)
		}
	}
	return b.Bytes()
}

// seedLog is a real history: three nodes, a group created, started,
// reported online, moved live to another node, a disk attached and
// detached, stopped, and a second group created and deleted. Epochs and
// desired indexes are read from an FSM as the history is built, as the
// leader reads them.
func seedLog(tb testing.TB) []*havenv1.Command {
	f := New()
	var log []*havenv1.Command
	apply := func(c *havenv1.Command) {
		c.Time = timestamppb.New(t0.Add(timeStep(len(log))))
		data, err := Encode(c)
		if err != nil {
			tb.Fatal(err)
		}
		r := f.Apply(&raft.Log{Index: uint64(len(log)) + 1, Type: raft.LogCommand, Data: data}).(*Result)
		if r.Err != nil {
			tb.Fatalf("seed %T: %v", c.GetCmd(), r.Err)
		}
		log = append(log, c)
	}
	g := func() *havenv1.Group { return f.Group("web") }
	for _, n := range []string{"n1", "n2", "n3"} {
		apply(&havenv1.Command{Cmd: &havenv1.Command_UpsertNode{UpsertNode: &havenv1.UpsertNodeCommand{Node: &havenv1.Node{
			Name: n, Site: "a", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE,
			Capacity: &havenv1.Capacity{CpuMillis: 8000, MemoryBytes: 16 << 30}, Labels: map[string]string{"rack": "r1"}}}}})
	}
	apply(createCmd("req-create", "web"))
	apply(&havenv1.Command{RequestId: "req-start", Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: "web", ExpectEpoch: g().GetEpoch(), ExpectDesiredIndex: g().GetDesiredIndex(), Owner: "n1",
		State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN, ClearFailures: true}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
		Name: "web", Node: "n1", Epoch: g().GetEpoch(), DesiredIndex: g().GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_ONLINE}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_SetNodeChecks{SetNodeChecks: &havenv1.SetNodeChecksCommand{
		Name: "n3", CheckedIndex: 5, CannotRun: []*havenv1.GroupRefusal{{Group: "web", Reason: "no such machine type"}}}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation:   &havenv1.Operation{Id: "op1", Group: "web", Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Source: "n1", Target: "n2"},
		ExpectEpoch: g().GetEpoch(), ExpectDesiredIndex: g().GetDesiredIndex()}}})
	for _, ph := range []havenv1.OperationPhase{havenv1.OperationPhase_OPERATION_PHASE_PRECOPY, havenv1.OperationPhase_OPERATION_PHASE_SWITCHOVER} {
		apply(&havenv1.Command{Cmd: &havenv1.Command_MoveProgress{MoveProgress: &havenv1.MoveProgressCommand{
			Id: "op1", Phase: ph, Progress: &havenv1.MoveProgress{Round: 2}}}})
	}
	apply(&havenv1.Command{Cmd: &havenv1.Command_CommitMove{CommitMove: &havenv1.CommitMoveCommand{Id: "op1", Checksum: 42}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
		Name: "web", Node: "n2", Epoch: g().GetEpoch(), DesiredIndex: g().GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_ONLINE}}})
	if op := f.Operation("op1"); InFlight(op) {
		apply(&havenv1.Command{Cmd: &havenv1.Command_EndMove{EndMove: &havenv1.EndMoveCommand{
			Id: "op1", Outcome: havenv1.OperationOutcome_OPERATION_OUTCOME_COMPLETED, Reason: "done"}}})
	}
	apply(&havenv1.Command{RequestId: "req-attach", Cmd: &havenv1.Command_AttachDisk{AttachDisk: &havenv1.AttachDiskCommand{
		Group: "web", ExpectEpoch: g().GetEpoch(), Disk: &havenv1.Resource{Name: "data", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK,
			Disk: &havenv1.DiskSpec{Path: "web/data.img", SizeBytes: 1 << 30}}}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_EndDiskChange{EndDiskChange: &havenv1.EndDiskChangeCommand{
		Group: "web", Index: PendingDiskChange(g()).GetIndex(), Node: "n2", Epoch: g().GetEpoch(), Outcome: havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_DetachDisk{DetachDisk: &havenv1.DetachDiskCommand{Group: "web", Disk: "data", ExpectEpoch: g().GetEpoch()}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_SetNodeDrain{SetNodeDrain: &havenv1.SetNodeDrainCommand{Name: "n3", Draining: true}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_SetNodeStatus{SetNodeStatus: &havenv1.SetNodeStatusCommand{Name: "n3", Status: havenv1.NodeStatus_NODE_STATUS_FAILED}}})
	apply(&havenv1.Command{RequestId: "req-stop", Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: "web", Reason: "operator"}}})
	apply(createCmd("req-create-db", "db"))
	apply(&havenv1.Command{Cmd: &havenv1.Command_AssignGroups{AssignGroups: &havenv1.AssignGroupsCommand{Assignments: []*havenv1.AssignGroupCommand{{
		Name: "db", ExpectEpoch: f.Group("db").GetEpoch(), ExpectDesiredIndex: f.Group("db").GetDesiredIndex(), Owner: "n1",
		State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}}}}})
	apply(&havenv1.Command{RequestId: "req-stop-db", Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: "db"}}})
	apply(&havenv1.Command{Cmd: &havenv1.Command_ReportGroup{ReportGroup: &havenv1.ReportGroupCommand{
		Name: "db", Node: "n1", Epoch: f.Group("db").GetEpoch(), DesiredIndex: f.Group("db").GetDesiredIndex(), State: havenv1.GroupState_GROUP_STATE_OFFLINE}}})
	apply(deleteCmd("req-delete-db", "db"))
	return log
}

// timeStep spaces the seed's commands a second apart, and jumps past the
// request retention once, so pruning is exercised too.
func timeStep(i int) (d time.Duration) {
	d = time.Duration(i) * time.Second
	if i > 20 {
		d += RequestRetention
	}
	return d
}

// fuzzSeeds are the inputs every run starts from: the whole history, its
// prefixes cut at a few places, single commands, and a corrupt entry.
func fuzzSeeds(tb testing.TB) [][]byte {
	log := seedLog(tb)
	seeds := [][]byte{joinEntries(log...)}
	for _, n := range []int{4, 8, 12, 16} {
		seeds = append(seeds, joinEntries(log[:n]...))
	}
	for _, c := range log[3:] {
		seeds = append(seeds, joinEntries(append(append([]*havenv1.Command(nil), log[:3]...), c)...))
	}
	return append(seeds, []byte{0x03, 0xff, 0xff, 0xff})
}

// FuzzApply applies arbitrary entries to an empty FSM. It must never
// panic, its invariants (checkState) hold after every entry, an
// undecodable entry halts it without changing its state, a second FSM fed
// the same entries ends identical (Apply is deterministic), and its
// snapshot restores to the same state.
func FuzzApply(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries := splitEntries(data)
		if len(entries) > 256 {
			entries = entries[:256]
		}
		a, b := New(), New()
		for i, e := range entries {
			l := &raft.Log{Index: uint64(i) + 1, Type: raft.LogCommand, Data: e}
			before := a.st
			r, ok := a.Apply(l).(*Result)
			if !ok || r == nil {
				t.Fatalf("entry %d: Apply returned %T", i, r)
			}
			b.Apply(l)
			if a.Err() != nil {
				if a.st != before {
					t.Fatalf("entry %d: state changed by an entry applied after the halt", i)
				}
				continue
			}
			if r.Err != nil && r.Err.Msg == "" {
				t.Fatalf("entry %d: refusal without a message: %+v", i, r.Err)
			}
			if err := checkState(a.st, l.Index); err != nil {
				t.Fatalf("entry %d (%T): %v", i, r.Command.GetCmd(), err)
			}
		}
		if err := sameState(a.st, b.st); err != nil {
			t.Fatalf("two FSMs fed the same entries differ: %v", err)
		}
		c := New()
		if err := c.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, a)))); err != nil {
			t.Fatalf("restore of a snapshot just taken: %v", err)
		}
		if err := checkState(c.st, a.st.index); err != nil {
			t.Fatalf("restored: %v", err)
		}
		if err := sameState(a.st, c.st); err != nil {
			t.Fatalf("snapshot does not round-trip: %v", err)
		}
	})
}

// restoreSeeds are snapshots of the seed history at a few points, and
// nothing at all.
func restoreSeeds(tb testing.TB) [][]byte {
	log := seedLog(tb)
	var seeds [][]byte
	for _, n := range []int{0, 4, 12, len(log)} {
		fs := New()
		for i, c := range log[:n] {
			data, _ := Encode(c)
			fs.Apply(&raft.Log{Index: uint64(i) + 1, Type: raft.LogCommand, Data: data})
		}
		seeds = append(seeds, snapshotBytes(tb, fs))
	}
	return append(seeds, []byte{})
}

func TestFuzzCorpus(t *testing.T) {
	fuzzcorpus.Check(t, "FuzzApply", fuzzSeeds(t))
	fuzzcorpus.Check(t, "FuzzRestore", restoreSeeds(t))
	fuzzcorpus.Check(t, "FuzzValidateGroupSpec", specSeeds(t))
}

// FuzzRestore restores arbitrary bytes: a clear error or a state that
// keeps the invariants and snapshots to itself again, never a panic. The
// seeds are snapshots of real histories.
func FuzzRestore(f *testing.F) {
	for _, s := range restoreSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fs := New()
		err := fs.Restore(io.NopCloser(bytes.NewReader(data)))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("restore refused without a message")
			}
			if fs.st.index != 0 || len(fs.st.groups) != 0 {
				t.Fatal("a refused restore changed the state")
			}
			return
		}
		if err := checkState(fs.st, fs.st.index); err != nil {
			t.Fatalf("restored state: %v", err)
		}
		// What was accepted must persist and read back to the same.
		again := New()
		if err := again.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, fs)))); err != nil {
			t.Fatalf("restore of its own snapshot: %v", err)
		}
		if err := sameState(fs.st, again.st); err != nil {
			t.Fatalf("snapshot does not round-trip: %v", err)
		}
	})
}

func snapshotBytes(tb testing.TB, f *FSM) []byte {
	tb.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		tb.Fatal(err)
	}
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		tb.Fatal(err)
	}
	return sink.Bytes()
}

// sameState compares two states record by record (not by their
// snapshots' bytes: protobuf encodes maps in no fixed order).
func sameState(a, b *state) error {
	if a.index != b.index {
		return fmt.Errorf("index %d and %d", a.index, b.index)
	}
	if err := sameMap("node", a.nodes, b.nodes); err != nil {
		return err
	}
	if err := sameMap("group", a.groups, b.groups); err != nil {
		return err
	}
	if err := sameMap("request", a.requests, b.requests); err != nil {
		return err
	}
	if err := sameMap("operation", a.ops, b.ops); err != nil {
		return err
	}
	if fmt.Sprint(a.order) != fmt.Sprint(b.order) || fmt.Sprint(a.finished) != fmt.Sprint(b.finished) || fmt.Sprint(a.disks) != fmt.Sprint(b.disks) {
		return fmt.Errorf("orders or disk index differ")
	}
	return nil
}

func sameMap[T proto.Message](what string, a, b map[string]T) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d and %d %ss", len(a), len(b), what)
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !proto.Equal(v, w) {
			return fmt.Errorf("%s %q differs", what, k)
		}
	}
	return nil
}

// checkState is the FSM's invariants: every record is filed under its own
// name, the disk index is exactly what the groups name, the remembered
// requests and the finished operations are consistent with their orders,
// and the state is at the index last applied.
func checkState(s *state, index uint64) error {
	if s.index != index {
		return fmt.Errorf("index %d, want %d", s.index, index)
	}
	for k, n := range s.nodes {
		if n.GetName() != k {
			return fmt.Errorf("node filed under %q is named %q", k, n.GetName())
		}
	}
	disks := map[string]string{}
	for k, g := range s.groups {
		if g.GetSpec().GetName() != k {
			return fmt.Errorf("group filed under %q is named %q", k, g.GetSpec().GetName())
		}
		for _, d := range DiskPaths(g.GetSpec()) {
			if other, dup := disks[d]; dup && other != k {
				return fmt.Errorf("disk %q belongs to groups %q and %q", d, other, k)
			}
			disks[d] = k
		}
		if op := g.GetOperation(); op != "" {
			if o, ok := s.ops[op]; !ok || !InFlight(o) || o.GetGroup() != k {
				return fmt.Errorf("group %q names operation %q, which is not its move in flight", k, op)
			}
		}
	}
	owned := 0
	for o, names := range s.owned {
		for name := range names {
			if g := s.groups[name]; g == nil || g.GetOwner() != o {
				return fmt.Errorf("owner index files %q under %q, the group says %q", name, o, g.GetOwner())
			}
			owned++
		}
	}
	for k, g := range s.groups {
		if g.GetOwner() != "" {
			owned--
		}
		if !s.names.Has(k) {
			return fmt.Errorf("group %q is not in the name index", k)
		}
	}
	if owned != 0 {
		return fmt.Errorf("owner index has %d entries more than the groups with an owner", owned)
	}
	if s.names.Len() != len(s.groups) {
		return fmt.Errorf("name index has %d names, %d groups", s.names.Len(), len(s.groups))
	}
	if len(disks) != len(s.disks) {
		return fmt.Errorf("disk index has %d paths, the groups name %d", len(s.disks), len(disks))
	}
	for d, g := range disks {
		if s.disks[d] != g {
			return fmt.Errorf("disk index: %q -> %q, the groups say %q", d, s.disks[d], g)
		}
	}
	if len(s.order) != len(s.requests) {
		return fmt.Errorf("%d request ids in order, %d remembered", len(s.order), len(s.requests))
	}
	for _, id := range s.order {
		if s.requests[id] == nil {
			return fmt.Errorf("request %q in order is not remembered", id)
		}
	}
	done := map[string]bool{}
	for _, id := range s.finished {
		op, ok := s.ops[id]
		if !ok || InFlight(op) || done[id] {
			return fmt.Errorf("finished operation %q: missing, in flight or listed twice", id)
		}
		done[id] = true
	}
	if len(done) > KeptOperations {
		return fmt.Errorf("%d finished operations kept, the limit is %d", len(done), KeptOperations)
	}
	for id, op := range s.ops {
		if op.GetId() != id {
			return fmt.Errorf("operation filed under %q has id %q", id, op.GetId())
		}
		if !done[id] && !InFlight(op) {
			return fmt.Errorf("operation %q is neither in flight nor among the finished", id)
		}
	}
	return nil
}

// The seeds themselves must be a history the FSM accepts (seedLog fails
// otherwise) and keep the invariants, or the fuzzer starts from nothing.
func TestFuzzSeedsKeepInvariants(t *testing.T) {
	log := seedLog(t)
	f := New()
	for i, c := range log {
		data, _ := Encode(c)
		f.Apply(&raft.Log{Index: uint64(i) + 1, Type: raft.LogCommand, Data: data})
		if err := checkState(f.st, uint64(i)+1); err != nil {
			t.Fatalf("after %T: %v", c.GetCmd(), err)
		}
	}
	if len(f.st.ops) == 0 || len(f.st.requests) == 0 || f.Group("web") == nil || f.Group("db") != nil {
		t.Fatal("the seed history does not reach the states it should")
	}
	if err := f.Err(); err != nil {
		t.Fatal(err)
	}
	var he *HaltError
	bad := New()
	bad.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: splitEntries(fuzzSeeds(t)[len(fuzzSeeds(t))-1])[0]})
	if !errors.As(bad.Err(), &he) {
		t.Fatalf("the corrupt seed does not halt: %v", bad.Err())
	}
}
