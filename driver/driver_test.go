package driver

import (
	"strings"
	"testing"
)

func TestStrings(t *testing.T) {
	if got := (VMID{Group: "web", Resource: "vm"}).String(); got != "web/vm" {
		t.Errorf("VMID.String: %q", got)
	}
	for s, want := range map[State]string{
		StateUnknown: "unknown(0)", StateRunning: "running", StateFrozen: "frozen",
		StateStopped: "stopped", StateCrashed: "crashed", StatePaused: "paused",
		StateIncoming: "incoming", State(9): "unknown(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String: %q, want %q", int(s), got, want)
		}
	}
}

func TestDiskSpecValidate(t *testing.T) {
	for _, c := range []struct {
		disk DiskSpec
		want string
	}{
		{DiskSpec{Name: "data", Path: "web/data.img"}, ""},
		{DiskSpec{Name: "data", Path: "web/data.qcow2", Format: "qcow2"}, ""},
		{DiskSpec{Path: "web/data.img"}, `name "": must be a non-empty name`},
		{DiskSpec{Name: "a/b", Path: "web/data.img"}, `name "a/b"`},
		{DiskSpec{Name: "data", Path: "../data.img"}, `path "../data.img": must be relative and inside the shared directory`},
		{DiskSpec{Name: "data", Path: "/data.img"}, `path "/data.img"`},
		{DiskSpec{Name: "data", Path: "web/data.img", Format: "vmdk"}, `format "vmdk": must be raw or qcow2`},
	} {
		err := c.disk.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v, want valid", c.disk, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want an error containing %q", c.disk, err, c.want)
		}
	}
	// VMSpec.Validate says which disk, as before.
	spec := VMSpec{ID: VMID{Group: "web", Resource: "vm"}, Epoch: 1, MemoryBytes: 1 << 20,
		Disks: []DiskSpec{{Name: "a", Path: "web/a.img"}, {Name: "b", Path: "../b.img"}}}
	if err := spec.Validate(); err == nil || err.Error() != `disks[1].path "../b.img": must be relative and inside the shared directory` {
		t.Errorf("VMSpec.Validate: %v", err)
	}
	if !(DiskSpec{Path: "web/./a.img"}).SameFile(DiskSpec{Path: "web/a.img"}) {
		t.Error("SameFile: web/./a.img and web/a.img are one file")
	}
}
