package quorum

import (
	"fmt"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"testing/quick"
	"time"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

var opts = Options{MaxVoters: 5, Stabilization: 10 * time.Second, ReapAfter: time.Hour}

func live(id string, voter bool) Server {
	return Server{ID: id, Site: "a", Alive: true, Since: now.Add(-time.Minute), InConfig: true, Voter: voter}
}

func deadFor(id string, voter bool, d time.Duration) Server {
	return Server{ID: id, Site: "a", Alive: false, Since: now.Add(-d), InConfig: true, Voter: voter}
}

// renewing is s with its last lease renewal ago before now.
func renewing(s Server, ago time.Duration) Server {
	s.Heard = now.Add(-ago)
	return s
}

func render(cs []Change) string {
	var b []string
	for _, c := range cs {
		b = append(b, c.Kind.String()+" "+c.ID)
	}
	return strings.Join(b, ", ")
}

func TestPlan(t *testing.T) {
	fresh := func(id string) Server { return Server{ID: id, Site: "a", Alive: true, Since: now.Add(-time.Second)} }
	tests := []struct {
		name    string
		servers []Server
		want    string
	}{
		{"steady three", []Server{live("n1", true), live("n2", true), live("n3", true)}, ""},
		{"fourth node joins as non-voter", []Server{live("n1", true), live("n2", true), live("n3", true), fresh("n4")}, "add n4"},
		{"fourth stays non-voter: four voters would be even", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", false)}, ""},
		{"fifth makes five voters", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", false), live("n5", false)}, "promote n4, promote n5"},
		{"sixth stays non-voter", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", true), live("n5", true), live("n6", false)}, ""},
		{"unstable non-voter waits", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", false),
			{ID: "n5", Site: "a", Alive: true, Since: now.Add(-time.Second), InConfig: true}}, ""},
		{"dead voter replaced", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", true), deadFor("n5", true, time.Minute), live("n6", false)},
			"demote n5, promote n6"},
		{"dead voter's vote dropped before its replacement is promoted", []Server{live("n1", true), deadFor("n2", true, time.Minute), live("n3", true), live("n4", false)},
			"demote n2, promote n4"},
		{"dead voter reaped before its replacement is promoted", []Server{live("n1", true), deadFor("n2", true, 2*time.Hour), live("n3", true), live("n4", false)},
			"remove n2, promote n4"},
		{"dead voter kept when its vote makes the count odd", []Server{live("n1", true), live("n2", true), deadFor("n3", true, time.Minute)}, ""},
		{"two dead of five demoted: three live voters", []Server{live("n1", true), live("n2", true), live("n3", true), deadFor("n4", true, time.Minute), deadFor("n5", true, time.Minute)},
			"demote n4, demote n5"},
		{"freshly dead voter keeps its vote", []Server{live("n1", true), live("n2", true), live("n3", true), deadFor("n4", true, time.Second), deadFor("n5", true, time.Minute), deadFor("n6", true, time.Minute)},
			"demote n6"},
		// After a partition heals gossip may still call both failed; n2
		// has voted for n1 and renews with it. Demoting both would leave
		// one voter, and no quorum should n1 die next.
		{"two silent voters of three demoted", []Server{live("n1", true), deadFor("n2", true, time.Minute), renewing(deadFor("n3", true, time.Minute), time.Minute)},
			"demote n2, demote n3"},
		{"voter gossip calls failed but still renewing keeps its vote", []Server{live("n1", true), renewing(deadFor("n2", true, time.Minute), time.Second), renewing(deadFor("n3", true, time.Minute), time.Minute)},
			""},
		{"renewing voter is not reaped", []Server{live("n1", true), live("n2", true), renewing(deadFor("n3", true, 2*time.Hour), time.Second)}, ""},
		{"reaped after reap time", []Server{live("n1", true), live("n2", true), live("n3", true), deadFor("n4", false, 2*time.Hour)}, "remove n4"},
		{"dead voter reaped", []Server{live("n1", true), live("n2", true), deadFor("n3", true, 2*time.Hour)}, "remove n3"},
		{"leader never demoted or removed", []Server{deadFor("n1", true, 2*time.Hour), live("n2", true), live("n3", true)}, ""},
		{"excess voters shed, leader kept", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", true), live("n5", true), live("n6", true), live("n7", true)},
			"demote n6, demote n7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := render(Plan(tt.servers, "n1", opts, now)); got != tt.want {
				t.Fatalf("plan = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPlanSpreadsSites(t *testing.T) {
	s := func(id, site string, voter, witness bool) Server {
		x := live(id, voter)
		x.Site, x.Witness = site, witness
		return x
	}
	servers := []Server{
		s("a1", "a", true, false), s("a2", "a", true, false), s("a3", "a", false, false),
		s("b1", "b", true, false), s("b2", "b", false, false), s("b3", "b", false, false),
		s("w1", "w", false, true),
	}
	// Three voters a1,a2,b1; two more to pick: b (fewest voters after w) and the witness.
	if got := render(Plan(servers, "a1", opts, now)); got != "promote w1, promote b2" {
		t.Fatalf("plan = %q", got)
	}
}

// apply plays a plan onto the servers as Raft would.
func apply(servers []Server, plan []Change) []Server {
	byID := map[string]int{}
	for i, s := range servers {
		byID[s.ID] = i
	}
	out := append([]Server(nil), servers...)
	var kept []Server
	removed := map[string]bool{}
	for _, c := range plan {
		s := &out[byID[c.ID]]
		switch c.Kind {
		case Add:
			s.InConfig = true
		case Promote:
			s.Voter = true
		case Demote:
			s.Voter = false
		case Remove:
			removed[c.ID] = true
		}
	}
	for _, s := range out {
		if !removed[s.ID] {
			kept = append(kept, s)
		} else {
			s.InConfig, s.Voter = false, false
			kept = append(kept, s)
		}
	}
	return kept
}

// TestPlanProperties checks, on random clusters, that a plan never touches
// the leader, never exceeds MaxVoters, never lowers the live votes when
// within MaxVoters, leaves an odd number of voters whenever it can, and is
// stable: planning again after applying it proposes nothing new within a
// few rounds (site-safety swaps take one round each).
func TestPlanProperties(t *testing.T) {
	f := func(seed int64) bool {
		r := rand.New(rand.NewSource(seed))
		n := 1 + r.Intn(9)
		var servers []Server
		for i := 0; i < n; i++ {
			s := Server{ID: fmt.Sprintf("n%d", i), Site: fmt.Sprintf("s%d", r.Intn(3)), Alive: r.Intn(4) > 0, InConfig: r.Intn(5) > 0, Since: now.Add(-time.Duration(r.Intn(3)) * 30 * time.Minute)}
			s.Voter = s.InConfig && r.Intn(2) == 0
			servers = append(servers, s)
		}
		// The leader is a live voter.
		servers[0].Alive, servers[0].InConfig, servers[0].Voter = true, true, true
		// Adds raise the number of live nodes and so the target: a plan
		// reaches its fixpoint within a few rounds, each checked.
		for round := 0; round < 3+opts.MaxVoters; round++ {
			next, ok := checkRound(t, seed, servers)
			if !ok {
				return false
			}
			servers = next
		}
		if again := Plan(servers, "n0", opts, now); len(again) != 0 {
			t.Logf("seed %d: no fixpoint: %v", seed, render(again))
			return false
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 2000}); err != nil {
		t.Fatal(err)
	}
}

func checkRound(t *testing.T, seed int64, servers []Server) ([]Server, bool) {
	{
		plan := Plan(servers, "n0", opts, now)
		liveVotersBefore := 0
		for _, s := range servers {
			if s.Alive && s.Voter {
				liveVotersBefore++
			}
		}
		for _, c := range plan {
			if c.ID == "n0" {
				t.Logf("seed %d: plan touches the leader: %v", seed, render(plan))
				return nil, false
			}
		}
		if step, ok := committable(servers, plan); !ok {
			t.Logf("seed %d: after %q the live voters are no majority should the promoted be dead: %v", seed, step, render(plan))
			return nil, false
		}
		after := apply(servers, plan)
		// A live voter loses its vote only in a swap for another (site
		// safety) or beyond MaxVoters: the live votes never fall.
		liveVotersAfter := 0
		for _, s := range after {
			if s.Alive && s.Voter {
				liveVotersAfter++
			}
		}
		if liveVotersBefore <= opts.MaxVoters && liveVotersAfter < liveVotersBefore {
			t.Logf("seed %d: live voters %d -> %d: %v", seed, liveVotersBefore, liveVotersAfter, render(plan))
			return nil, false
		}
		voters := 0
		for _, s := range after {
			if s.Voter {
				voters++
			}
		}
		before := 0
		for _, s := range servers {
			if s.Voter {
				before++
			}
		}
		if voters > max(opts.MaxVoters, before) {
			t.Logf("seed %d: %d voters", seed, voters)
			return nil, false
		}
		return after, true
	}
}

// committable reports whether every configuration the plan passes through
// keeps a majority of the voters that were live before it, when the first
// did; and if not, the change after which it does not. Gossip can say a
// node is alive after it died, so a promoted node's vote is not counted:
// Raft commits each change, and elects, with the newest configuration, so a
// step without a live majority stops the cluster for good. A single voter
// is the exception: its first promotion needs the promoted node's vote,
// whatever the order.
func committable(servers []Server, plan []Change) (string, bool) {
	trusted := map[string]bool{}
	voters := 0
	for _, s := range servers {
		trusted[s.ID] = s.Alive && s.Voter
		if s.Voter {
			voters++
		}
	}
	ok := func(ss []Server) bool {
		voters, live := 0, 0
		for _, s := range ss {
			if s.Voter {
				voters++
				if trusted[s.ID] {
					live++
				}
			}
		}
		return 2*live > voters
	}
	if voters < 2 || !ok(servers) {
		return "", true
	}
	for i := range plan {
		if !ok(apply(servers, plan[:i+1])) {
			return plan[i].Kind.String() + " " + plan[i].ID, false
		}
	}
	return "", true
}

func TestBootstrap(t *testing.T) {
	p := func(id string, expect int, hasState bool) Peer {
		return Peer{ID: id, RaftAddr: id + ":1", Expect: expect, HasState: hasState}
	}
	tests := []struct {
		name    string
		self    Peer
		expect  int
		peers   []Peer
		want    []string
		why     string
		wantErr string
	}{
		{"expect zero never bootstraps", p("a", 0, false), 0, []Peer{p("a", 0, false), p("b", 0, false)}, nil, "joining only", ""},
		{"waits for expect", p("a", 3, false), 3, []Peer{p("a", 3, false), p("b", 3, false)}, nil, "waiting for 3 nodes started with bootstrap_expect 3, 2 seen", ""},
		{"bootstraps with all", p("b", 3, false), 3, []Peer{p("c", 3, false), p("a", 3, false), p("b", 3, false)}, []string{"a", "b", "c"}, "", ""},
		{"own state: never twice", p("a", 3, true), 3, []Peer{p("a", 3, true), p("b", 3, false), p("c", 3, false)}, nil, "already has Raft state", ""},
		{"peer in a cluster: wait to be added", p("d", 3, false), 3, []Peer{p("a", 3, true), p("b", 3, true), p("d", 3, false)}, nil, "already belongs to a cluster", ""},
		{"mismatched expect refuses", p("a", 3, false), 3, []Peer{p("a", 3, false), p("b", 5, false), p("c", 3, false)}, nil, "", "node b was started with bootstrap_expect 5"},
		{"mismatch refuses even before enough nodes", p("a", 2, false), 2, []Peer{p("a", 2, false)}, nil, "waiting", ""},
		{"two nodes, different expect", p("a", 2, false), 2, []Peer{p("a", 2, false), p("b", 3, false)}, nil, "", "bootstrap_expect 3"},
		{"join-only peers do not count", p("a", 2, false), 2, []Peer{p("a", 2, false), p("b", 0, false), p("c", 0, false)}, nil, "waiting for 2 nodes started with bootstrap_expect 2, 1 seen", ""},
		{"servers among joiners", p("c", 3, false), 3, []Peer{p("a", 0, false), p("c", 3, false), p("b", 0, false), p("e", 3, false), p("d", 3, false)}, []string{"c", "d", "e"}, "", ""},
		{"a joiner in a cluster: wait to be added", p("a", 2, false), 2, []Peer{p("a", 2, false), p("b", 2, false), p("c", 0, true)}, nil, "node c already belongs to a cluster", ""},
		{"more than expect: the lowest names", p("b", 3, false), 3, []Peer{p("d", 3, false), p("c", 3, false), p("a", 3, false), p("b", 3, false)}, []string{"a", "b", "c"}, "", ""},
		{"more than expect: not among them waits", p("d", 3, false), 3, []Peer{p("d", 3, false), p("c", 3, false), p("a", 3, false), p("b", 3, false)}, nil, "not among the first 3", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why, err := Bootstrap(tt.self, tt.expect, tt.peers)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range got {
				ids = append(ids, s.ID)
			}
			if !reflect.DeepEqual(ids, tt.want) {
				t.Fatalf("servers = %v, want %v", ids, tt.want)
			}
			if !strings.Contains(why, tt.why) {
				t.Fatalf("why = %q, want %q", why, tt.why)
			}
		})
	}
}

// Voters that losing one site would strand are swapped, one pair a round,
// until no site holds half the votes; a node of weight 0 never votes.
func TestPlanSiteSafety(t *testing.T) {
	s := func(id, site string, voter bool) Server {
		x := live(id, voter)
		x.Site, x.Witness = site, site == "w"
		return x
	}
	three := Options{MaxVoters: 3, Stabilization: opts.Stabilization, ReapAfter: opts.ReapAfter}
	tests := []struct {
		name    string
		opt     Options
		servers []Server
		rounds  []string
	}{
		{"all voters in one site", three,
			[]Server{s("a1", "a", true), s("a2", "a", true), s("a3", "a", true), s("b1", "b", false), s("w1", "w", false)},
			[]string{"promote w1, demote a3", "promote b1, demote a2", ""}},
		{"2 + 2 + 1", opts,
			[]Server{s("a1", "a", true), s("a2", "a", true), s("a3", "a", true), s("b1", "b", true), s("b2", "b", false), s("w1", "w", false)},
			[]string{"promote w1", "promote b2, demote a3", ""}},
		{"no safe set: one site has all but one node", three,
			[]Server{s("a1", "a", true), s("a2", "a", true), s("a3", "a", true), s("b1", "b", false)},
			[]string{""}},
		{"weight 0 never votes", opts,
			func() []Server {
				b1, w1 := s("b1", "b", true), s("w1", "w", false)
				b1.NoVote, w1.NoVote = true, true
				return []Server{s("a1", "a", true), s("a2", "a", true), b1, s("b2", "b", true), w1}
			}(),
			// Without b1 and w1, three voters stay: a1, a2 and b2.
			[]string{"demote b1", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servers := tt.servers
			for i, want := range tt.rounds {
				plan := Plan(servers, "a1", tt.opt, now)
				if got := render(plan); got != want {
					t.Fatalf("round %d: plan = %q, want %q", i+1, got, want)
				}
				servers = apply(servers, plan)
			}
		})
	}
}

// TestPlanSiteSafe checks the plan against a naive reference on random
// clusters of live, stable nodes over two to four sites: once the plan
// has settled, losing any one site leaves a majority of the voters
// exactly when some set of as many voters (the leader among them, weight
// 0 nodes not) would, found by trying every subset.
func TestPlanSiteSafe(t *testing.T) {
	f := func(seed int64) bool {
		r := rand.New(rand.NewSource(seed))
		n := 3 + r.Intn(7)
		sites := 2 + r.Intn(3)
		o := Options{MaxVoters: []int{3, 5, 7}[r.Intn(3)], Stabilization: opts.Stabilization, ReapAfter: opts.ReapAfter}
		var servers []Server
		for i := 0; i < n; i++ {
			s := live(fmt.Sprintf("n%d", i), r.Intn(2) == 0)
			s.Site = fmt.Sprintf("s%d", r.Intn(sites))
			s.NoVote = i > 0 && r.Intn(6) == 0
			servers = append(servers, s)
		}
		servers[0].Voter = true // the leader
		for round := 0; round < 2*n; round++ {
			plan := Plan(servers, "n0", o, now)
			if len(plan) == 0 {
				break
			}
			servers = apply(servers, plan)
		}
		if again := Plan(servers, "n0", o, now); len(again) != 0 {
			t.Logf("seed %d: not settled: %s", seed, render(again))
			return false
		}
		var voters, eligible []Server
		for _, s := range servers {
			if s.Voter {
				voters = append(voters, s)
			}
			if !s.NoVote || s.ID == "n0" {
				eligible = append(eligible, s)
			}
		}
		want := anySafeSet(eligible, len(voters))
		if got := siteSafe(voters); got != want {
			t.Logf("seed %d: voters %v safe=%v, but a safe set of %d exists=%v (eligible %v)", seed, ids(voters), got, len(voters), want, ids(eligible))
			return false
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 3000}); err != nil {
		t.Fatal(err)
	}
}

// anySafeSet tries every set of k of the servers that holds servers[0].
func anySafeSet(servers []Server, k int) bool {
	for mask := 1; mask < 1<<len(servers); mask += 2 {
		var set []Server
		for i, s := range servers {
			if mask&(1<<i) != 0 {
				set = append(set, s)
			}
		}
		if len(set) == k && siteSafe(set) {
			return true
		}
	}
	return false
}

func ids(servers []Server) []string {
	var out []string
	for _, s := range servers {
		out = append(out, s.ID+"@"+s.Site)
	}
	return out
}

// MaxMembers keeps the nodes beyond it out of the configuration, adds one
// when a member dies (a replacement catches up before the dead one is
// reaped, so the standby for the next promotion is never missing), spreads
// its adds over sites and always takes a witness.
func TestPlanMaxMembers(t *testing.T) {
	capped := opts
	capped.MaxMembers = 5
	out := func(id, site string) Server {
		return Server{ID: id, Site: site, Alive: true, Since: now.Add(-time.Minute)}
	}
	at := func(s Server, site string) Server { s.Site = site; return s }
	five := []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", true), live("n5", true)}
	tests := []struct {
		name    string
		servers []Server
		want    string
	}{
		{"full: the sixth stays out", append(five[:5:5], out("n6", "a")), ""},
		{"room for two of three", []Server{live("n1", true), live("n2", true), live("n3", true), out("n4", "a"), out("n5", "a"), out("n6", "a")}, "add n4, add n5"},
		{"a dead member makes room", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", false), deadFor("n5", false, time.Minute), out("n6", "a"), out("n7", "a")}, "add n6"},
		{"the emptier site first", []Server{at(live("n1", true), "a"), at(live("n2", true), "a"), at(live("n3", true), "b"), at(live("n4", false), "a"), out("n5", "a"), out("n6", "b")}, "add n6"},
		{"a witness even when full", append(five[:5:5], Server{ID: "w", Site: "c", Witness: true, Alive: true, Since: now.Add(-time.Minute)}), "add w"},
		{"weight 0 last", []Server{live("n1", true), live("n2", true), live("n3", true), live("n4", false), {ID: "n5", Site: "a", NoVote: true, Alive: true, Since: now.Add(-time.Minute)}, out("n6", "a")}, "add n6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := render(Plan(tt.servers, "n1", capped, now)); got != tt.want {
				t.Fatalf("plan = %q, want %q", got, tt.want)
			}
		})
	}
}

// However the servers' views of the nodes started at once differ, no two
// of them bootstrap different configurations: three servers with
// bootstrap_expect 3 among five joiners, every view a server may have of
// them (any subset that includes itself) tried.
func TestBootstrapOneClusterAmongJoiners(t *testing.T) {
	var all []Peer
	for i := range 8 {
		expect := 0
		if i%3 == 1 { // n1, n4, n7: the servers, not the lowest names
			expect = 3
		}
		all = append(all, Peer{ID: fmt.Sprintf("n%d", i), RaftAddr: fmt.Sprintf("n%d:1", i), Expect: expect})
	}
	var formed []string
	for _, self := range all {
		if self.Expect == 0 {
			continue
		}
		for mask := range 1 << len(all) {
			var view []Peer
			for i, p := range all {
				if mask&(1<<i) != 0 || p.ID == self.ID {
					view = append(view, p)
				}
			}
			servers, _, err := Bootstrap(self, 3, view)
			if err != nil {
				t.Fatal(err)
			}
			if servers == nil {
				continue
			}
			var ids []string
			for _, s := range servers {
				ids = append(ids, s.ID)
			}
			if formed == nil {
				formed = ids
			} else if !reflect.DeepEqual(ids, formed) {
				t.Fatalf("%s seeing %d nodes bootstraps %v; another view bootstrapped %v", self.ID, len(view), ids, formed)
			}
		}
	}
	if !reflect.DeepEqual(formed, []string{"n1", "n4", "n7"}) {
		t.Fatalf("bootstrapped %v, want the three servers", formed)
	}
}
