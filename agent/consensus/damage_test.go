package consensus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// openAt opens a one-node Raft on dir, bootstrapping it the first time,
// and waits until it leads.
func openAt(t *testing.T, dir, addr string) (*Node, *fsm.FSM, error) {
	t.Helper()
	f := fsm.New()
	n, err := Open(Config{
		Name: "n1", Dir: dir, BindAddr: addr, AdvertiseAddr: addr,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond,
		SnapshotThreshold: 8192, SnapshotInterval: time.Minute, Logger: logtest.New(t),
	}, f)
	if err != nil {
		return nil, nil, err
	}
	n.MaybeBootstrap(context.Background(), 1, fixed([]quorum.Peer{{ID: "n1", RaftAddr: addr, Expect: 1}}), func(context.Context, quorum.Peer) (bool, error) {
		return false, errors.New("nobody else to ask")
	})
	led := false
	defer func() {
		if !led { // t.Fatal below: the caller gets no node to close
			n.Close()
		}
	}()
	waitfor.Cond(t, 10*time.Second, "the single node to lead", n.IsLeader)
	if err := n.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	led = true
	return n, f, nil
}

// history leaves in dir a node's log of groups g0..g(count-1), with a
// snapshot after every half when snapshots is set, and returns the
// address it used.
func history(t *testing.T, dir string, count int, snapshots bool) string {
	t.Helper()
	addr := freeAddr(t)
	n, _, err := openAt(t, dir, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for i := range count {
		res, err := n.Commit(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup(fmt.Sprintf("g%d", i))}}})
		if err != nil || res.Err != nil {
			t.Fatal(err, res)
		}
		if snapshots && (i == count/2 || i == count-1) {
			if err := n.raft.Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	return addr
}

// damaged opens dir and wants a DamageError naming path.
func damaged(t *testing.T, dir, path, want string) {
	t.Helper()
	n, _, err := openAt(t, dir, freeAddr(t))
	if err == nil {
		n.Close()
		t.Fatal("a damaged Raft state opened")
	}
	var de *DamageError
	if !errors.As(err, &de) || de.Path != path || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want a DamageError of %s saying %q", err, path, want)
	}
	t.Logf("refused: %v", err)
}

// The log as a node left it opens, with everything in it.
func TestIntactStateOpens(t *testing.T) {
	dir := t.TempDir()
	addr := history(t, dir, 20, true)
	if err := CheckState(dir, logtest.New(t)); err != nil {
		t.Fatal(err)
	}
	n, f, err := openAt(t, dir, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if len(f.Groups()) != 20 {
		t.Fatalf("%d groups after a restart, want 20", len(f.Groups()))
	}
}

// A log cut short (a disk that lost its tail, a copy that stopped) is
// refused with its path; without the check bbolt reads past the end of
// the mapping and the process dies of SIGBUS.
func TestTruncatedLogRefused(t *testing.T) {
	dir := t.TempDir()
	history(t, dir, 200, false)
	path := filepath.Join(dir, logFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	damaged(t, dir, path, "is damaged")
}

// Garbage over the log's pages (bit rot, a stray write) is refused with
// its path; bbolt itself would panic on the first page it reads.
func TestCorruptLogRefused(t *testing.T) {
	dir := t.TempDir()
	history(t, dir, 200, false)
	path := filepath.Join(dir, logFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every page header after the two meta pages: whatever page the log
	// bucket's root is, it no longer reads as one.
	page := os.Getpagesize()
	for off := 2 * page; off+16 <= len(b); off += page {
		copy(b[off:off+16], bytes.Repeat([]byte{0xa5}, 16))
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	damaged(t, dir, path, "is damaged")
}

// An entry whose bytes were changed so that its command no longer
// decodes is found before Raft would hand it to the FSM.
func TestCorruptEntryRefused(t *testing.T) {
	dir := t.TempDir()
	history(t, dir, 20, false)
	path := filepath.Join(dir, logFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A group's name in a command, made invalid UTF-8.
	i := bytes.Index(b, []byte("g13"))
	if i < 0 {
		t.Fatal("no g13 in the log")
	}
	b[i] = 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	damaged(t, dir, path, "does not decode")
}

// A damaged newest snapshot with an intact older one, and a log that
// still holds the entries after it: Raft starts from the older one and
// loses nothing.
func TestDamagedNewestSnapshotFallsBack(t *testing.T) {
	dir := t.TempDir()
	addr := history(t, dir, 20, true)
	corruptNewestSnapshot(t, dir)
	n, f, err := openAt(t, dir, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if len(f.Groups()) != 20 {
		t.Fatalf("%d groups, want 20", len(f.Groups()))
	}
}

// With no intact snapshot the node refuses to start, naming the
// snapshot.
func TestDamagedOnlySnapshotRefused(t *testing.T) {
	dir := t.TempDir()
	history(t, dir, 20, false)
	// One snapshot only.
	n, _, err := openAt(t, dir, freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	n.Close()
	id := corruptNewestSnapshot(t, dir)
	damaged(t, dir, filepath.Join(dir, snapshotDir, id), "no older snapshot is intact")
}

func corruptNewestSnapshot(t *testing.T, dir string) string {
	t.Helper()
	store, err := raft.NewFileSnapshotStore(dir, 2, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := store.List()
	if err != nil || len(metas) == 0 {
		t.Fatal("no snapshot", err)
	}
	path := filepath.Join(dir, snapshotDir, metas[0].ID, "state.bin")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return metas[0].ID
}

// SetAside keeps the damaged files, renamed, and the term and vote, so
// the node starts as a member with no log and does not vote twice in a
// term.
func TestSetAside(t *testing.T) {
	dir := t.TempDir()
	addr := history(t, dir, 5, true)
	aside, err := SetAside(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{logFile, snapshotDir} {
		if _, err := os.Stat(filepath.Join(aside, name)); err != nil {
			t.Errorf("%s not set aside: %v", name, err)
		}
	}
	old, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(aside, logFile)})
	if err != nil {
		t.Fatal(err)
	}
	oldTerm, _ := old.GetUint64([]byte("CurrentTerm"))
	old.Close()
	s, err := raftboltdb.New(storeOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	term, _ := s.GetUint64([]byte("CurrentTerm"))
	last, _ := s.LastIndex()
	s.Close()
	if term == 0 || term != oldTerm || last != 0 {
		t.Fatalf("new log: term %d (was %d), last index %d", term, oldTerm, last)
	}
	if _, err := SetAside(filepath.Join(dir, "nothing"), time.Now()); err == nil {
		t.Fatal("set aside a directory with no Raft state")
	}
	_ = addr
}

// Durability: the log is opened with fsync on. Turn NoSync on (in the
// options, or on the bolt handle) and this fails.
func TestLogIsFsynced(t *testing.T) {
	dir := t.TempDir()
	opts := storeOptions(dir)
	if opts.NoSync || (opts.BoltOptions != nil && opts.BoltOptions.NoSync) {
		t.Fatalf("the Raft log is opened without fsync: %+v", opts)
	}
	addr := freeAddr(t)
	n, _, err := openAt(t, dir, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// raft-boltdb keeps its bbolt handle unexported; read its NoSync.
	conn := reflect.ValueOf(n.store).Elem().FieldByName("conn")
	if !conn.IsValid() || conn.IsNil() {
		t.Fatal("raft-boltdb's BoltStore has no conn field any more: check how it syncs")
	}
	if conn.Elem().FieldByName("NoSync").Bool() {
		t.Fatal("the open Raft log's bolt handle has NoSync set")
	}
}

// An entry that does not decode, committed through Raft, halts the FSM
// (no panic in Raft's apply loop) and nothing after it is applied; the
// agent watches Halted and stops.
func TestUndecodableEntryHaltsTheFSM(t *testing.T) {
	n, f, err := openAt(t, t.TempDir(), freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	fut := n.raft.Apply([]byte{0xff, 0xff, 0xff}, time.Second)
	if err := fut.Error(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.Halted():
	case <-time.After(5 * time.Second):
		t.Fatal("the FSM did not halt")
	}
	res, err := n.Commit(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup("after")}}})
	if err != nil || res.Err == nil || f.Group("after") != nil {
		t.Fatalf("a command after the halt: %v %+v", err, res)
	}
	var he *fsm.HaltError
	if !errors.As(f.Err(), &he) {
		t.Fatalf("Err = %v", f.Err())
	}
}

// A log another agent holds is no damage: the node says so rather than
// wait on the lock or call it damaged.
func TestLogInUseIsNotDamage(t *testing.T) {
	dir := t.TempDir()
	n, _, err := openAt(t, dir, freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	_, _, err = openAt(t, dir, freeAddr(t))
	var de *DamageError
	if err == nil || errors.As(err, &de) || !strings.Contains(err.Error(), "another agent") {
		t.Fatalf("second open of a log in use: %v", err)
	}
}
