package executor

import (
	"context"
	"strings"
	"testing"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A live move's target confirms its copy only while every VM of the
// group waits there whole, incoming at the move's target epoch.
func TestConfirmMoveIn(t *testing.T) {
	l := fsmtest.New(t)
	for _, n := range []string{"n1", "n2"} {
		l.AddNode(fsmtest.Node(n, "a", 8000, 64<<30, nil))
	}
	g := l.StartOn("web", "n2")
	l.Run(&havenv1.Command{Cmd: &havenv1.Command_BeginMove{BeginMove: &havenv1.BeginMoveCommand{
		Operation:   &havenv1.Operation{Id: "mv-1", Group: "web", Kind: havenv1.MoveKind_MOVE_KIND_LIVE, Source: "n2", Target: "n1"},
		ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex()}}})
	op := l.FSM.Operation("mv-1")
	id := driver.VMID{Group: "web", Resource: "vm"}
	d := &fakeDriver{vms: map[driver.VMID]driver.Status{}}
	e, _ := testExecutor(l, d)
	for _, c := range []struct {
		st   *driver.Status
		want string
	}{
		{nil, "is not on n1"},
		{&driver.Status{ID: id, Epoch: op.GetTargetEpoch(), State: driver.StateIncoming}, "has not all arrived"},
		{&driver.Status{ID: id, Epoch: op.GetTargetEpoch(), State: driver.StateStopped}, "is stopped at epoch"},
		{&driver.Status{ID: id, Epoch: op.GetSourceEpoch(), State: driver.StateIncoming, Complete: true}, "not incoming at"},
		{&driver.Status{ID: id, Epoch: op.GetTargetEpoch(), State: driver.StateIncoming, Complete: true}, ""},
	} {
		delete(d.vms, id)
		if c.st != nil {
			d.vms[id] = *c.st
		}
		err := e.ConfirmMoveIn(context.Background(), "mv-1", op.GetCreateIndex())
		if (c.want == "" && err != nil) || (c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want))) {
			t.Errorf("vm %+v: confirm %v, want %q", c.st, err, c.want)
		}
	}
}
