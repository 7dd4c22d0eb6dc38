package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// diskAgent answers AttachDisk and DetachDisk with the change it holds,
// or err, and keeps the requests.
type diskAgent struct {
	havenv1.UnimplementedClusterServiceServer
	change   *havenv1.DiskChange
	err      error
	attached *havenv1.AttachDiskRequest
	detached *havenv1.DetachDiskRequest
}

func (a *diskAgent) AttachDisk(_ context.Context, req *havenv1.AttachDiskRequest) (*havenv1.AttachDiskResponse, error) {
	a.attached = req
	if a.err != nil {
		return nil, a.err
	}
	return &havenv1.AttachDiskResponse{Group: &havenv1.Group{Spec: &havenv1.GroupSpec{Name: req.GetGroup()}, State: havenv1.GroupState_GROUP_STATE_ONLINE}, Change: a.change}, nil
}

func (a *diskAgent) DetachDisk(_ context.Context, req *havenv1.DetachDiskRequest) (*havenv1.DetachDiskResponse, error) {
	a.detached = req
	if a.err != nil {
		return nil, a.err
	}
	return &havenv1.DetachDiskResponse{Group: &havenv1.Group{Spec: &havenv1.GroupSpec{Name: req.GetGroup()}, State: havenv1.GroupState_GROUP_STATE_ONLINE}, Change: a.change}, nil
}

func serveDisks(t *testing.T, a *diskAgent) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	havenv1.RegisterClusterServiceServer(s, a)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func change(kind havenv1.DiskChangeKind, out havenv1.DiskChangeOutcome, reason string) *havenv1.DiskChange {
	return &havenv1.DiskChange{Index: 42, Kind: kind, Outcome: out, Node: "n2", Epoch: 7, Reason: reason,
		Disk: &havenv1.Resource{Name: "data", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: "web/data.img"}}}
}

const (
	attachKind = havenv1.DiskChangeKind_DISK_CHANGE_KIND_ATTACH
	detachKind = havenv1.DiskChangeKind_DISK_CHANGE_KIND_DETACH
	applied    = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED
	recorded   = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_RECORDED
	pending    = havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_UNSPECIFIED
)

func TestDiskAttach(t *testing.T) {
	a := &diskAgent{change: change(attachKind, applied, "")}
	addr := serveDisks(t, a)
	out, err := runHaven(t, "--addr", addr, "disk", "attach", "web", "--name", "data", "--path", "web/data.img", "--size", "10G", "--request-id", "r1")
	if err != nil {
		t.Fatalf("err = %v\n%s", err, out)
	}
	if want := "disk data attached to group web, running on n2 (epoch 7)\n"; out != want {
		t.Errorf("out = %q, want %q", out, want)
	}
	d := a.attached.GetDisk()
	if a.attached.GetGroup() != "web" || a.attached.GetRequestId() != "r1" || d.GetName() != "data" || d.GetKind() != havenv1.ResourceKind_RESOURCE_KIND_DISK ||
		d.GetDisk().GetPath() != "web/data.img" || d.GetDisk().GetSizeBytes() != 10<<30 || d.GetDisk().GetFormat() != "" {
		t.Errorf("request %v", a.attached)
	}
	if _, err := runHaven(t, "--addr", addr, "disk", "attach", "web", "--name", "logs", "--path", "web/logs.qcow2", "--size", "1G", "--format", "qcow2"); err != nil {
		t.Fatal(err)
	}
	if f := a.attached.GetDisk().GetDisk().GetFormat(); f != "qcow2" {
		t.Errorf("format %q, want qcow2", f)
	}

	// JSON: the response as the API gives it.
	out, err = runHaven(t, "--addr", addr, "-o", "json", "disk", "attach", "web", "--name", "data", "--path", "web/data.img", "--size", "10G")
	if err != nil || !strings.Contains(out, `"outcome": "DISK_CHANGE_OUTCOME_APPLIED"`) || !strings.Contains(out, `"change": {`) {
		t.Errorf("json: %v\n%s", err, out)
	}
}

func TestDiskOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		change  *havenv1.DiskChange
		err     error
		out     string
		wantErr string
	}{
		{"recorded", []string{"disk", "attach", "web", "--name", "data", "--path", "web/data.img", "--size", "1G"},
			change(attachKind, recorded, `group "web" is offline: its VMs start with the disk`), nil,
			"disk data attached to group web: group \"web\" is offline: its VMs start with the disk\n", ""},
		{"pending", []string{"disk", "attach", "web", "--name", "data", "--path", "web/data.img", "--size", "1G"},
			change(attachKind, pending, ""), nil,
			"disk data: pending on n2 (epoch 7), group online\n", "the attach of disk data (web/data.img) is still pending on n2: 'haven group get web' shows how it ends"},
		{"detached", []string{"disk", "detach", "web", "data"},
			change(detachKind, applied, ""), nil,
			"disk data detached from group web, running on n2 (epoch 7)\n", ""},
		{"failed", []string{"disk", "detach", "web", "data"}, nil,
			status.Error(codes.FailedPrecondition, `group "web": the detach of disk data (web/data.img) failed on n2, and was undone: the guest did not release it`),
			"", "FailedPrecondition: group \"web\": the detach of disk data (web/data.img) failed on n2, and was undone: the guest did not release it"},
		{"boot disk", []string{"disk", "detach", "web", "disk0"}, nil,
			status.Error(codes.FailedPrecondition, `disk "disk0" is group "web"'s first disk, which its VMs boot from`),
			"", "first disk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveDisks(t, &diskAgent{change: tc.change, err: tc.err})
			out, err := runHaven(t, append([]string{"--addr", addr}, tc.args...)...)
			if out != tc.out {
				t.Errorf("out = %q, want %q", out, tc.out)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("err = %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(describeError(err), tc.wantErr)):
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestDiskCommandMistakes(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"disk", "attach"}, "takes GROUP"},
		{[]string{"disk", "attach", "web", "--path", "p", "--size", "1G"}, "--name is required"},
		{[]string{"disk", "attach", "web", "--name", "d", "--size", "1G"}, "--path is required"},
		{[]string{"disk", "attach", "web", "--name", "d", "--path", "p"}, "--size is required"},
		{[]string{"disk", "attach", "web", "--name", "d", "--path", "p", "--size", "lots"}, "--size"},
		{[]string{"disk", "attach", "web", "--name", "d", "--path", "p", "--size", "0"}, "--size 0: must be at least one byte"},
		{[]string{"disk", "attach", "web", "--name", "d", "--path", "p", "--size", "1G", "--format", "vmdk"}, `--format "vmdk"`},
		{[]string{"disk", "detach", "web"}, "takes GROUP NAME"},
		{[]string{"disk", "detach", "web", "a", "b"}, "takes GROUP NAME"},
		{[]string{"disk", "resize"}, "takes a subcommand"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			root := newRootCmd(func(string) string { return "" })
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(tt.args)
			err := root.Execute()
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want a usage error containing %q", err, tt.want)
			}
		})
	}
}

// group get shows the last disk change and how it ended.
func TestGroupDetailShowsDiskChange(t *testing.T) {
	g := testGroups()[0]
	g.DiskChange = change(attachKind, applied, "hot-plugged into 1 vm(s)")
	var b bytes.Buffer
	if err := writeGroupDetail(&b, g); err != nil {
		t.Fatal(err)
	}
	want := "Disk change:       attach of disk data (web/data.img): applied on n2 at epoch 7 (hot-plugged into 1 vm(s))\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("group detail:\n%s\nwant a line\n%s", b.String(), want)
	}
}
