package placement_test

import (
	"errors"
	"fmt"
	"strings"

	"github.com/haven-ha/haven/placement"
)

const gib = int64(1) << 30

func exampleState() placement.State {
	n := func(name, site string) placement.Node {
		return placement.Node{Name: name, Site: site, CPUMillis: 16000, CPUOvercommit: 2, MemoryBytes: 64 * gib, Up: true}
	}
	g := func(name string, memGiB int64) placement.Group {
		return placement.Group{Name: name, CPUMillis: 2000, MemoryBytes: memGiB * gib, HA: true, Priority: 2}
	}
	sql := func(name string) placement.Group {
		x := g(name, 16)
		x.Priority = 1
		x.AntiAffinity = []placement.Class{{Name: "sql", Hard: true, AcrossSites: true}}
		return x
	}
	return placement.State{
		Nodes:  []placement.Node{n("n1", "A"), n("n2", "A"), n("n3", "B"), n("n4", "B")},
		Groups: []placement.Group{sql("sql1"), sql("sql2"), g("web1", 24), g("web2", 24), g("app", 16)},
		Assign: map[string]string{"sql1": "n1", "sql2": "n3", "web1": "n2", "web2": "n4", "app": "n1"},
	}
}

func ExampleCheckReserve() {
	st := exampleState()
	r := placement.CheckReserve(st, 1)
	fmt.Println(r.Summary())
	p, _ := r.PlanFor([]string{"n1"})
	for _, m := range p.Moves {
		fmt.Printf("%s: %s -> %s\n", m.Group, m.From, m.To)
	}
	fmt.Println(placement.CheckReserve(st, 3).Summary())
	// Output:
	// can sustain 1 failure(s): yes (enumerated; 4 sets planned, 0 pruned); worst n1; headroom 86000m cpu, 96.0 GiB memory
	// sql1: n1 -> n2
	// app: n1 -> n2
	// can sustain 3 failure(s): no (enumerated; 4 of 14 sets broken): if n1,n2,n3 fail, group "sql2" cannot restart: hard anti-affinity: n4 class sql: runs sql1; failed: n1,n2,n3
}

func ExampleAdmit() {
	st := exampleState()
	a, err := placement.Admit(st, placement.Group{Name: "db", CPUMillis: 4000, MemoryBytes: 32 * gib, HA: true}, 1)
	fmt.Println(a.Node, err)
	_, err = placement.Admit(st, placement.Group{Name: "huge", CPUMillis: 4000, MemoryBytes: 48 * gib, HA: true}, 1)
	fmt.Println(errors.Is(err, placement.ErrResourceExhausted))
	fmt.Println(err)
	// Output:
	// n3 <nil>
	// true
	// admitting group "huge" would break reserve 1 (tried n3): with it on n3, if n3 fails, group "huge" cannot restart: memory: needs 48.0 GiB, at most 40.0 GiB free (node n2) on n1,n2,n4; failed: n3
}

func ExampleRank() {
	for _, r := range placement.Rank(exampleState(), placement.Group{Name: "new", CPUMillis: 1000, MemoryBytes: 8 * gib, PreferredSite: "B"}) {
		fmt.Printf("%s %3d %d* %s\n", r.Node, r.Score, r.Stars, strings.Join(r.Why, "; "))
	}
	// Output:
	// n3  98 5* in preferred site B; cpu 6% -> 9% of 32000m (2x overcommit); memory 25% -> 38% of 64.0 GiB; load 25 of 40 (spread: more room left is better)
	// n4  97 5* in preferred site B; cpu 6% -> 9% of 32000m (2x overcommit); memory 38% -> 50% of 64.0 GiB; load 20 of 40 (spread: more room left is better)
	// n2  85 4* outside preferred site B; cpu 6% -> 9% of 32000m (2x overcommit); memory 38% -> 50% of 64.0 GiB; load 20 of 40 (spread: more room left is better)
	// n1  84 4* outside preferred site B; cpu 12% -> 16% of 32000m (2x overcommit); memory 50% -> 62% of 64.0 GiB; load 15 of 40 (spread: more room left is better)
}

func ExampleBalance() {
	st := exampleState()
	st.Assign["web2"] = "n2" // crowd n2
	p := placement.Balance(st, placement.BalanceOptions{Mode: placement.ModeRecommend, Reserve: 1}, nil)
	for _, m := range p.Moves {
		fmt.Println(m.Why)
	}
	fmt.Println(p.Stopped)
	// Output:
	// web1: n2 (cpu 12%, mem 75%) -> n4 (cpu 0%, mem 0%); imbalance 0.2843 -> 0.0924 (spread gain 0.2891); moves 24.0 GiB in ~20.6s (dirty 0 B/s), cost 0.0103; reserve 1 holds
	// no move lowers the spread 0.0342 (imbalance 0.0924) by more than 0.0100 after its cost
}
