package placement

import (
	"fmt"
	"maps"
	"reflect"
	"testing"
)

// A compiled state extended group by group is the compiled state of
// the groups together: the same groups, class lists, order and
// assignment, across new classes, classes that grow, the merges of the
// name index and a stopped group replaced.
func TestWithGroupIsCompileOfTheExtendedState(t *testing.T) {
	st := placed(benchCluster(16, 300, 0.5, 4))
	c := compile(st)
	want := st
	want.Groups = append([]Group(nil), st.Groups...)
	extend := func(g Group) {
		t.Helper()
		var gi int32
		c, gi = c.withGroup(g)
		if i := indexOf(want.Groups, g.Name); i >= 0 {
			want.Groups[i] = g
		} else {
			want.Groups = append(want.Groups, g)
		}
		if c.groups[gi].name != g.Name {
			t.Fatalf("withGroup(%s) returned index %d, of %s", g.Name, gi, c.groups[gi].name)
		}
		sameCompiled(t, g.Name, c, compile(want))
	}
	for i := range 150 {
		// Names before, among and after the state's (g00000...), each
		// before the last one's: a new member goes into the middle of
		// its classes' lists.
		g := Group{Name: fmt.Sprintf("%s%03d", []string{"a", "g", "z"}[i%3], 150-i), CPUMillis: int64(500 * (1 + i%5)), MemoryBytes: int64(1+i%7) * gib, Priority: 1 + i%3, HA: true}
		switch i % 4 {
		case 1: // a class the state has
			g.AntiAffinity = []Class{{Name: "guest1", Hard: true}}
		case 2: // a class of its own, and one it shares with the next
			g.AntiAffinity = []Class{{Name: fmt.Sprintf("own%d", i)}, {Name: fmt.Sprintf("pair%d", i/4), AcrossSites: true}}
		case 3:
			g.AntiAffinity = []Class{{Name: fmt.Sprintf("pair%d", i/4), AcrossSites: true}}
		}
		extend(g)
	}
	// A group not running, as a reserve's snapshot may hold, replaced by
	// a spec that differs in what the order and the classes read.
	delete(want.Assign, "g00007")
	c = compile(want)
	extend(Group{Name: "g00007", CPUMillis: 8000, MemoryBytes: 64 * gib, Priority: 3, AntiAffinity: []Class{{Name: "own2"}}})
}

func indexOf(gs []Group, name string) int {
	for i, g := range gs {
		if g.Name == name {
			return i
		}
	}
	return -1
}

func sameCompiled(t *testing.T, step string, got, want *compiled) {
	t.Helper()
	if len(got.groups) != len(want.groups) {
		t.Fatalf("after %s: %d groups, want %d", step, len(got.groups), len(want.groups))
	}
	for i := range got.groups {
		if !reflect.DeepEqual(*got.groups[i], *want.groups[i]) {
			t.Fatalf("after %s: group %d is\n%+v, want\n%+v", step, i, *got.groups[i], *want.groups[i])
		}
	}
	names := func(x groupIndex) map[string]int32 {
		m := maps.Clone(x.base)
		maps.Copy(m, x.added)
		return m
	}
	for _, f := range []struct {
		what      string
		got, want any
	}{
		{"classes", got.classes, want.classes},
		{"rank", got.rank, want.rank},
		{"assign0", got.assign0, want.assign0},
		{"lost0", got.lost0, want.lost0},
		{"names", names(got.groupIdx), names(want.groupIdx)},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Fatalf("after %s: %s differ:\n%v\nwant\n%v", step, f.what, f.got, f.want)
		}
	}
}
