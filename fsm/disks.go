package fsm

import (
	"fmt"
	"path"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Disks attached to and detached from a group (AttachDisk, DetachDisk).
// The change is recorded in the group's spec, so whatever starts the group
// later (a start, a failover, a move's target) gives its VMs the disks the
// spec names. A group whose VMs run also needs them hot-plugged: the change
// is then pending (Group.disk_change) for the owner at its epoch, who
// reports it applied or failed (EndDiskChange); a failure undoes it.
//
// One rule keeps two groups off one disk: the spec names every disk a VM
// of the group may hold. An attach enters the spec (and its path becomes
// the group's) before any VM can have it; a detach leaves it only once no
// VM holds it: applied by the owner, or the VMs are gone (the group went
// offline, or moved to a new epoch, which fences what ran before). A
// pending change whose VMs are gone so is settled as RECORDED by the same
// command that took them away (store), so none outlives its owner.

const (
	diskAttach = havenv1.DiskChangeKind_DISK_CHANGE_KIND_ATTACH
	diskDetach = havenv1.DiskChangeKind_DISK_CHANGE_KIND_DETACH

	diskPending  = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_UNSPECIFIED
	diskApplied  = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED
	diskRecorded = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_RECORDED
	diskFailed   = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_FAILED
)

// PendingDiskChange is g's disk change when its owner has yet to apply
// it, else nil.
func PendingDiskChange(g *havenv1.Group) *havenv1.DiskChange {
	if dc := g.GetDiskChange(); dc != nil && dc.GetOutcome() == diskPending {
		return dc
	}
	return nil
}

// NeedsOwner reports whether a disk change of kind to g, were it applied
// now, would be pending for g's owner to hot-plug into running VMs: an
// attach while the group starts or runs there, a detach while any VM of it
// may hold the disk (starting, online or stopping).
func NeedsOwner(kind havenv1.DiskChangeKind, g *havenv1.Group) bool {
	if g.GetOwner() == "" {
		return false
	}
	switch kind {
	case diskAttach:
		return WantsRun(g) && (g.GetState() == havenv1.GroupState_GROUP_STATE_STARTING || g.GetState() == havenv1.GroupState_GROUP_STATE_ONLINE)
	case diskDetach:
		return Active(g.GetState())
	}
	return false
}

// BootDisk is the name of spec's first disk, which its VMs boot from (and
// a sim guest recovers its counter from): empty when it has none.
func BootDisk(spec *havenv1.GroupSpec) string {
	for _, r := range spec.GetResources() {
		if r.GetDisk() != nil {
			return r.GetName()
		}
	}
	return ""
}

// WithDisk is spec with the disk resource r added last, its VMs depending
// on it as a VM depends on the disks it was created with.
func WithDisk(spec *havenv1.GroupSpec, r *havenv1.Resource) *havenv1.GroupSpec {
	out := proto.Clone(spec).(*havenv1.GroupSpec)
	for _, res := range out.GetResources() {
		if res.GetVm() != nil && !slices.Contains(res.GetDependsOn(), r.GetName()) {
			res.DependsOn = append(res.DependsOn, r.GetName())
		}
	}
	out.Resources = append(out.Resources, proto.Clone(r).(*havenv1.Resource))
	return out
}

// withoutDisk is spec without the resource named name, and without every
// dependency on it: nothing starts a disk, so no start order is lost.
func withoutDisk(spec *havenv1.GroupSpec, name string) *havenv1.GroupSpec {
	out := proto.Clone(spec).(*havenv1.GroupSpec)
	out.Resources = slices.DeleteFunc(out.Resources, func(r *havenv1.Resource) bool { return r.GetName() == name })
	for _, r := range out.GetResources() {
		r.DependsOn = slices.DeleteFunc(r.DependsOn, func(d string) bool { return d == name })
	}
	return out
}

// placeDisks gives every disk of spec without one a slot on its VMs' bus
// (DiskSpec.slot), the lowest free first, in the order of the spec, and
// keeps the slots of the others. Only disks entering a group lack one: a
// created group's, or an attached disk. A group recorded before slots
// existed has them all at zero; it gets its disks' places in the spec,
// which is where its VMs had them (the index was the slot then).
func placeDisks(spec *havenv1.GroupSpec, entering ...string) {
	var disks []*havenv1.DiskSpec
	var names []string
	for _, r := range spec.GetResources() {
		if d := r.GetDisk(); d != nil {
			disks, names = append(disks, d), append(names, r.GetName())
		}
	}
	taken := map[uint32]bool{}
	distinct := true
	for i, d := range disks {
		if slices.Contains(entering, names[i]) {
			continue
		}
		distinct = distinct && !taken[d.GetSlot()]
		taken[d.GetSlot()] = true
	}
	if !distinct { // recorded before slots
		clear(taken)
		for i, d := range disks {
			if !slices.Contains(entering, names[i]) {
				d.Slot = uint32(i)
				taken[d.Slot] = true
			}
		}
	}
	next := uint32(0)
	for i, d := range disks {
		if !slices.Contains(entering, names[i]) {
			continue
		}
		for taken[next] {
			next++
		}
		d.Slot, taken[next] = next, true
	}
}

func resourceNamed(spec *havenv1.GroupSpec, name string) *havenv1.Resource {
	for _, r := range spec.GetResources() {
		if r.GetName() == name {
			return r
		}
	}
	return nil
}

// DescribeDiskChange is a disk change in words: "attach of disk data
// (web/data.img)".
func DescribeDiskChange(dc *havenv1.DiskChange) string {
	verb := "attach"
	if dc.GetKind() == diskDetach {
		verb = "detach"
	}
	return fmt.Sprintf("%s of disk %s (%s)", verb, dc.GetDisk().GetName(), dc.GetDisk().GetDisk().GetPath())
}

// changeable refuses a disk change of g decided on a stale view, or while
// a change or a move of g is in flight.
func changeable(g *havenv1.Group, expectEpoch uint64) *Error {
	name := g.GetSpec().GetName()
	if g.GetEpoch() != expectEpoch {
		return errorf(CodeFailedPrecondition, "group %q is at epoch %d, not %d: it was started, moved or failed over meanwhile; ask again", name, g.GetEpoch(), expectEpoch)
	}
	if dc := PendingDiskChange(g); dc != nil {
		return errorf(CodeFailedPrecondition, "group %q: the %s is pending on %s (index %d): one disk change at a time", name, DescribeDiskChange(dc), dc.GetNode(), dc.GetIndex())
	}
	if g.GetOperation() != "" {
		return errorf(CodeFailedPrecondition, "group %q: move %s is in flight: change its disks once it has ended", name, g.GetOperation())
	}
	return nil
}

func (s *state) attachDisk(index uint64, c *havenv1.AttachDiskCommand, now time.Time) *Error {
	old, ok := s.groups[c.GetGroup()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetGroup())
	}
	r := c.GetDisk()
	if r.GetName() == "" || r.GetKind() != havenv1.ResourceKind_RESOURCE_KIND_DISK || r.GetDisk().GetPath() == "" {
		return errorf(CodeInvalidArgument, "group %q: attach needs a disk resource with a name and a path", c.GetGroup())
	}
	if err := changeable(old, c.GetExpectEpoch()); err != nil {
		return err
	}
	if resourceNamed(old.GetSpec(), r.GetName()) != nil {
		return errorf(CodeAlreadyExists, "group %q already has a resource %q", c.GetGroup(), r.GetName())
	}
	p := path.Clean(r.GetDisk().GetPath())
	if holder, ok := s.disks[p]; ok {
		return errorf(CodeAlreadyExists, "group %q: disk %s belongs to group %q", c.GetGroup(), p, holder)
	}
	g := proto.Clone(old).(*havenv1.Group)
	g.Spec = WithDisk(old.GetSpec(), r)
	placeDisks(g.Spec, r.GetName())
	r = resourceNamed(g.Spec, r.GetName())
	dc := &havenv1.DiskChange{Index: index, Kind: diskAttach, Disk: proto.Clone(r).(*havenv1.Resource), CreateTime: timestamppb.New(now)}
	if NeedsOwner(diskAttach, old) {
		dc.Node, dc.Epoch = old.GetOwner(), old.GetEpoch()
	} else {
		dc.Outcome, dc.FinishTime = diskRecorded, timestamppb.New(now)
		dc.Reason = fmt.Sprintf("group %q is %s: its VMs start with the disk", c.GetGroup(), stateWord(old))
	}
	g.DiskChange = dc
	s.disks[p] = c.GetGroup()
	s.store(index, old, g, now)
	return nil
}

func (s *state) detachDisk(index uint64, c *havenv1.DetachDiskCommand, now time.Time) *Error {
	old, ok := s.groups[c.GetGroup()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetGroup())
	}
	r := resourceNamed(old.GetSpec(), c.GetDisk())
	switch {
	case r == nil:
		return errorf(CodeNotFound, "group %q has no disk %q", c.GetGroup(), c.GetDisk())
	case r.GetDisk() == nil:
		return errorf(CodeInvalidArgument, "resource %q of group %q is no disk (%s)", c.GetDisk(), c.GetGroup(), kindWord(r.GetKind()))
	}
	if err := changeable(old, c.GetExpectEpoch()); err != nil {
		return err
	}
	if BootDisk(old.GetSpec()) == c.GetDisk() {
		return errorf(CodeFailedPrecondition, "disk %q is group %q's first disk, which its VMs boot from (and a sim guest recovers its counter from): it stays as long as the group does", c.GetDisk(), c.GetGroup())
	}
	g := proto.Clone(old).(*havenv1.Group)
	dc := &havenv1.DiskChange{Index: index, Kind: diskDetach, Disk: proto.Clone(r).(*havenv1.Resource), CreateTime: timestamppb.New(now)}
	if NeedsOwner(diskDetach, old) {
		// The disk stays in the spec, and its path the group's, until
		// no VM holds it.
		dc.Node, dc.Epoch = old.GetOwner(), old.GetEpoch()
	} else {
		g.Spec = withoutDisk(old.GetSpec(), c.GetDisk())
		s.release(c.GetGroup(), r)
		dc.Outcome, dc.FinishTime = diskRecorded, timestamppb.New(now)
		dc.Reason = fmt.Sprintf("group %q is %s: its VMs start without the disk", c.GetGroup(), stateWord(old))
	}
	g.DiskChange = dc
	s.store(index, old, g, now)
	return nil
}

// endDiskChange applies the owner's word on its pending disk change.
func (s *state) endDiskChange(index uint64, c *havenv1.EndDiskChangeCommand, now time.Time) *Error {
	old, ok := s.groups[c.GetGroup()]
	if !ok {
		return errorf(CodeNotFound, "group %q not found", c.GetGroup())
	}
	dc := old.GetDiskChange()
	switch {
	case c.GetOutcome() != diskApplied && c.GetOutcome() != diskFailed:
		return errorf(CodeInvalidArgument, "group %q: a disk change ends applied or failed, not %s", c.GetGroup(), c.GetOutcome())
	case dc == nil || dc.GetIndex() != c.GetIndex():
		return errorf(CodeFailedPrecondition, "group %q has no disk change of index %d", c.GetGroup(), c.GetIndex())
	case dc.GetOutcome() == c.GetOutcome():
		return nil // a retried report whose first copy was applied
	case dc.GetOutcome() != diskPending:
		return errorf(CodeFailedPrecondition, "group %q: the %s already ended %s", c.GetGroup(), DescribeDiskChange(dc), dc.GetOutcome())
	case c.GetNode() != dc.GetNode() || c.GetEpoch() != dc.GetEpoch() || old.GetOwner() != dc.GetNode() || old.GetEpoch() != dc.GetEpoch():
		return errorf(CodeFailedPrecondition, "group %q: the %s is for %s at epoch %d, not %s at %d", c.GetGroup(), DescribeDiskChange(dc), dc.GetNode(), dc.GetEpoch(), c.GetNode(), c.GetEpoch())
	}
	g := proto.Clone(old).(*havenv1.Group)
	end := proto.Clone(dc).(*havenv1.DiskChange)
	end.Outcome, end.Reason, end.FinishTime = c.GetOutcome(), c.GetReason(), timestamppb.New(now)
	name := dc.GetDisk().GetName()
	switch {
	case dc.GetKind() == diskAttach && c.GetOutcome() == diskFailed,
		dc.GetKind() == diskDetach && c.GetOutcome() == diskApplied:
		// The disk leaves the spec: never attached, or let go.
		g.Spec = withoutDisk(old.GetSpec(), name)
		s.release(c.GetGroup(), dc.GetDisk())
	}
	if end.GetReason() == "" {
		end.Reason = fmt.Sprintf("%s on %s at epoch %d", map[havenv1.DiskChangeOutcome]string{diskApplied: "applied", diskFailed: "failed"}[c.GetOutcome()], c.GetNode(), c.GetEpoch())
	}
	g.DiskChange = end
	s.store(index, old, g, now)
	return nil
}

// release frees the path of a disk resource of group.
func (s *state) release(group string, r *havenv1.Resource) {
	if p := path.Clean(r.GetDisk().GetPath()); s.disks[p] == group {
		delete(s.disks, p)
	}
}

// settleDiskChange ends g's pending disk change when the VMs it was for
// are gone: g left the change's owner or epoch, or is no longer active
// there. What ran at the change's epoch has stopped or is fenced, so an
// attach simply stays in the spec, and a detached disk leaves it now.
// Called by store on every change of a group; g is the new record.
func (s *state) settleDiskChange(g *havenv1.Group, now time.Time) {
	dc := PendingDiskChange(g)
	if dc == nil || g.GetOwner() == dc.GetNode() && g.GetEpoch() == dc.GetEpoch() && Active(g.GetState()) {
		return
	}
	end := proto.Clone(dc).(*havenv1.DiskChange)
	end.Outcome, end.FinishTime = diskRecorded, timestamppb.New(now)
	name := g.GetSpec().GetName()
	was := fmt.Sprintf("not applied on %s at epoch %d: group %q is now %s", dc.GetNode(), dc.GetEpoch(), name, stateWord(g))
	if dc.GetKind() == diskDetach {
		g.Spec = withoutDisk(g.GetSpec(), dc.GetDisk().GetName())
		s.release(name, dc.GetDisk())
		end.Reason = was + ", so its VMs start without the disk"
	} else {
		end.Reason = was + ", so its VMs start with the disk"
	}
	g.DiskChange = end
}

// stateWord is g's observed state, and where, in words: "online on n2 at
// epoch 7", "offline".
func stateWord(g *havenv1.Group) string {
	w := map[havenv1.GroupState]string{
		havenv1.GroupState_GROUP_STATE_OFFLINE: "offline", havenv1.GroupState_GROUP_STATE_STARTING: "starting",
		havenv1.GroupState_GROUP_STATE_ONLINE: "online", havenv1.GroupState_GROUP_STATE_STOPPING: "stopping",
		havenv1.GroupState_GROUP_STATE_FAILED: "failed",
	}[g.GetState()]
	if w == "" {
		w = g.GetState().String()
	}
	if g.GetOwner() != "" {
		w += fmt.Sprintf(" on %s at epoch %d", g.GetOwner(), g.GetEpoch())
	}
	return w
}
