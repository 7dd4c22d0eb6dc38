package placement

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// stretch is two sites of two 32 GiB nodes (a1, a2 in A; b1, b2 in B) and,
// when witness, a witness w1 alone in site W.
func stretch(witness bool, groups ...string) State {
	ns := []Node{node("a1", "A", 64000, 32), node("a2", "A", 64000, 32), node("b1", "B", 64000, 32), node("b2", "B", 64000, 32)}
	if witness {
		ns = append(ns, Node{Name: "w1", Site: "W", Witness: true, Up: true})
	}
	return cluster(ns, groups...)
}

func hardClass(st State, class string, names ...string) State {
	return edit(st, func(s *State) {
		for i := range s.Groups {
			for _, n := range names {
				if s.Groups[i].Name == n {
					s.Groups[i].AntiAffinity = []Class{{Name: class, Hard: true}}
				}
			}
		}
	})
}

func TestCheckReserveSites(t *testing.T) {
	type site struct {
		name   string
		failed []string
		ok     bool
	}
	tests := []struct {
		name  string
		st    State
		spec  Spec
		ok    bool
		sets  int // searched, node sets and site sets
		sites []site
		// breach: the failure the reserve reports first, "site X" or a
		// node set; who and why: its group and a piece of the reason.
		breach, who, why string
	}{
		{
			name: "half-full sites survive the loss of either",
			st:   stretch(false, "x@a1:8", "y@a2:8", "z@b1:8", "w@b2:8"),
			spec: Spec{SiteLoss: true}, ok: true, sets: 2,
			sites: []site{{"A", []string{"a1", "a2"}, true}, {"B", []string{"b1", "b2"}, true}},
		},
		{
			// 36 GiB to restart in 28 free; one node's 18 fits anywhere.
			name: "site loss does not fit where a node loss does",
			st:   stretch(false, "x1@a1:10", "x2@a1:8", "y1@a2:10", "y2@a2:8", "z1@b1:10", "z2@b1:8", "w1@b2:10", "w2@b2:8"),
			spec: Spec{SiteLoss: true}, ok: false, sets: 2,
			sites:  []site{{"A", []string{"a1", "a2"}, false}, {"B", []string{"b1", "b2"}, false}},
			breach: "site A", who: "x2", why: "memory: needs 8.0 GiB",
		},
		{
			name: "with K = 1 the node sets hold and a site breaks",
			st:   stretch(false, "x1@a1:10", "x2@a1:8", "y1@a2:10", "y2@a2:8", "z1@b1:10", "z2@b1:8", "w1@b2:10", "w2@b2:8"),
			spec: Spec{K: 1, SiteLoss: true}, ok: false, sets: 6,
			sites:  []site{{"A", []string{"a1", "a2"}, false}, {"B", []string{"b1", "b2"}, false}},
			breach: "site A", who: "x2", why: "memory: needs 8.0 GiB",
		},
		{
			name: "the same K = 1 alone holds",
			st:   stretch(false, "x1@a1:10", "x2@a1:8", "y1@a2:10", "y2@a2:8", "z1@b1:10", "z2@b1:8", "w1@b2:10", "w2@b2:8"),
			spec: Spec{K: 1}, ok: true, sets: 4,
		},
		{
			// A broken node set is the simpler failure: it is named first.
			name: "a node set that breaks is named before a site",
			st:   stretch(false, "x@a1:30", "y@a2:30", "z@b1:30", "w@b2:30"),
			spec: Spec{K: 1, SiteLoss: true}, ok: false, sets: 6,
			sites:  []site{{"A", []string{"a1", "a2"}, false}, {"B", []string{"b1", "b2"}, false}},
			breach: "a1", who: "x", why: "memory: needs 30.0 GiB",
		},
		{
			// Any one node's sql member finds the free node, but with A
			// lost only b2 holds no sql partner, and it takes one of two;
			// with B lost, sql3 finds a partner on every node of A.
			name: "hard anti-affinity across sites",
			st:   hardClass(stretch(false, "sql1@a1:4", "sql2@a2:4", "sql3@b1:4"), "sql", "sql1", "sql2", "sql3"),
			spec: Spec{K: 1, SiteLoss: true}, ok: false, sets: 5,
			sites:  []site{{"A", []string{"a1", "a2"}, false}, {"B", []string{"b1", "b2"}, false}},
			breach: "site A", who: "sql2", why: "hard anti-affinity: b1 class sql: runs sql3; b2 class sql: runs sql1",
		},
		{
			name: "hard anti-affinity that site B can honour",
			st:   hardClass(stretch(false, "sql1@a1:4", "sql2@b1:4"), "sql", "sql1", "sql2"),
			spec: Spec{SiteLoss: true}, ok: true, sets: 2,
			sites: []site{{"A", []string{"a1", "a2"}, true}, {"B", []string{"b1", "b2"}, true}},
		},
		{
			// W hosts nothing: it is neither a failure set nor a refuge.
			name: "a witness site is not a failure set",
			st:   stretch(true, "x@a1:8", "z@b1:8"),
			spec: Spec{SiteLoss: true}, ok: true, sets: 2,
			sites: []site{{"A", []string{"a1", "a2"}, true}, {"B", []string{"b1", "b2"}, true}},
		},
		{
			name: "a site that displaces no HA group is pruned",
			st:   stretch(true, "x@a1:8"),
			spec: Spec{SiteLoss: true}, ok: true, sets: 1,
			sites: []site{{"A", []string{"a1", "a2"}, true}, {"B", []string{"b1", "b2"}, true}},
		},
		{
			// Site A of one node is the node set {a1}: one plan for both.
			name: "a site of one node shares its node set's plan",
			st: cluster([]Node{node("a1", "A", 64000, 32), node("b1", "B", 64000, 32), node("b2", "B", 64000, 32)},
				"x@a1:8", "z@b1:8", "w@b2:8"),
			spec: Spec{K: 1, SiteLoss: true}, ok: true, sets: 4,
			sites: []site{{"A", []string{"a1"}, true}, {"B", []string{"b1", "b2"}, true}},
		},
		{
			// B is down already: its groups wait for a1 and a2, which
			// hold them, and losing A too leaves nothing.
			name: "a site already lost has the verdict of no further failure",
			st: edit(stretch(false, "x@a1:8", "z@b1:8"), func(s *State) {
				s.Nodes[2].Up, s.Nodes[3].Up = false, false
			}),
			spec: Spec{SiteLoss: true}, ok: false, sets: 2,
			sites:  []site{{"A", []string{"a1", "a2"}, false}, {"B", []string{}, true}},
			breach: "site A", who: "x", why: "down: b1,b2; failed: a1,a2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := CheckReserveSpec(tt.st, tt.spec)
			if want := map[bool]string{true: "can sustain the loss of any one site: ", false: "can sustain 1 failure(s) and the loss of any one site: "}[tt.spec.K == 0]; tt.spec.SiteLoss && !strings.HasPrefix(r.Summary(), want) {
				t.Errorf("summary %q, want it to start %q", r.Summary(), want)
			}
			if r.OK != tt.ok || r.FailureSets != tt.sets {
				t.Fatalf("ok %v with %d sets searched, want %v with %d: %s", r.OK, r.FailureSets, tt.ok, tt.sets, r.Summary())
			}
			var got []site
			for _, s := range r.Sites {
				got = append(got, site{s.Site, s.Failed, s.OK})
				if s.OK != (s.Breach == nil) {
					t.Errorf("site %s: ok %v with breach %v", s.Site, s.OK, s.Breach)
				}
			}
			if !reflect.DeepEqual(got, tt.sites) {
				t.Errorf("sites %+v, want %+v", got, tt.sites)
			}
			if tt.ok {
				if r.Breach != nil {
					t.Errorf("holds with a breach: %v", r.Breach)
				}
				return
			}
			b := r.Breach
			if b == nil {
				t.Fatal("broken without a breach")
			}
			where := strings.Join(b.Failed, ",")
			if b.Site != "" {
				where = "site " + b.Site
			}
			if where != tt.breach || b.Group != tt.who || !strings.Contains(b.Reason, tt.why) {
				t.Errorf("breach %s: %s %q, want %s: %s ... %q", where, b.Group, b.Reason, tt.breach, tt.who, tt.why)
			}
			if b.Site != "" && !strings.HasPrefix(b.String(), fmt.Sprintf("if site %s fails (%s), group %q cannot restart", b.Site, strings.Join(b.Failed, ","), b.Group)) {
				t.Errorf("breach reads %q", b.String())
			}
		})
	}
}

// A real loss of a whole site finds the plan the check made for it, and
// the plan restarts the site's groups in the other site.
func TestPlanForSite(t *testing.T) {
	st := stretch(true, "x@a1:8", "y@a2:8", "z@b1:8")
	r := CheckReserveSpec(st, Spec{K: 1, SiteLoss: true})
	if !r.OK {
		t.Fatal(r.Summary())
	}
	p, err := r.PlanFor([]string{"a2", "a1"})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Precomputed || !p.OK || !reflect.DeepEqual(p.Failed, []string{"a1", "a2"}) {
		t.Fatalf("plan %+v: want the kept plan for a1,a2", p)
	}
	for _, m := range p.Moves {
		if !strings.HasPrefix(m.To, "b") {
			t.Errorf("%s restarts on %s, in the lost site", m.Group, m.To)
		}
	}
	if len(p.Moves) != 2 {
		t.Errorf("moves %+v: want x and y", p.Moves)
	}
	mustNoViolations(t, "site plan", checkPlan(st, p.Failed, p))
}

// Admission keeps the site-loss reserve and says which site a refused
// group would leave without a plan.
func TestAdmitSiteLoss(t *testing.T) {
	st := stretch(true, "x1@a1:10", "x2@a1:8", "y1@a2:10", "z1@b1:10", "z2@b1:8", "w1@b2:10")
	r := CheckReserveSpec(st, Spec{K: 1, SiteLoss: true})
	if !r.OK {
		t.Fatal(r.Summary())
	}
	g := grp("big", 1000, 8)
	_, err := r.Admit(g)
	var re *ReserveError
	if !errors.As(err, &re) || !errors.Is(err, ErrResourceExhausted) {
		t.Fatalf("admit: %v, want a *ReserveError", err)
	}
	if re.Breach.Site == "" || !re.SiteLoss {
		t.Fatalf("breach %+v: want a site named", re.Breach)
	}
	msg := err.Error()
	if !strings.Contains(msg, "would break reserve 1 and site loss") || !strings.Contains(msg, "if site "+re.Breach.Site+" fails") {
		t.Errorf("refusal reads %q", msg)
	}
	// Without the site-loss reserve the same group is admitted.
	if _, err := CheckReserve(st, 1).Admit(g); err != nil {
		t.Errorf("K = 1 alone refuses: %v", err)
	}
	small := grp("small", 1000, 2)
	a, err := r.Admit(small)
	if err != nil {
		t.Fatalf("admit small: %v", err)
	}
	fresh := CheckReserveSpec(withGroup(st, small, a.Node), Spec{K: 1, SiteLoss: true})
	if fresh.Summary() != a.Reserve.Summary() || !reflect.DeepEqual(fresh.Sites, a.Reserve.Sites) {
		t.Errorf("admission's reserve %s %+v, fresh %s %+v", a.Reserve.Summary(), a.Reserve.Sites, fresh.Summary(), fresh.Sites)
	}
}

// Every kept site plan respects every hard constraint, a "yes" for a site
// means a restart exists for it, and an admission's incremental reserve
// agrees with a fresh check, site by site.
func TestPropSiteReserveSound(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st, r := drawCluster(t, small)
		spec := Spec{K: rapid.IntRange(0, 2).Draw(t, "k"), SiteLoss: true}
		res := CheckReserveSpec(st, spec)
		for _, s := range res.Sites {
			p, err := res.PlanFor(s.Failed)
			if err != nil {
				t.Fatal(err)
			}
			mustNoViolations(t, "plan for site "+s.Site, checkPlan(st, s.Failed, p))
			if s.OK != p.OK {
				t.Fatalf("site %s: verdict %v, plan %v", s.Site, s.OK, p.OK)
			}
			if s.OK && !exhaustiveRestart(st, setOf(s.Failed)) {
				t.Fatalf("site %s: yes, but no restart exists", s.Site)
			}
		}
		g := Group{Name: "new", CPUMillis: 1000, MemoryBytes: int64(1+r.IntN(4)) * gib, HA: true, Priority: 1 + r.IntN(3)}
		a, err := res.Admit(g)
		if err != nil {
			return
		}
		fresh := CheckReserveSpec(withGroup(st, g, a.Node), spec)
		if !fresh.OK || fresh.Summary() != a.Reserve.Summary() || !reflect.DeepEqual(fresh.Sites, a.Reserve.Sites) {
			t.Fatalf("admission reserve %q %+v, fresh check %q %+v", a.Reserve.Summary(), a.Reserve.Sites, fresh.Summary(), fresh.Sites)
		}
	})
}
