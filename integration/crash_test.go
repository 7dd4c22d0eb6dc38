package integration

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestVMCrashRestartsInPlaceThenFailsOver: a crashed VM is restarted on its
// owner, at the same epoch, up to the group's restart limit; one more crash
// moves the group to another node.
func TestVMCrashRestartsInPlaceThenFailsOver(t *testing.T) {
	c := newCluster(t)
	c.startN(3)
	leader := c.leader(30 * time.Second)
	spec := vmGroup("crashy")
	spec.Restart = &havenv1.RestartPolicy{MaxRestarts: 2, Period: durationpb.New(time.Minute)}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "crashy"}); err != nil {
		t.Fatal(err)
	}
	g0 := c.allOnline(leader, []string{"crashy"}, 30*time.Second, anyOwner)["crashy"]
	owner := c.node(g0.GetOwner())
	crash := func() {
		t.Helper()
		if _, err := havenv1.NewNodeServiceClient(owner.conn).CrashVM(ctx(t), &havenv1.CrashVMRequest{Group: "crashy", Vm: "vm"}); err != nil {
			t.Fatalf("crash: %v", err)
		}
	}
	for i := 1; i <= 2; i++ {
		crashed := time.Now()
		crash()
		waitFor(t, 10*time.Second, fmt.Sprintf("restart %d in place", i), func() error {
			return c.execRunning(owner.name, "crashy", g0.GetEpoch(), crashed.Add(200*time.Millisecond))
		})
		g, err := leader.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: "crashy"})
		if err != nil {
			t.Fatal(err)
		}
		if g.GetGroup().GetOwner() != owner.name || g.GetGroup().GetEpoch() != g0.GetEpoch() {
			t.Fatalf("after crash %d the group moved: %s@%d", i, g.GetGroup().GetOwner(), g.GetGroup().GetEpoch())
		}
	}
	crash()
	g := c.allOnline(leader, []string{"crashy"}, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != owner.name })["crashy"]
	if g.GetEpoch() != g0.GetEpoch()+1 {
		t.Fatalf("after the third crash: %s@%d, want another node at epoch %d", g.GetOwner(), g.GetEpoch(), g0.GetEpoch()+1)
	}
	c.checkInvariants([]string{"crashy"})
}

// TestHungGuestRestarts: a guest that locks up while its VM lives on is
// caught by its watchdog alone: the VM crashes a watchdog timeout after
// the hang, the owner restarts it in place under the group's restart
// policy, and its log names the watchdog.
func TestHungGuestRestarts(t *testing.T) {
	const watchdog = time.Second
	c := newCluster(t, func(cfg *agent.Config) { cfg.Sim.Watchdog = watchdog })
	c.startN(3)
	leader := c.leader(30 * time.Second)
	spec := vmGroup("hangs")
	spec.Restart = &havenv1.RestartPolicy{MaxRestarts: 2, Period: durationpb.New(time.Minute)}
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: "hangs"}); err != nil {
		t.Fatal(err)
	}
	g0 := c.allOnline(leader, []string{"hangs"}, 30*time.Second, anyOwner)["hangs"]
	owner := c.node(g0.GetOwner())
	hung := time.Now()
	if _, err := havenv1.NewNodeServiceClient(owner.conn).HangVM(ctx(t), &havenv1.HangVMRequest{Group: "hangs", Vm: "vm"}); err != nil {
		t.Fatalf("hang: %v", err)
	}
	waitFor(t, 10*time.Second, "the restart in place", func() error {
		return c.execRunning(owner.name, "hangs", g0.GetEpoch(), hung.Add(watchdog))
	})
	// No tick between the hang and the watchdog's reset: the guest was
	// hung, and a restart before the timeout would mean something else
	// noticed.
	var last, first time.Time
	for _, r := range c.execRecords("hangs") {
		if r.Wall.Before(hung) {
			last = r.Wall
		} else if first.IsZero() {
			first = r.Wall
		}
	}
	if gap := first.Sub(last); gap < watchdog {
		t.Errorf("the guest's gap was %s (last tick %s, next %s), shorter than its watchdog's %s", gap, last.Format(time.StampMilli), first.Format(time.StampMilli), watchdog)
	}
	g, err := leader.api().GetGroup(ctx(t), &havenv1.GetGroupRequest{Name: "hangs"})
	if err != nil {
		t.Fatal(err)
	}
	if g.GetGroup().GetOwner() != owner.name || g.GetGroup().GetEpoch() != g0.GetEpoch() {
		t.Errorf("after the hang: %s@%d, want a restart in place on %s@%d", g.GetGroup().GetOwner(), g.GetGroup().GetEpoch(), owner.name, g0.GetEpoch())
	}
	// An in-place restart is the owner's own decision; its log says why.
	if !logContains(owner, "the guest's watchdog expired") {
		t.Errorf("%s's log does not name the watchdog as the crash's reason", owner.name)
	}
	c.checkInvariants([]string{"hangs"})
}
