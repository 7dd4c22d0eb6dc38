package executor

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/migrate"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The sweep removes the state files of moves that are over, or that this
// node's FSM has never seen and are old, and keeps those of moves in flight
// and young ones.
func TestSweepStateFiles(t *testing.T) {
	l := fsmtest.New(t)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	l.AddNode(fsmtest.Node("n2", "a", 8000, 16<<30, nil))
	l.StartOn("live", "n1")
	l.StartOn("over", "n1")
	begin := func(id, group string) {
		g := l.FSM.Group(group)
		l.Run(&havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
			Operation:   &havenv1.Operation{Id: id, Group: group, Kind: havenv1.MoveKind_MOVE_KIND_QUICK, Source: "n1", Target: "n2"},
			ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(),
		}}})
	}
	begin("mv-live", "live")
	begin("mv-over", "over")
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_EndMove{EndMove: &havenv1.EndMoveCommand{Id: "mv-over", Outcome: havenv1.OperationOutcome_OPERATION_OUTCOME_ROLLED_BACK, Reason: "test"}}})
	shared := t.TempDir()
	e, _ := testExecutor(l, &fakeDriver{})
	e.sharedDir = shared
	now := time.Now()
	old := now.Add(-2 * sweepAge)
	for id, mtime := range map[string]time.Time{"mv-live": old, "mv-over": old, "mv-unknown-old": old, "mv-unknown-young": now} {
		dir := filepath.Join(shared, migrate.StateDir(id))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(shared, migrate.StateFile(id, "vm")), []byte("state"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(dir, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	e.sweepStateFiles(now)
	for id, want := range map[string]bool{"mv-live": true, "mv-over": false, "mv-unknown-old": false, "mv-unknown-young": true} {
		_, err := os.Stat(filepath.Join(shared, migrate.StateDir(id)))
		if got := err == nil; got != want {
			t.Errorf("%s: kept %v, want %v (%v)", id, got, want, err)
		}
	}
}
