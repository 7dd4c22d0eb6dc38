package node

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent/services/servicetest"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The fakes below stand for the FSM, Raft, the lease table, the leader's
// report intake, gossip and the driver. Each returns what the test put in
// it and records what the handler asked.

type fakeState struct{ nodes []*havenv1.Node }

func (s *fakeState) Node(name string) *havenv1.Node {
	for _, n := range s.nodes {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

type fakeRaft struct {
	hasState bool
	status   consensus.Status
}

func (r *fakeRaft) HasState() bool           { return r.hasState }
func (r *fakeRaft) Status() consensus.Status { return r.status }

type fakeLeases struct {
	resp    *havenv1.RenewLeaseResponse
	err     error
	renewed []string
}

func (l *fakeLeases) Renew(_ context.Context, node string) (*havenv1.RenewLeaseResponse, error) {
	l.renewed = append(l.renewed, node)
	return l.resp, l.err
}

type fakeReports struct {
	err    error
	got    []*havenv1.ReportGroupRequest
	disks  []*havenv1.ReportDiskChangeRequest
	checks []*havenv1.ReportChecksRequest
}

func (r *fakeReports) Report(req *havenv1.ReportGroupRequest) error {
	r.got = append(r.got, req)
	return r.err
}

func (r *fakeReports) ReportDiskChange(req *havenv1.ReportDiskChangeRequest) error {
	r.disks = append(r.disks, req)
	return r.err
}

func (r *fakeReports) ReportChecks(req *havenv1.ReportChecksRequest) error {
	r.checks = append(r.checks, req)
	return r.err
}

type fakeMembers struct{ m []heartbeat.Member }

func (f *fakeMembers) Member(name string) (heartbeat.Member, bool) {
	for _, m := range f.m {
		if m.Name == name {
			return m, true
		}
	}
	return heartbeat.Member{}, false
}

// plainDriver is a hypervisor that cannot inject faults; it is never
// called.
type plainDriver struct{ driver.Hypervisor }

// crashDriver is one that can.
type crashDriver struct {
	driver.Hypervisor
	err     error
	crashed []driver.VMID
	reasons []string
	hung    []driver.VMID
}

func (d *crashDriver) Hang(id driver.VMID) error {
	d.hung = append(d.hung, id)
	return d.err
}

func (d *crashDriver) Crash(id driver.VMID, reason string) error {
	d.crashed = append(d.crashed, id)
	d.reasons = append(d.reasons, reason)
	return d.err
}

func (d *crashDriver) MemoryChecksum(driver.VMID) (uint64, error) { return 0, d.err }

func (d *crashDriver) FillMemory(driver.VMID) (int64, error) { return 0, d.err }

// logBuffer keeps the service's log lines for the test to count, and
// shows them with the test's output.
type logBuffer struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.t.Log(strings.TrimSpace(string(p)))
	return b.buf.Write(p)
}

func (b *logBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Split(strings.TrimSpace(b.buf.String()), "\n")
}

// fixture is a service on node n1, the leader. Gossip knows n2 alive, n3
// dead (it stopped answering probes, but may come back and renew), n4
// suspect and n5 left; the FSM has n6 alive (gossip has not seen it yet),
// n5 and n7 failed, and n8 alive although it left gossip.
type fixture struct {
	state   *fakeState
	raft    *fakeRaft
	leases  *fakeLeases
	reports *fakeReports
	members *fakeMembers
	log     *logBuffer
	svc     *Service
}

func newFixture(t *testing.T, drv driver.Hypervisor, faultInjection bool) *fixture {
	alive, failed := havenv1.NodeStatus_NODE_STATUS_ALIVE, havenv1.NodeStatus_NODE_STATUS_FAILED
	f := &fixture{
		state: &fakeState{nodes: []*havenv1.Node{
			{Name: "n5", Status: failed}, {Name: "n6", Status: alive}, {Name: "n7", Status: failed}, {Name: "n8", Status: alive},
		}},
		raft:    &fakeRaft{},
		leases:  &fakeLeases{resp: &havenv1.RenewLeaseResponse{LeaseMillis: 4000, Term: 3}},
		reports: &fakeReports{},
		members: &fakeMembers{m: []heartbeat.Member{
			{Name: "n1", State: heartbeat.StateAlive},
			{Name: "n2", State: heartbeat.StateAlive},
			{Name: "n3", State: heartbeat.StateDead},
			{Name: "n4", State: heartbeat.StateSuspect},
			{Name: "n5", State: heartbeat.StateLeft},
			{Name: "n8", State: heartbeat.StateLeft},
		}},
		log: &logBuffer{t: t},
	}
	f.svc = New(Config{
		Name: "n1", State: f.state, Raft: f.raft, Leases: f.leases, Reports: f.reports, Members: f.members,
		Driver: drv, FaultInjection: faultInjection,
		Locate: func() (string, string, error) { return "n2", "10.0.0.2:7443", nil },
		Logger: slog.New(slog.NewTextHandler(f.log, nil)),
	})
	return f
}

// The fixture's members and non-members, as checkMember must
// judge them.
var (
	members    = []string{"n1", "n2", "n3", "n4", "n6", "n8"}
	nonMembers = []string{"n5", "n7", "n9"}
)

// wantStatus is servicetest.WantStatus.
var wantStatus = servicetest.WantStatus

// A stranger calling again and again must not flood the log: one line a
// minute per name.
func TestCheckMemberLogsOncePerName(t *testing.T) {
	f := newFixture(t, nil, false)
	for range 3 {
		for _, n := range []string{"n9", "n10"} {
			wantStatus(t, f.svc.checkMember(n, "lease renewal"), codes.PermissionDenied, `lease renewal: node "`+n+`" is not a member of this cluster`)
		}
	}
	lines := f.log.lines()
	if len(lines) != 2 || !strings.Contains(lines[0], "node=n9") || !strings.Contains(lines[1], "node=n10") {
		t.Errorf("log after three refusals each of n9 and n10: %q, want one line each", lines)
	}
	if !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], `call="lease renewal"`) {
		t.Errorf("refusal logged as %q: want a warning naming the call", lines[0])
	}
}

func TestStrangersFirst(t *testing.T) {
	var s strangers
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		node  string
		at    time.Duration
		first bool
	}{
		{"n9", 0, true},
		{"n9", 59 * time.Second, false},
		{"n10", 59 * time.Second, true},
		{"n9", time.Minute, true},
		{"n9", time.Minute + time.Second, false},
	} {
		if got := s.first(c.node, t0.Add(c.at)); got != c.first {
			t.Errorf("first(%s, +%s) = %v, want %v", c.node, c.at, got, c.first)
		}
	}
}
