package placement

import (
	"errors"
	"flag"
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestMain runs the property tests with 1,000 cases each unless
// -rapid.checks says otherwise: the package is fast enough, and 100 cases
// (rapid's default) miss the rarer shapes.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "rapid.checks" })
	if !set && !testing.Short() {
		_ = flag.Set("rapid.checks", "1000")
	}
	os.Exit(m.Run())
}

func node(name, site string, cpu int64, memGiB int64) Node {
	return Node{Name: name, Site: site, CPUMillis: cpu, MemoryBytes: memGiB * gib, Up: true}
}

func grp(name string, cpu int64, memGiB float64) Group {
	return Group{Name: name, CPUMillis: cpu, MemoryBytes: int64(memGiB * float64(gib)), HA: true, Priority: 2}
}

func with(g Group, f func(*Group)) Group { f(&g); return g }

func TestPlace(t *testing.T) {
	three := []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16), node("n3", "B", 8000, 16)}
	tests := []struct {
		name     string
		nodes    []Node
		running  []Group
		assign   map[string]string
		place    []Group
		opts     Options
		want     map[string]string // group -> node
		unplaced map[string]string // group -> substring of the reason
	}{
		{
			name:    "memory is never overcommitted",
			nodes:   []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			running: []Group{grp("big", 1000, 12)},
			assign:  map[string]string{"big": "n1"},
			place:   []Group{grp("a", 1000, 9), grp("b", 1000, 9), grp("c", 1000, 1)},
			// a and b both need 9 GiB: only n2 has it, for one; c spreads
			// to n2 (10/16 used) rather than n1 (13/16).
			want:     map[string]string{"a": "n2", "c": "n2"},
			unplaced: map[string]string{"b": "memory: needs 9.0 GiB, at most 7.0 GiB free (node n2) on n1,n2"},
		},
		{
			name:  "cpu is overcommitted by the node's ratio",
			nodes: []Node{{Name: "n1", CPUMillis: 4000, CPUOvercommit: 2, MemoryBytes: 64 * gib, Up: true}},
			place: []Group{grp("a", 4000, 1), grp("b", 4000, 1), grp("c", 1, 1)},
			want:  map[string]string{"a": "n1", "b": "n1"},
			unplaced: map[string]string{
				"c": "cpu: needs 1m, node n1 has 0m free",
			},
		},
		{
			name:  "possible owners bind even when another node is emptier",
			nodes: three,
			running: []Group{
				grp("x", 4000, 8),
			},
			assign: map[string]string{"x": "n2"},
			place:  []Group{with(grp("a", 1000, 1), func(g *Group) { g.PossibleOwners = []string{"n2"} })},
			want:   map[string]string{"a": "n2"},
		},
		{
			name:    "reason names the constraint and the nodes",
			nodes:   three,
			running: []Group{grp("x", 1000, 14.5)},
			assign:  map[string]string{"x": "n3"},
			place:   []Group{with(grp("a", 1000, 4), func(g *Group) { g.PossibleOwners = []string{"n3"} })},
			unplaced: map[string]string{
				"a": "memory: needs 4.0 GiB, node n3 has 1.5 GiB free; n1,n2 excluded by possible owners",
			},
		},
		{
			name: "required labels",
			nodes: []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16),
				with2(node("n3", "A", 8000, 16), func(n *Node) { n.Labels = map[string]string{"gpu": "yes"} })},
			place: []Group{
				with(grp("ml", 1000, 1), func(g *Group) { g.RequireLabels = map[string]string{"gpu": "yes"} }),
				with(grp("ml2", 1000, 1), func(g *Group) { g.RequireLabels = map[string]string{"fpga": "yes"} }),
			},
			want:     map[string]string{"ml": "n3"},
			unplaced: map[string]string{"ml2": "excluded by labels (lacks fpga=yes)"},
		},
		{
			name:  "a node the group failed on lately is avoided",
			nodes: []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16), node("n3", "A", 8000, 16)},
			place: []Group{
				with(grp("a", 1000, 1), func(g *Group) { g.AvoidNodes = []string{"n1", "n2"} }),
				with(grp("b", 1000, 1), func(g *Group) {
					g.AvoidNodes = []string{"n1", "n2"}
					g.PossibleOwners = []string{"n1", "n2"}
				}),
			},
			want:     map[string]string{"a": "n3"},
			unplaced: map[string]string{"b": "n1,n2 excluded: the group failed there lately"},
		},
		{
			name:  "a node whose driver cannot run the group is passed over, and says why",
			nodes: []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16), node("n3", "A", 8000, 16)},
			place: []Group{
				with(grp("a", 1000, 1), func(g *Group) {
					g.CannotRun = map[string]string{"n1": "boot.kernel: no such file", "n2": "boot.kernel: no such file"}
				}),
				with(grp("b", 1000, 1), func(g *Group) {
					g.CannotRun = map[string]string{"n1": "boot.kernel: no such file", "n2": "machine \"pc-q35-9.0\": not emulated", "n3": "disks[0]: no such file"}
				}),
			},
			want:     map[string]string{"a": "n3"},
			unplaced: map[string]string{"b": `no node can run it: n1: boot.kernel: no such file; n2: machine "pc-q35-9.0": not emulated; n3: disks[0]: no such file`},
		},
		{
			name:  "hard anti-affinity: a guest cluster never shares a node",
			nodes: []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			place: []Group{
				with(grp("sql1", 1000, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "sql", Hard: true}} }),
				with(grp("sql2", 1000, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "sql", Hard: true}} }),
				with(grp("sql3", 1000, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "sql", Hard: true}} }),
			},
			want:     map[string]string{"sql1": "n1", "sql2": "n2"},
			unplaced: map[string]string{"sql3": "hard anti-affinity: n1 class sql: runs sql1; n2 class sql: runs sql2"},
		},
		{
			name:  "hard on one side binds both: a soft member avoids a hard one",
			nodes: []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			running: []Group{
				with(grp("h", 1000, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "dc", Hard: true}} }),
			},
			assign: map[string]string{"h": "n1"},
			place: []Group{
				with(grp("s", 1000, 1), func(g *Group) {
					g.AntiAffinity = []Class{{Name: "dc"}}
					g.PossibleOwners = []string{"n1"}
				}),
			},
			unplaced: map[string]string{"s": "hard anti-affinity: n1 class dc: runs h"},
		},
		{
			name:    "soft anti-affinity spreads over a less loaded node",
			nodes:   []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			running: []Group{with(grp("web1", 500, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "web"}} }), grp("load", 4000, 8)},
			assign:  map[string]string{"web1": "n1", "load": "n2"},
			place:   []Group{with(grp("web2", 500, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "web"}} })},
			want:    map[string]string{"web2": "n2"},
		},
		{
			name:  "soft anti-affinity shares a node when it must",
			nodes: []Node{node("n1", "A", 8000, 16)},
			place: []Group{
				with(grp("web1", 500, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "web"}} }),
				with(grp("web2", 500, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "web"}} }),
			},
			want: map[string]string{"web1": "n1", "web2": "n1"},
		},
		{
			name:  "across sites: the second member goes to the other site",
			nodes: three,
			place: []Group{
				with(grp("dc1", 1000, 2), func(g *Group) { g.AntiAffinity = []Class{{Name: "dc", Hard: true, AcrossSites: true}} }),
				with(grp("dc2", 1000, 1), func(g *Group) { g.AntiAffinity = []Class{{Name: "dc", Hard: true, AcrossSites: true}} }),
			},
			// dc1 (larger) goes first to n1 (tie on load, by name); dc2
			// avoids site A although n2 is as empty as n3.
			want: map[string]string{"dc1": "n1", "dc2": "n3"},
		},
		{
			name:    "preferred owner beats a lighter node",
			nodes:   three,
			running: []Group{grp("x", 4000, 8)},
			assign:  map[string]string{"x": "n2"},
			place:   []Group{with(grp("a", 1000, 1), func(g *Group) { g.PreferredOwners = []string{"n2", "n1"} })},
			want:    map[string]string{"a": "n2"},
		},
		{
			name:  "preferred site",
			nodes: three,
			place: []Group{with(grp("a", 1000, 1), func(g *Group) { g.PreferredSite = "B" })},
			want:  map[string]string{"a": "n3"},
		},
		{
			name:  "priority decides who is left out, not name or size",
			nodes: []Node{node("n1", "A", 8000, 8)},
			place: []Group{
				with(grp("a-low", 1000, 6), func(g *Group) { g.Priority = 3 }),
				with(grp("z-high", 1000, 4), func(g *Group) { g.Priority = 1 }),
			},
			want:     map[string]string{"z-high": "n1"},
			unplaced: map[string]string{"a-low": "memory: needs 6.0 GiB, node n1 has 4.0 GiB free"},
		},
		{
			name: "down, draining, witness and excluded nodes take nothing",
			nodes: []Node{
				with2(node("n1", "A", 8000, 16), func(n *Node) { n.Up = false }),
				with2(node("n2", "A", 8000, 16), func(n *Node) { n.Draining = true }),
				with2(node("n3", "A", 8000, 16), func(n *Node) { n.Witness = true }),
				node("n4", "A", 8000, 16),
			},
			place:    []Group{grp("a", 1000, 1)},
			opts:     Options{Exclude: []string{"n4"}},
			unplaced: map[string]string{"a": "down: n1; draining: n2; excluded: n4; witness: n3"},
		},
		{
			name:    "spread picks the emptier node",
			nodes:   []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			running: []Group{grp("x", 2000, 8)},
			assign:  map[string]string{"x": "n1"},
			place:   []Group{grp("a", 1000, 2)},
			want:    map[string]string{"a": "n2"},
		},
		{
			name:    "pack picks the fuller node",
			nodes:   []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			running: []Group{grp("x", 2000, 8)},
			assign:  map[string]string{"x": "n1"},
			place:   []Group{grp("a", 1000, 2)},
			opts:    Options{Strategy: Pack},
			want:    map[string]string{"a": "n1"},
		},
		{
			name:    "a running group named is re-placed (drain, failover)",
			nodes:   []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			running: []Group{grp("a", 1000, 12)},
			assign:  map[string]string{"a": "n1"},
			place:   []Group{grp("a", 1000, 12)},
			opts:    Options{Exclude: []string{"n1"}},
			want:    map[string]string{"a": "n2"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := State{Nodes: tc.nodes, Assign: map[string]string{}}
			st.Groups = append(st.Groups, tc.running...)
			for _, g := range tc.place {
				if _, dup := groupByName(st)[g.Name]; !dup {
					st.Groups = append(st.Groups, g)
				}
			}
			for k, v := range tc.assign {
				st.Assign[k] = v
			}
			var names []string
			for _, g := range tc.place {
				names = append(names, g.Name)
			}
			res := Place(st, names, tc.opts)
			got := res.Assign()
			if tc.want == nil {
				tc.want = map[string]string{}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("placed %v, want %v (unplaced %+v)", got, tc.want, res.Unplaced)
			}
			if len(res.Unplaced) != len(tc.unplaced) {
				t.Errorf("unplaced %+v, want %v", res.Unplaced, tc.unplaced)
			}
			for _, u := range res.Unplaced {
				want, ok := tc.unplaced[u.Group]
				if !ok || !strings.Contains(u.Reason, want) {
					t.Errorf("unplaced %s: reason %q, want it to contain %q", u.Group, u.Reason, want)
				}
			}
		})
	}
}

func with2(n Node, f func(*Node)) Node { f(&n); return n }

func TestPlaceUnknownGroup(t *testing.T) {
	res := Place(State{Nodes: []Node{node("n1", "A", 1000, 1)}}, []string{"ghost"}, Options{})
	if len(res.Unplaced) != 1 || res.Unplaced[0].Exclusions[0].Constraint != ConstraintUnknownGroup {
		t.Fatalf("got %+v", res)
	}
}

func TestDrain(t *testing.T) {
	st := State{
		Nodes:  []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16), node("n3", "A", 8000, 16)},
		Groups: []Group{grp("a", 1000, 4), grp("b", 1000, 4), grp("c", 1000, 4)},
		Assign: map[string]string{"a": "n1", "b": "n1", "c": "n2"},
	}
	res := Drain(st, "n1", Options{})
	if len(res.Unplaced) != 0 || len(res.Placed) != 2 {
		t.Fatalf("drain: %+v", res)
	}
	for _, m := range res.Placed {
		if m.From != "n1" || m.To == "n1" {
			t.Errorf("drain move %+v", m)
		}
	}
	// Spread: both go to n3, the empty node, then n2 or n3.
	if res.Placed[0].To != "n3" {
		t.Errorf("first drained group to %s, want n3 (emptiest)", res.Placed[0].To)
	}
}

func TestFailback(t *testing.T) {
	pref := func(name string, owners ...string) Group {
		return with(grp(name, 1000, 4), func(g *Group) { g.PreferredOwners = owners })
	}
	tests := []struct {
		name   string
		nodes  []Node
		groups []Group
		assign map[string]string
		want   []Move
	}{
		{
			name:   "back to the first preferred owner",
			nodes:  []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			groups: []Group{pref("a", "n1")},
			assign: map[string]string{"a": "n2"},
			want:   []Move{{Group: "a", From: "n2", To: "n1"}},
		},
		{
			name:   "not when the preferred owner is full",
			nodes:  []Node{node("n1", "A", 8000, 6), node("n2", "A", 8000, 16)},
			groups: []Group{pref("a", "n1"), grp("x", 1000, 4)},
			assign: map[string]string{"a": "n2", "x": "n1"},
		},
		{
			name:   "to the second preferred when the first is down",
			nodes:  []Node{with2(node("n1", "A", 8000, 16), func(n *Node) { n.Up = false }), node("n2", "A", 8000, 16), node("n3", "A", 8000, 16)},
			groups: []Group{pref("a", "n1", "n2")},
			assign: map[string]string{"a": "n3"},
			want:   []Move{{Group: "a", From: "n3", To: "n2"}},
		},
		{
			name:   "never to a less preferred owner",
			nodes:  []Node{node("n1", "A", 8000, 16), node("n2", "A", 8000, 16)},
			groups: []Group{pref("a", "n1", "n2")},
			assign: map[string]string{"a": "n1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Failback(State{Nodes: tc.nodes, Groups: tc.groups, Assign: tc.assign})
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		st   State
		want string // substring; "" = valid
	}{
		{"valid", State{Nodes: []Node{node("n1", "A", 1, 1)}, Groups: []Group{grp("a", 1, 1)}, Assign: map[string]string{"a": "n1"}}, ""},
		{"duplicate node", State{Nodes: []Node{node("n1", "A", 1, 1), node("n1", "A", 1, 1)}}, `node "n1": duplicate`},
		{"duplicate group", State{Groups: []Group{grp("a", 1, 1), grp("a", 1, 1)}}, `group "a": duplicate`},
		{"negative demand", State{Groups: []Group{grp("a", -1, 1)}}, "negative demand"},
		{"unknown node in assign", State{Groups: []Group{grp("a", 1, 1)}, Assign: map[string]string{"a": "n9"}}, `unknown node "n9"`},
		{"unknown group in assign", State{Nodes: []Node{node("n1", "A", 1, 1)}, Assign: map[string]string{"z": "n1"}}, `unknown group "z"`},
		{"empty class name", State{Groups: []Group{with(grp("a", 1, 1), func(g *Group) { g.AntiAffinity = []Class{{}} })}}, "empty name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.st.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
