package fsm

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// batchState is a cluster in which n1 has just failed: web, db and cache
// were running on it, cache was stopped by an operator after the leader
// looked, and idle was never started.
func batchState(t *testing.T) *applier {
	a := &applier{t: t, f: New()}
	for _, name := range []string{"web", "db", "cache", "idle"} {
		if r := a.apply(t0, createCmd("c-"+name, name)); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	for _, name := range []string{"web", "db", "cache"} {
		g := a.f.Group(name)
		if r := a.apply(t0, assignCmd(&havenv1.AssignGroupCommand{Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(),
			Owner: "n1", State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN})); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	return a
}

func assignCmd(c *havenv1.AssignGroupCommand) *havenv1.Command {
	return &havenv1.Command{Cmd: &havenv1.Command_AssignGroup{AssignGroup: c}}
}

func batchCmd(id string, cs []*havenv1.AssignGroupCommand) *havenv1.Command {
	return &havenv1.Command{RequestId: id, Cmd: &havenv1.Command_AssignGroups{AssignGroups: &havenv1.AssignGroupsCommand{Assignments: cs}}}
}

// failover is the leader's decision to restart g on to (no node: g waits,
// failed), made on the view it has of g.
func failover(g *havenv1.Group, to string) *havenv1.AssignGroupCommand {
	st := havenv1.GroupState_GROUP_STATE_STARTING
	if to == "" {
		st = havenv1.GroupState_GROUP_STATE_FAILED
	}
	return &havenv1.AssignGroupCommand{
		Name: g.GetSpec().GetName(), ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(),
		Owner: to, State: st, Reason: "node n1 failed",
		Failure: &havenv1.GroupFailure{Node: g.GetOwner(), Time: timestamppb.New(t0), Reason: "node failed"},
	}
}

func codes(errs []*Error) []Code {
	var out []Code
	for _, e := range errs {
		var c Code
		if e != nil {
			c = e.Code
		}
		out = append(out, c)
	}
	return out
}

func TestAssignGroupsBatch(t *testing.T) {
	const fp = CodeFailedPrecondition
	for _, tt := range []struct {
		name string
		// decide builds the batch from the leader's view, which may
		// change (stale) before the batch commits.
		decide func(v *FSM) []*havenv1.AssignGroupCommand
		stale  *havenv1.Command
		want   []Code
	}{{
		name: "all applied",
		decide: func(v *FSM) []*havenv1.AssignGroupCommand {
			return []*havenv1.AssignGroupCommand{failover(v.Group("web"), "n2"), failover(v.Group("db"), "n3"), failover(v.Group("cache"), "")}
		},
		want: []Code{CodeOK, CodeOK, CodeOK},
	}, {
		name: "an operator's stop between decision and commit",
		decide: func(v *FSM) []*havenv1.AssignGroupCommand {
			return []*havenv1.AssignGroupCommand{failover(v.Group("web"), "n2"), failover(v.Group("cache"), "n2")}
		},
		stale: &havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: "cache"}}},
		want:  []Code{CodeOK, fp},
	}, {
		name: "mixed",
		decide: func(v *FSM) []*havenv1.AssignGroupCommand {
			web, db := v.Group("web"), v.Group("db")
			oldDB := failover(db, "n2")
			oldDB.ExpectEpoch--
			return []*havenv1.AssignGroupCommand{
				failover(web, "n2"),
				oldDB, // decided on an older epoch
				{Name: "gone", Owner: "n2", State: havenv1.GroupState_GROUP_STATE_STARTING},
				failover(v.Group("idle"), "n2"), // never started: not to run
				failover(web, "n3"),             // the first item moved web's epoch on
				failover(db, "n3"),
			}
		},
		want: []Code{CodeOK, fp, CodeNotFound, fp, fp, CodeOK},
	}, {
		name:   "empty",
		decide: func(*FSM) []*havenv1.AssignGroupCommand { return nil },
		want:   nil,
	}} {
		t.Run(tt.name, func(t *testing.T) {
			batch := tt.decide(batchState(t).f)

			a := batchState(t)
			if tt.stale != nil {
				a.apply(t0, tt.stale)
			}
			r := a.apply(t0, batchCmd("b1", batch))
			if r.Err != nil || r.Index != a.index {
				t.Fatalf("batch: %+v", r)
			}
			if diff := cmp.Diff(tt.want, codes(r.Items)); diff != "" {
				t.Fatalf("item codes (-want +got):\n%s", diff)
			}
			for i, e := range r.Items {
				if e == nil && a.f.Group(batch[i].GetName()).GetModifyIndex() != r.Index {
					t.Errorf("item %d applied at index %d, not the batch's %d", i, a.f.Group(batch[i].GetName()).GetModifyIndex(), r.Index)
				}
			}

			// The same assignments, one command each.
			b := batchState(t)
			if tt.stale != nil {
				b.apply(t0, tt.stale)
			}
			var one []*Error
			for _, c := range batch {
				one = append(one, b.apply(t0, assignCmd(c)).Err)
			}
			if diff := cmp.Diff(one, r.Items); diff != "" {
				t.Errorf("batch decided otherwise than one by one (-one +batch):\n%s", diff)
			}
			// Only the indexes differ: one by one took one each.
			ignoreIndex := protocmp.IgnoreFields(&havenv1.Group{}, "modify_index", "desired_index")
			if diff := cmp.Diff(b.f.Groups(), a.f.Groups(), protocmp.Transform(), ignoreIndex); diff != "" {
				t.Errorf("groups differ (-one by one +batch):\n%s", diff)
			}

			// A retry gets the first outcome, item by item, also from a
			// replica restored from a snapshot.
			for name, f := range map[string]*FSM{"same": a.f, "restored": roundTrip(t, a.f)} {
				ra := &applier{t: t, f: f, index: a.index}
				again := ra.apply(t0, batchCmd("b1", batch))
				if !again.Duplicate || again.Index != r.Index || again.Err != nil {
					t.Fatalf("%s: retry: %+v", name, again)
				}
				if diff := cmp.Diff(r.Items, again.Items); diff != "" {
					t.Errorf("%s: retry's items (-first +retry):\n%s", name, diff)
				}
			}
		})
	}
}

// TestAssignGroupsSnapshotRoundTrip checks that the groups a batch changed
// and its remembered outcome survive a snapshot.
func TestAssignGroupsSnapshotRoundTrip(t *testing.T) {
	a := batchState(t)
	web := a.f.Group("web")
	a.apply(t0, batchCmd("b1", []*havenv1.AssignGroupCommand{failover(web, "n2"), failover(web, "n3")}))
	b := roundTrip(t, a.f)
	if diff := cmp.Diff(a.f.Groups(), b.Groups(), protocmp.Transform()); diff != "" {
		t.Errorf("groups differ (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(a.f.st.requests, b.st.requests, protocmp.Transform()); diff != "" {
		t.Errorf("requests differ (-before +after):\n%s", diff)
	}
	if items := b.st.requests["b1"].GetItems(); len(items) != 2 || items[0].GetErrorCode() != CodeOK || items[1].GetErrorCode() != CodeFailedPrecondition {
		t.Errorf("remembered items: %v", items)
	}
}
