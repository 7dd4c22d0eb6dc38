package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/haven-ha/haven/check"
	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/sim"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// runHaven runs the command tree with args and returns stdout and the error.
func runHaven(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd(func(string) string { return "" })
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// writeRun leaves what a sim guest of group/vm on node at epoch leaves:
// a claim of the group's disk, then per tick an execution-log line and a
// disk record. Ticks are 100 ms apart from start.
func writeRun(t *testing.T, dir, group, node string, epoch uint64, start time.Time, counters ...uint64) {
	t.Helper()
	disk := filepath.Join(dir, group, "disk0.img")
	if err := sim.ClaimDisk(disk, node, epoch); err != nil {
		t.Fatal(err)
	}
	logPath := sim.ExecLogPath(dir, driver.VMID{Group: group, Resource: "vm"})
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, c := range counters {
		r := sim.Record{Node: node, Group: group, VM: "vm", Epoch: epoch, Counter: c, Wall: start.Add(time.Duration(i) * 100 * time.Millisecond).UTC()}
		line, _ := json.Marshal(r)
		if _, err := f.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
		if err := sim.AppendRecord(disk, r); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckOfflineOK(t *testing.T) {
	dir := t.TempDir()
	writeRun(t, dir, "web", "n1", 1, time.Now().Add(-time.Hour), 1, 2, 3)
	writeRun(t, dir, "web", "n2", 2, time.Now().Add(-time.Hour+time.Minute), 4, 5)
	out, err := runHaven(t, "check", "--offline", "--shared", dir)
	if err != nil {
		t.Fatalf("err = %v\n%s", err, out)
	}
	if want := "ok: 1 VMs, 10 records, no violations\n"; out != want {
		t.Errorf("out = %q, want %q", out, want)
	}
}

// overlapping leaves two runs of web/vm whose second starts before the
// first has ended.
func overlapping(t *testing.T) string {
	dir := t.TempDir()
	t0 := time.Now().Add(-time.Hour)
	writeRun(t, dir, "web", "n1", 1, t0, 1, 2, 3)
	writeRun(t, dir, "web", "n2", 2, t0.Add(150*time.Millisecond), 4, 5)
	return dir
}

func TestCheckOfflineViolation(t *testing.T) {
	out, err := runHaven(t, "check", "--offline", "--shared", overlapping(t))
	var ve *violationsError
	if !errors.As(err, &ve) || ve.n != 1 {
		t.Fatalf("err = %v (%T), want 1 violation", err, err)
	}
	if formatError(err) != "error: 1 invariant violation" {
		t.Errorf("stderr line %q", formatError(err))
	}
	if !strings.HasPrefix(out, "1 violation in 1 VM, 1 disk, 10 records:\n  two-runners web/vm: node n1 epoch 1") {
		t.Errorf("out = %q", out)
	}
}

func TestCheckOfflineJSON(t *testing.T) {
	out, err := runHaven(t, "check", "--offline", "-o", "json", "--shared", overlapping(t))
	var ve *violationsError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v, want violations", err)
	}
	var r check.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("output is not a Report: %v\n%s", err, out)
	}
	if r.VMs != 1 || len(r.Violations) != 1 || r.Violations[0].Kind != check.TwoRunners || r.Violations[0].VM != "vm" {
		t.Errorf("report %+v", r)
	}
	// Scripts get lists, never null.
	if !strings.Contains(out, `"notes": []`) {
		t.Errorf("notes not an empty list:\n%s", out)
	}
}

func TestCheckMistakes(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"check"}, "--shared DIR is required"},
		{[]string{"check", "--shared", "d", "extra"}, "takes no arguments"},
		{[]string{"check", "--shared", "d", "--freshness", "0s"}, "--freshness 0s"},
		{[]string{"check", "--shared", "d", "--skew", "-1s"}, "--skew -1s"},
	} {
		_, err := runHaven(t, tt.args...)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want a usage error containing %q", tt.args, err, tt.want)
		}
	}
	if _, err := runHaven(t, "check", "--offline", "--shared", filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Error("a missing shared directory passed")
	}
}

// fakeAgent serves ListGroups with canned groups on loopback.
type fakeAgent struct {
	havenv1.UnimplementedClusterServiceServer
	groups []*havenv1.Group
}

func (f *fakeAgent) ListGroups(context.Context, *havenv1.ListGroupsRequest) (*havenv1.ListGroupsResponse, error) {
	return &havenv1.ListGroupsResponse{Groups: f.groups}, nil
}

func serveFake(t *testing.T, groups ...*havenv1.Group) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	havenv1.RegisterClusterServiceServer(s, &fakeAgent{groups: groups})
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func group(name string, state havenv1.GroupState, owner string, epoch uint64, reason string) *havenv1.Group {
	return &havenv1.Group{
		Spec: &havenv1.GroupSpec{Name: name, Resources: []*havenv1.Resource{
			{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM},
		}},
		State: state, Owner: owner, Epoch: epoch, StateReason: reason,
	}
}

func TestCheckCluster(t *testing.T) {
	dir := t.TempDir()
	// web ticks right now; db ticked a minute ago.
	writeRun(t, dir, "web", "n1", 1, time.Now().Add(-300*time.Millisecond), 1, 2, 3)
	writeRun(t, dir, "db", "n2", 5, time.Now().Add(-time.Minute), 1, 2, 3)
	online := havenv1.GroupState_GROUP_STATE_ONLINE

	addr := serveFake(t, group("web", online, "n1", 1, ""), group("old", havenv1.GroupState_GROUP_STATE_FAILED, "n3", 2, "restart limit reached"))
	out, err := runHaven(t, "--addr", addr, "check", "--shared", dir)
	if err != nil {
		t.Fatalf("err = %v\n%s", err, out)
	}
	want := "ok: 2 VMs, 12 records, no violations\nnote: failed old: group old is failed at epoch 2 on n3: restart limit reached\n"
	if out != want {
		t.Errorf("out =\n%s\nwant\n%s", out, want)
	}

	addr = serveFake(t, group("web", online, "n1", 1, ""), group("db", online, "n2", 5, ""))
	out, err = runHaven(t, "--addr", addr, "check", "--shared", dir)
	var ve *violationsError
	if !errors.As(err, &ve) || !strings.Contains(out, "not-running db/vm: group db is online on n2 at epoch 5, but its last tick there (counter 3)") {
		t.Errorf("err = %v, out:\n%s", err, out)
	}
	// A longer freshness forgives the minute.
	if out, err := runHaven(t, "--addr", addr, "check", "--shared", dir, "--freshness", "2m"); err != nil {
		t.Errorf("with --freshness 2m: %v\n%s", err, out)
	}
}

func TestCheckUnreachableAgent(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	_, err = runHaven(t, "--addr", addr, "--timeout", "2s", "check", "--shared", t.TempDir())
	if err == nil || !strings.Contains(formatError(err), "--offline") {
		t.Errorf("err = %v, want a hint at --offline", err)
	}
}
