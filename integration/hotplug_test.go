package integration

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/driver/sim"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// diskRecords reads the records of a sim disk under the shared directory;
// none while it does not exist.
func (c *cluster) diskRecords(path string) (sim.Header, []sim.Record) {
	c.t.Helper()
	h, recs, err := sim.ReadDisk(filepath.Join(c.dir, "shared", path))
	if err != nil {
		return sim.Header{}, nil
	}
	return h, recs
}

// diskWritten waits until the disk at path has n records written by node
// at epoch after since: n ticks of the guest.
func (c *cluster) diskWritten(path, node string, epoch uint64, since time.Time, n int) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, fmt.Sprintf("%d records on %s by %s at epoch %d", n, path, node, epoch), func() error {
		_, recs := c.diskRecords(path)
		got := 0
		for _, r := range recs {
			if r.Node == node && r.Epoch == epoch && r.Wall.After(since) {
				got++
			}
		}
		if got < n {
			return fmt.Errorf("%d records on %s, %d by %s at epoch %d since %s", len(recs), path, got, node, epoch, since.Format(time.StampMilli))
		}
		return nil
	})
}

func hasResource(g *havenv1.Group, name string) bool {
	return slices.ContainsFunc(g.GetSpec().GetResources(), func(r *havenv1.Resource) bool { return r.GetName() == name })
}

// TestHotPlugDiskFollowsFailover: a disk attached to a running group is
// hot-plugged into its VM on its owner (the sim guest writes it a record
// every tick, at the group's epoch) and recorded in the group, so when the
// owner is SIGKILLed the group runs elsewhere with the disk: records from
// the new owner at the new epoch. Detached, the disk gets no more records,
// and leaves the group. The boot disk cannot be detached.
func TestHotPlugDiskFollowsFailover(t *testing.T) {
	c := newCluster(t)
	c.startN(3)
	leader := c.leader(30 * time.Second)
	var owner *node
	for _, n := range c.nodes {
		if n != leader {
			owner = n
			break
		}
	}
	const name, dataPath = "hot", "hot/data.img"
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup(name)}); err != nil {
		t.Fatal(err)
	}
	// On a follower, so that its SIGKILL costs no election.
	if _, err := leader.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name, Node: owner.name}); err != nil {
		t.Fatal(err)
	}
	g0 := c.allOnline(leader, []string{name}, 30*time.Second, anyOwner)[name]
	if g0.GetOwner() != owner.name {
		t.Fatalf("group on %s, asked for %s", g0.GetOwner(), owner.name)
	}

	// Attach, through the owner's own API (forwarded to the leader): the
	// answer comes once the owner has hot-plugged it.
	asked := time.Now()
	resp, err := owner.api().AttachDisk(ctx(t), &havenv1.AttachDiskRequest{Group: name, Disk: &havenv1.Resource{
		Name: "data", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: dataPath, SizeBytes: 1 << 30}}})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	if dc := resp.GetChange(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED || dc.GetNode() != owner.name || dc.GetEpoch() != g0.GetEpoch() {
		t.Fatalf("attach answered %v, want applied on %s at epoch %d", dc, owner.name, g0.GetEpoch())
	}
	t.Logf("attach applied in %s", time.Since(asked).Round(time.Millisecond))
	c.diskWritten(dataPath, owner.name, g0.GetEpoch(), asked, 5)
	if h, _ := c.diskRecords(dataPath); h.Epoch != g0.GetEpoch() || h.Node != owner.name {
		t.Fatalf("the attached disk's claim: %+v, want %s at epoch %d", h, owner.name, g0.GetEpoch())
	}
	// The boot disk stays, whatever the state.
	_, err = leader.api().DetachDisk(ctx(t), &havenv1.DetachDiskRequest{Group: name, Disk: "disk0"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("detach of the boot disk: %v, want FailedPrecondition", err)
	}

	// The owner dies: the group restarts elsewhere with the disk.
	owner.kill()
	killed := time.Now()
	g1 := c.allOnline(leader, []string{name}, 30*time.Second, func(g *havenv1.Group) bool { return g.GetOwner() != owner.name })[name]
	if g1.GetEpoch() <= g0.GetEpoch() || !hasResource(g1, "data") {
		t.Fatalf("after the failover: %s at epoch %d with %d resources; want a newer epoch than %d, disk data kept", g1.GetOwner(), g1.GetEpoch(), len(g1.GetSpec().GetResources()), g0.GetEpoch())
	}
	c.diskWritten(dataPath, g1.GetOwner(), g1.GetEpoch(), killed, 5)
	if h, _ := c.diskRecords(dataPath); h.Epoch != g1.GetEpoch() || h.Node != g1.GetOwner() {
		t.Fatalf("the disk's claim after the failover: %+v, want %s at epoch %d", h, g1.GetOwner(), g1.GetEpoch())
	}

	// Detach: once answered, the VM writes the disk no more.
	dresp, err := leader.api().DetachDisk(ctx(t), &havenv1.DetachDiskRequest{Group: name, Disk: "data"})
	if err != nil {
		t.Fatalf("detach: %v", err)
	}
	detached := time.Now()
	if dc := dresp.GetChange(); dc.GetOutcome() != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED || dc.GetNode() != g1.GetOwner() || hasResource(dresp.GetGroup(), "data") {
		t.Fatalf("detach answered %v with resources %v, want applied on %s and data gone", dc, dresp.GetGroup().GetSpec().GetResources(), g1.GetOwner())
	}
	_, before := c.diskRecords(dataPath)
	// The guest goes on: half a second of ticks on its boot disk.
	waitFor(t, 10*time.Second, "the guest running on after the detach", func() error {
		return c.execRunning(g1.GetOwner(), name, g1.GetEpoch(), detached.Add(500*time.Millisecond))
	})
	_, after := c.diskRecords(dataPath)
	if len(after) != len(before) {
		t.Errorf("the detached disk got %d more records", len(after)-len(before))
	}
	for _, r := range after {
		if r.Wall.After(detached) {
			t.Errorf("record %+v on the detached disk, stamped after the detach was answered (%s)", r, detached.Format(time.StampMilli))
		}
	}
	// Its path is free for another group.
	other := vmGroup("other")
	other.Resources[1].Disk.Path = dataPath
	if _, err := leader.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: other}); err != nil {
		t.Errorf("a group on the detached disk: %v", err)
	}
	_, boot := c.diskRecords("hot/disk0.img")
	t.Logf("records: %d on the boot disk, %d on the data disk, %d in the execution log", len(boot), len(after), len(c.execRecords(name)))
	c.checkInvariants([]string{name})
}
