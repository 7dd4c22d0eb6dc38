package fsm

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func namesAfter(f *FSM, after string, limit int) []string {
	var out []string
	f.GroupsAfter(after, func(g *havenv1.Group) bool {
		out = append(out, g.GetSpec().GetName())
		return len(out) < limit
	})
	return out
}

// TestGroupsAfter checks the name index against Groups, the sorted copy,
// after creates and deletes in random order and after a snapshot's
// restore, which rebuilds the index.
func TestGroupsAfter(t *testing.T) {
	a := &applier{t: t, f: New()}
	rng := rand.New(rand.NewPCG(1, 2))
	live := map[string]bool{}
	for i := range 400 {
		name := fmt.Sprintf("g%03d", rng.IntN(150))
		c := createCmd(fmt.Sprint("r", i), name)
		if live[name] {
			c = deleteCmd(fmt.Sprint("r", i), name)
		}
		if r := a.apply(t0, c); r.Err != nil {
			t.Fatalf("%v: %v", name, r.Err)
		}
		live[name] = !live[name]
	}
	for _, f := range []*FSM{a.f, roundTrip(t, a.f)} {
		var want []string
		for _, g := range f.Groups() {
			want = append(want, g.GetSpec().GetName())
		}
		if len(want) == 0 {
			t.Fatal("no group left to list")
		}
		if got := namesAfter(f, "", len(want)+1); !slices.Equal(got, want) {
			t.Fatalf("GroupsAfter(\"\") = %v, want %v", got, want)
		}
		for i, name := range want {
			// After a name that exists and after a prefix that is no group's
			// name: either way the page starts at the next name.
			if got := namesAfter(f, name, 3); !slices.Equal(got, want[i+1:min(i+4, len(want))]) {
				t.Errorf("GroupsAfter(%q) = %v, want %v", name, got, want[i+1:min(i+4, len(want))])
			}
			prefix := name[:len(name)-1]
			first, _ := slices.BinarySearch(want, prefix)
			if got := namesAfter(f, prefix, 1); !slices.Equal(got, want[first:first+1]) {
				t.Errorf("GroupsAfter(%q) = %v, want %v", prefix, got, want[first:first+1])
			}
		}
	}
}

// GroupsChangedAfter visits exactly the live groups changed after an
// index, oldest change first, also after a snapshot's round trip: groups
// created, stopped and deleted at random.
func TestGroupsChangedAfter(t *testing.T) {
	a := &applier{t: t, f: New()}
	rng := rand.New(rand.NewPCG(3, 4))
	live := map[string]bool{}
	for i := range 600 {
		name := fmt.Sprintf("g%03d", rng.IntN(100))
		c := createCmd(fmt.Sprint("r", i), name)
		switch {
		case live[name] && rng.IntN(2) == 0:
			c = deleteCmd(fmt.Sprint("r", i), name)
			live[name] = false
		case live[name]:
			c = &havenv1.Command{Cmd: &havenv1.Command_StopGroup{StopGroup: &havenv1.StopGroupCommand{Name: name}}}
		default:
			live[name] = true
		}
		a.apply(t0, c) // a stop of a stopped group may be refused: no change
	}
	for _, f := range []*FSM{a.f, roundTrip(t, a.f)} {
		for _, after := range []uint64{0, 1, 100, 300, 450, 599, 600} {
			var want []string
			gs := f.Groups()
			slices.SortStableFunc(gs, func(x, y *havenv1.Group) int { return cmp.Compare(x.GetModifyIndex(), y.GetModifyIndex()) })
			for _, g := range gs {
				if g.GetModifyIndex() > after {
					want = append(want, g.GetSpec().GetName())
				}
			}
			var got []string
			f.GroupsChangedAfter(after, func(g *havenv1.Group) bool {
				got = append(got, g.GetSpec().GetName())
				return true
			})
			if !slices.Equal(got, want) {
				t.Fatalf("GroupsChangedAfter(%d) = %v, want %v", after, got, want)
			}
		}
	}
}

// Owners follows assignments, moves to another owner, stops and deletes.
func TestOwners(t *testing.T) {
	a := &applier{t: t, f: New()}
	assign := func(name, owner string) {
		g := a.f.Group(name)
		a.apply(t0, assignCmd(&havenv1.AssignGroupCommand{Name: name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(),
			Owner: owner, State: havenv1.GroupState_GROUP_STATE_STARTING, Desired: havenv1.DesiredState_DESIRED_STATE_RUN}))
	}
	for i, name := range []string{"a", "b", "c"} {
		a.apply(t0, createCmd(fmt.Sprint("c", i), name))
	}
	assign("a", "n2")
	assign("b", "n1")
	assign("c", "n2")
	if got := a.f.Owners(); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Fatalf("owners %v, want n1 n2", got)
	}
	assign("b", "n3")
	assign("a", "n3")
	if got := a.f.Owners(); !slices.Equal(got, []string{"n2", "n3"}) {
		t.Fatalf("after moves: owners %v, want n2 n3", got)
	}
	if got := roundTrip(t, a.f).Owners(); !slices.Equal(got, []string{"n2", "n3"}) {
		t.Fatalf("after a snapshot: owners %v, want n2 n3", got)
	}
}
