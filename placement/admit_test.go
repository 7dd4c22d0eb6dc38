package placement

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestAdmit(t *testing.T) {
	// Two 16 GiB nodes each running 6 GiB of HA work: 10 GiB free each.
	two := cluster(nodes(2, 16), "a@n1:6", "b@n2:6")
	tests := []struct {
		name    string
		st      State
		g       Group
		k       int
		node    string
		errIs   error
		errType any
		errHas  string
	}{
		{
			name: "fits and keeps the reserve", st: two, g: grp("new", 1000, 3), k: 1, node: "n1",
		},
		{
			// Wherever a 6 GiB HA group goes, losing that node leaves 12
			// GiB to restart on the other's 10.
			name: "refused: it would break the reserve", st: two, g: grp("new", 1000, 6), k: 1,
			errIs: ErrResourceExhausted, errType: &ReserveError{},
			errHas: `admitting group "new" would break reserve 1 (tried n1,n2): with it on n1, if n1 fails, group "new" cannot restart: memory: needs 6.0 GiB, node n2 has 4.0 GiB free`,
		},
		{
			name: "the same group without reserve", st: two, g: grp("new", 1000, 6), k: 0, node: "n1",
		},
		{
			name: "a non-HA group still needs to leave room", st: two,
			g: with(grp("new", 1000, 6), func(g *Group) { g.HA = false }), k: 1,
			errIs: ErrResourceExhausted, errType: &ReserveError{}, errHas: `if n2 fails, group "b" cannot restart`,
		},
		{
			name: "no node has room at all", st: two, g: grp("huge", 1000, 11), k: 0,
			errIs: ErrResourceExhausted, errType: &NoRoomError{},
			errHas: `no node can run group "huge": memory: needs 11.0 GiB, at most 10.0 GiB free (node n1) on n1,n2`,
		},
		{
			name: "a broken reserve admits nothing",
			st:   cluster(nodes(2, 16), "a@n1:12", "b@n2:12"), g: grp("tiny", 1, 0.001), k: 1,
			errIs: ErrResourceExhausted, errType: &ReserveError{}, errHas: "reserve 1 is already broken",
		},
		{
			name: "start a stopped group", st: cluster(nodes(2, 16), "a@n1:6", "stopped@:2"),
			g: grp("stopped", 1000, 2), k: 1, node: "n2",
		},
		{
			name: "already running", st: two, g: grp("a", 1000, 1), k: 1,
			errIs: ErrAlreadyRunning, errHas: `"a"`,
		},
		{
			name: "invalid", st: two, g: grp("", 1000, 1), k: 1,
			errIs: ErrInvalid, errHas: "empty name",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Admit(tc.st, tc.g, tc.k)
			if tc.errIs == nil {
				if err != nil {
					t.Fatal(err)
				}
				if a.Node != tc.node || a.Reserve == nil || !a.Reserve.OK {
					t.Fatalf("admitted on %q (want %q), reserve %v", a.Node, tc.node, a.Reserve)
				}
				// The reserve the admission hands back is the one a fresh
				// check of the new state gives.
				st2 := withGroup(tc.st, tc.g, a.Node)
				if fresh := CheckReserve(st2, tc.k); fresh.Summary() != a.Reserve.Summary() {
					t.Errorf("admission reserve %q, fresh %q", a.Reserve.Summary(), fresh.Summary())
				}
				return
			}
			if !errors.Is(err, tc.errIs) {
				t.Fatalf("err %v, want %v", err, tc.errIs)
			}
			if tc.errType != nil && reflect.TypeOf(err) != reflect.TypeOf(tc.errType) {
				t.Errorf("err type %T, want %T", err, tc.errType)
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("err %q, want it to contain %q", err, tc.errHas)
			}
		})
	}
}

func TestRank(t *testing.T) {
	st := State{
		Nodes: []Node{
			node("n1", "A", 8000, 16), node("n2", "A", 8000, 16), node("n3", "B", 8000, 16),
			with2(node("n4", "B", 8000, 16), func(n *Node) { n.Draining = true }),
		},
		Groups: []Group{
			grp("x", 4000, 8),
			with(grp("web1", 500, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "web"}} }),
		},
		Assign: map[string]string{"x": "n2", "web1": "n3"},
	}
	g := with(grp("web2", 1000, 2), func(g *Group) {
		g.AntiAffinity = []Class{{Name: "web"}}
		g.PreferredSite = "B"
	})
	rs := Rank(st, g)
	var order []string
	for _, r := range rs {
		order = append(order, r.Node)
	}
	// n3 is in the preferred site but holds web1; n1 and n2 are in site A,
	// n1 emptier; n4 is draining.
	if want := []string{"n1", "n2", "n3", "n4"}; !reflect.DeepEqual(order, want) {
		t.Fatalf("order %v, want %v: %+v", order, want, rs)
	}
	if got := Place(withGroup(st, g, ""), []string{"web2"}, Options{}).Assign()["web2"]; got != rs[0].Node {
		t.Errorf("Place chose %s, Rank's first is %s", got, rs[0].Node)
	}
	for i := 1; i < len(rs); i++ {
		if rs[i].Score > rs[i-1].Score {
			t.Errorf("scores not falling: %v", rs)
		}
	}
	if rs[0].Stars < 3 || rs[3].Stars != 0 || rs[3].Feasible {
		t.Errorf("stars %d..%d, feasible %v", rs[0].Stars, rs[3].Stars, rs[3].Feasible)
	}
	want := map[string]string{
		"n1": "outside preferred site B",
		"n3": "soft anti-affinity: 1 partner(s) already on this node",
		"n4": "node state: draining",
	}
	for _, r := range rs {
		if w, ok := want[r.Node]; ok && !strings.Contains(strings.Join(r.Why, "; "), w) {
			t.Errorf("%s: why %q, want %q", r.Node, r.Why, w)
		}
	}
}

func TestReserveRank(t *testing.T) {
	// n1 is the spare that c1 and c2 restart on if n3 fails. Spreading
	// would put the new group on n1 (emptiest), which breaks that; n3 and
	// n2 keep the reserve.
	st := cluster([]Node{node("n1", "A", 64000, 16), node("n2", "A", 64000, 16), node("n3", "A", 64000, 32)},
		"B@n2:12", "c1@n3:8", "c2@n3:8")
	r := CheckReserve(st, 1)
	if !r.OK {
		t.Fatal(r.Summary())
	}
	g := grp("new", 1000, 4)
	if plain := Rank(st, g); plain[0].Node != "n1" {
		t.Fatalf("plain rank starts with %s, want n1", plain[0].Node)
	}
	rs, err := r.Rank(g)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, x := range rs {
		order = append(order, x.Node)
	}
	if want := []string{"n3", "n2", "n1"}; !reflect.DeepEqual(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	if !rs[0].KeepsReserve || rs[0].Stars == 0 || !rs[1].KeepsReserve {
		t.Errorf("n3, n2 should keep the reserve: %+v", rs[:2])
	}
	if n1 := rs[2]; n1.KeepsReserve || n1.Stars != 0 || !strings.Contains(strings.Join(n1.Why, "; "), `breaks reserve 1: if n3 fails, group "c2" cannot restart`) {
		t.Errorf("n1: %+v", n1)
	}
	a, err := r.Admit(g)
	if err != nil || a.Node != "n3" {
		t.Errorf("admit %+v %v, want n3", a, err)
	}
}
