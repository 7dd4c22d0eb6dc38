package agent

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// testAgent is an agent with only an FSM and a config: enough for the
// lease table's decisions, with no Raft or network.
func testAgent(t *testing.T, cmds ...*havenv1.Command) *Agent {
	t.Helper()
	cfg := Default().Tightened()
	cfg.Name = "n1"
	a := &Agent{cfg: cfg, log: hclog.NewNullLogger(), fsm: fsm.New(), members: &fakeMembers{}}
	a.leases = newLeases(a)
	a.proposer = &fsmProposer{t: t, a: a}
	for i, c := range cmds {
		c.Time = timestamppb.New(time.Unix(1000, 0))
		if as := c.GetAssignGroup(); as != nil && as.ExpectDesiredIndex == 0 {
			// Decided on the group as it is: an operator's start, its
			// epoch counted from the group's first.
			g := a.fsm.Group(as.GetName())
			as.ExpectDesiredIndex = g.GetDesiredIndex()
			as.ExpectEpoch += g.GetCreateIndex()
			as.Desired = havenv1.DesiredState_DESIRED_STATE_RUN
		}
		data, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if r := a.fsm.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(*fsm.Result); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	return a
}

func create(name string) *havenv1.Command {
	return &havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: &havenv1.GroupSpec{Name: name}}}}
}

func assign(name, owner string, expect uint64, st havenv1.GroupState) *havenv1.Command {
	return &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{Name: name, ExpectEpoch: expect, Owner: owner, State: st}}}
}

func names(resp *havenv1.RenewLeaseResponse) map[string]uint64 {
	out := map[string]uint64{}
	for _, g := range resp.GetGroups() {
		out[g.GetName()] = g.GetEpoch()
	}
	return out
}

// Step 5: a grant lists the node's active groups at their epochs and leaves
// out a group whose move the leader has decided but not yet applied, so
// the node cannot thaw it while it is being restarted elsewhere.
func TestGrantOmitsPendingMoves(t *testing.T) {
	a := testAgent(t,
		create("web"), assign("web", "n2", 0, havenv1.GroupState_GROUP_STATE_ONLINE),
		create("db"), assign("db", "n2", 0, havenv1.GroupState_GROUP_STATE_STARTING),
		create("old"), assign("old", "n2", 0, havenv1.GroupState_GROUP_STATE_ONLINE), assign("old", "n3", 1, havenv1.GroupState_GROUP_STATE_STARTING),
		create("off"),
	)
	a.leases.begin(time.Now(), 1)
	a.leases.ready()
	a.leases.mu.Lock()
	got := names(a.leases.answer("n2"))
	a.leases.pending["db"] = true
	pending := names(a.leases.answer("n2"))
	a.leases.mu.Unlock()
	web, db := a.fsm.Group("web").GetEpoch(), a.fsm.Group("db").GetEpoch()
	if len(got) != 2 || got["web"] != web || got["db"] != db {
		t.Fatalf("grant for n2 = %v, want web@%d and db@%d (old moved to n3, off is not assigned)", got, web, db)
	}
	if _, ok := pending["db"]; ok || pending["web"] != web {
		t.Fatalf("grant with db pending = %v, want web only", pending)
	}
}

// Step 3: before its barrier a new leader answers no renewal.
func TestNoGrantBeforeBarrier(t *testing.T) {
	a := testAgent(t)
	a.leases.begin(time.Now(), 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := a.leases.renew(ctx, "n2"); status.Code(err) != codes.Unavailable {
		t.Fatalf("renewal before the barrier: %v, want Unavailable", err)
	}
	a.leases.end()
	if _, err := a.leases.renew(ctx, "n2"); status.Code(err) != codes.Unavailable {
		t.Fatalf("renewal after leadership ended: %v, want Unavailable", err)
	}
}

// Step 5, the node's side: a grant that leaves a group out does not extend
// its lease, and a grant at another epoch does not either.
func TestExecutorOnlyRunsConfirmedEpochs(t *testing.T) {
	a := testAgent(t)
	e := newExecutor(a, nil)
	now := time.Now()
	e.mu.Lock()
	e.leaseEnd = now.Add(time.Second)
	e.confirmed = map[string]uint64{"web": 2}
	e.mu.Unlock()
	if _, ok := e.mayRun("web", 2, now); !ok {
		t.Fatal("confirmed group at its epoch may not run")
	}
	if _, ok := e.mayRun("web", 1, now); ok {
		t.Fatal("an older epoch may run")
	}
	if _, ok := e.mayRun("db", 1, now); ok {
		t.Fatal("an unconfirmed group may run")
	}
	if _, ok := e.mayRun("web", 2, now.Add(2*time.Second)); ok {
		t.Fatal("a group may start after the lease ended")
	}
}

// Step 1: a reply that took long to arrive does not lengthen the lease;
// it ends no later than the leader's fence, whatever the delay.
func TestLeaseMeasuredFromSend(t *testing.T) {
	sent := time.Now()
	resp := &havenv1.RenewLeaseResponse{LeaseMillis: 1500}
	// The leader granted at some tg after sent and fences at tg+L+margin.
	tg := sent.Add(800 * time.Millisecond)
	fence := tg.Add(1500*time.Millisecond + 300*time.Millisecond)
	end := leaseEnd(sent, resp)
	if !end.Equal(sent.Add(1500 * time.Millisecond)) {
		t.Fatalf("lease ends %s after the send, want 1.5s", end.Sub(sent))
	}
	if !end.Before(fence) {
		t.Fatalf("lease end %s is not before the fence %s", end.Sub(sent), fence.Sub(sent))
	}
}
