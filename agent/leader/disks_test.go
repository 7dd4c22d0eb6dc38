package leader

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func dataDisk(name string) *havenv1.Resource {
	return &havenv1.Resource{Name: name, Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: "web/" + name + ".img", SizeBytes: 1 << 30}}
}

// diskGroup is web, a VM group with a boot disk disk0, created on tl.
func diskGroup(tl *testLeader) {
	spec := fsmtest.VMGroup("web")
	spec.Resources = append(spec.Resources, dataDisk("disk0"))
	tl.raft.Create(spec)
}

// hotPlugNodes has every node's driver report hot-plug, or not.
func hotPlugNodes(tl *testLeader, can bool) {
	for _, n := range tl.state.Nodes() {
		n = proto.Clone(n).(*havenv1.Node)
		n.HotPlugDisks = can
		tl.raft.AddNode(n)
	}
}

// owner answers the first pending disk change of web it sees, as an
// owner's executor would, with outcome and reason; wait returns the
// leader's answer to the report.
func owner(t *testing.T, tl *testLeader, outcome havenv1.DiskChangeOutcome, reason string) (wait func() error) {
	done := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			g := tl.state.Group("web")
			if dc := fsm.PendingDiskChange(g); dc != nil {
				done <- tl.ReportDiskChange(&havenv1.ReportDiskChangeRequest{Node: dc.GetNode(), Group: "web", Epoch: dc.GetEpoch(), Index: dc.GetIndex(), Outcome: outcome, Reason: reason})
				return
			}
			time.Sleep(time.Millisecond) // the test's stand-in owner polls
		}
		done <- errors.New("no disk change became pending")
	}()
	var once sync.Once
	var err error
	wait = func() error {
		once.Do(func() { err = <-done })
		return err
	}
	t.Cleanup(func() { _ = wait() })
	return wait
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func resourceNames(g *havenv1.Group) string {
	var names []string
	for _, r := range g.GetSpec().GetResources() {
		names = append(names, r.GetName())
	}
	return strings.Join(names, ",")
}

// An offline group's change is recorded and answered at once.
func TestAttachDiskOffline(t *testing.T) {
	tl := newTestLeader(t, nil)
	diskGroup(tl)
	g, dc, err := tl.AttachDisk(ctxFor(t, 5*time.Second), "web", dataDisk("data"), "r1")
	if err != nil {
		t.Fatal(err)
	}
	if dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_RECORDED || resourceNames(g) != "config,vm,disk0,data" {
		t.Fatalf("attach to an offline group: %v, resources %s", dc, resourceNames(g))
	}
	g, dc, err = tl.DetachDisk(ctxFor(t, 5*time.Second), "web", "data", "r2")
	if err != nil || dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_RECORDED || resourceNames(g) != "config,vm,disk0" {
		t.Fatalf("detach from an offline group: %v, %v, resources %s", err, dc, resourceNames(g))
	}
}

// A running group's change waits for its owner's report: applied, or
// failed and undone.
func TestAttachDiskWaitsForOwner(t *testing.T) {
	tl := newTestLeader(t, nil)
	hotPlugNodes(tl, true)
	diskGroup(tl)
	tl.raft.Assign("web", "n2")
	tl.raft.Report("web", havenv1.GroupState_GROUP_STATE_ONLINE)

	report := owner(t, tl, havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED, "")
	g, dc, err := tl.AttachDisk(ctxFor(t, 5*time.Second), "web", dataDisk("data"), "r1")
	if err != nil {
		t.Fatal(err)
	}
	if err := report(); err != nil {
		t.Fatalf("the owner's report: %v", err)
	}
	if dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED || dc.GetNode() != "n2" || !strings.Contains(resourceNames(g), "data") {
		t.Fatalf("attach to a running group: %v, resources %s", dc, resourceNames(g))
	}
	// A retry of the same request (the client lost the answer) gets the
	// same change, not a second attach.
	n := len(tl.raft.commits)
	_, again, err := tl.AttachDisk(ctxFor(t, 5*time.Second), "web", dataDisk("data"), "r1")
	if err != nil || again.GetIndex() != dc.GetIndex() || len(tl.raft.commits) != n {
		t.Fatalf("retried attach: %v, %v, %d commits: want change %d again and no commit", err, again, len(tl.raft.commits)-n, dc.GetIndex())
	}

	report = owner(t, tl, havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED, "the guest did not release it")
	_, dc, err = tl.DetachDisk(ctxFor(t, 5*time.Second), "web", "data", "r2")
	var failed *DiskChangeFailedError
	if !errors.As(err, &failed) || !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "the guest did not release it") {
		t.Fatalf("failed detach: %v, want a DiskChangeFailedError with the owner's reason", err)
	}
	if dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED || !strings.Contains(resourceNames(tl.state.Group("web")), "data") {
		t.Fatalf("after the failed detach: %v, resources %s", dc, resourceNames(tl.state.Group("web")))
	}
	if err := report(); err != nil {
		t.Fatalf("the owner's report: %v", err)
	}
	// A retry of a failed change fails the same way.
	if _, _, err := tl.DetachDisk(ctxFor(t, 5*time.Second), "web", "data", "r2"); !errors.As(err, &failed) {
		t.Fatalf("retried failed detach: %v", err)
	}
}

// Without an answer by the deadline the change is returned pending; it
// ends later, and the group says how.
func TestAttachDiskPendingAtDeadline(t *testing.T) {
	tl := newTestLeader(t, nil)
	hotPlugNodes(tl, true)
	diskGroup(tl)
	tl.raft.Assign("web", "n2")
	g, dc, err := tl.AttachDisk(ctxFor(t, 100*time.Millisecond), "web", dataDisk("data"), "r1")
	if err != nil {
		t.Fatal(err)
	}
	if dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_UNSPECIFIED || fsm.PendingDiskChange(g) == nil {
		t.Fatalf("at the deadline: %v, want pending", dc)
	}
	// A move waits for it.
	hotPlugNodes(tl, true)
	for _, n := range tl.state.Nodes() {
		n = proto.Clone(n).(*havenv1.Node)
		n.LiveMigration = true
		tl.raft.AddNode(n)
	}
	tl.raft.Report("web", havenv1.GroupState_GROUP_STATE_ONLINE)
	tl.term.driving = newMoves(context.Background())
	t.Cleanup(tl.term.driving.stop)
	if _, err := tl.MoveGroup(MoveRequest{Group: "web", Target: "n3", Kind: havenv1.MoveKind_MOVE_KIND_LIVE, RequestID: "m1"}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "pending") {
		t.Fatalf("a move while a disk change is pending: %v, want refused", err)
	}
	// The stop settles it: recorded, the disk stays for the next start.
	tl.raft.Stop("web")
	tl.raft.Report("web", havenv1.GroupState_GROUP_STATE_OFFLINE)
	if dc := tl.state.Group("web").GetDiskChange(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_RECORDED {
		t.Fatalf("after the stop: %v, want recorded", dc)
	}
}

func TestDiskChangeRefusals(t *testing.T) {
	tl := newTestLeader(t, nil)
	diskGroup(tl)
	ctx := ctxFor(t, 5*time.Second)
	check := func(what string, want error, err error, msg string) {
		t.Helper()
		var fe *fsm.Error
		if want == nil {
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), msg) {
				t.Errorf("%s: %v, want the FSM's refusal containing %q", what, err, msg)
			}
			return
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v, want %v containing %q", what, err, want, msg)
		}
	}
	_, _, err := tl.AttachDisk(ctx, "none", dataDisk("data"), "r1")
	check("attach to no group", ErrNotFound, err, `group "none" not found`)
	_, _, err = tl.DetachDisk(ctx, "none", "data", "r2")
	check("detach from no group", ErrNotFound, err, `group "none" not found`)
	_, _, err = tl.AttachDisk(ctx, "web", dataDisk("disk0"), "r3")
	check("attach under a used name", nil, err, `already has a resource "disk0"`)
	same := dataDisk("again")
	same.Disk.Path = "web/disk0.img"
	_, _, err = tl.AttachDisk(ctx, "web", same, "r4")
	check("attach of the group's own disk", ErrInvalid, err, `"web/disk0.img" is also resource "disk0"'s`)
	_, _, err = tl.DetachDisk(ctx, "web", "disk0", "r5")
	check("detach of the boot disk", nil, err, "boot")
	// The limit on resources.
	for i := len(tl.state.Group("web").GetSpec().GetResources()); i < fsm.MaxResources; i++ {
		if _, _, err := tl.AttachDisk(ctx, "web", dataDisk(fmt.Sprintf("d%d", i)), fmt.Sprintf("fill%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err = tl.AttachDisk(ctx, "web", dataDisk("one-more"), "r6")
	check("attach past the limit", ErrInvalid, err, "more than the limit")

	// A running group on a node whose driver cannot hot-plug.
	tl = newTestLeader(t, nil)
	diskGroup(tl)
	tl.raft.Assign("web", "n2")
	_, _, err = tl.AttachDisk(ctx, "web", dataDisk("data"), "r7")
	check("attach on a node that cannot hot-plug", ErrConflict, err, "n2, whose driver cannot hot-plug disks")
	if g := tl.state.Group("web"); g.GetDiskChange() != nil || strings.Contains(resourceNames(g), "data") {
		t.Fatalf("a refused attach changed the group: %v", g)
	}
	// Not the leader.
	tl.mu.Lock()
	tl.cur = nil
	tl.mu.Unlock()
	if _, _, err := tl.AttachDisk(ctx, "web", dataDisk("data"), "r8"); !errors.Is(err, ErrNotLeader) {
		t.Errorf("attach on a follower: %v", err)
	}
}

// A report from a node that no longer owns the group changes nothing.
func TestReportDiskChangeStale(t *testing.T) {
	tl := newTestLeader(t, nil)
	hotPlugNodes(tl, true)
	diskGroup(tl)
	tl.raft.Assign("web", "n2")
	_, dc, err := tl.AttachDisk(ctxFor(t, 50*time.Millisecond), "web", dataDisk("data"), "r1")
	if err != nil || fsm.PendingDiskChange(tl.state.Group("web")) == nil {
		t.Fatalf("attach: %v, %v: want it pending", err, dc)
	}
	err = tl.ReportDiskChange(&havenv1.ReportDiskChangeRequest{Node: "n3", Group: "web", Epoch: dc.GetEpoch(), Index: dc.GetIndex(),
		Outcome: havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED})
	var fe *fsm.Error
	if !errors.As(err, &fe) || fe.Code != fsm.CodeFailedPrecondition {
		t.Fatalf("a report from n3: %v, want FailedPrecondition", err)
	}
	if err := tl.ReportDiskChange(&havenv1.ReportDiskChangeRequest{Node: "n2", Group: "none"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a report on no group: %v", err)
	}
}
