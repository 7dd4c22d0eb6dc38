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
			"promote n6, demote n5"},
		{"dead voter kept when its vote makes the count odd", []Server{live("n1", true), live("n2", true), deadFor("n3", true, time.Minute)}, ""},
		{"two dead of five demoted: three live voters", []Server{live("n1", true), live("n2", true), live("n3", true), deadFor("n4", true, time.Minute), deadFor("n5", true, time.Minute)},
			"demote n4, demote n5"},
		{"freshly dead voter keeps its vote", []Server{live("n1", true), live("n2", true), live("n3", true), deadFor("n4", true, time.Second), deadFor("n5", true, time.Minute), deadFor("n6", true, time.Minute)},
			"demote n6"},
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
// the leader, never exceeds MaxVoters, never demotes a live voter when
// within MaxVoters, leaves an odd number of voters whenever it can, and is
// stable: planning again right after applying proposes nothing new.
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
		for round := 0; round < 3; round++ {
			next, ok := checkRound(t, seed, servers)
			if !ok {
				return false
			}
			servers = next
		}
		if again := Plan(servers, "n0", opts, now); len(again) != 0 {
			t.Logf("seed %d: no fixpoint after 3 rounds: %v", seed, render(again))
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
			if c.Kind == Demote && liveVotersBefore <= opts.MaxVoters {
				for _, s := range servers {
					if s.ID == c.ID && s.Alive {
						t.Logf("seed %d: demotes live voter %s", seed, c.ID)
						return nil, false
					}
				}
			}
		}
		after := apply(servers, plan)
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
		{"waits for expect", p("a", 3, false), 3, []Peer{p("a", 3, false), p("b", 3, false)}, nil, "waiting for 3 nodes, 2 seen", ""},
		{"bootstraps with all", p("b", 3, false), 3, []Peer{p("c", 3, false), p("a", 3, false), p("b", 3, false)}, []string{"a", "b", "c"}, "", ""},
		{"own state: never twice", p("a", 3, true), 3, []Peer{p("a", 3, true), p("b", 3, false), p("c", 3, false)}, nil, "already has Raft state", ""},
		{"peer in a cluster: wait to be added", p("d", 3, false), 3, []Peer{p("a", 3, true), p("b", 3, true), p("d", 3, false)}, nil, "already belongs to a cluster", ""},
		{"mismatched expect refuses", p("a", 3, false), 3, []Peer{p("a", 3, false), p("b", 5, false), p("c", 3, false)}, nil, "", "node b was started with bootstrap_expect 5"},
		{"mismatch refuses even before enough nodes", p("a", 2, false), 2, []Peer{p("a", 2, false)}, nil, "waiting", ""},
		{"two nodes, different expect", p("a", 2, false), 2, []Peer{p("a", 2, false), p("b", 3, false)}, nil, "", "bootstrap_expect 3"},
		{"join-only peers count", p("a", 2, false), 2, []Peer{p("a", 2, false), p("b", 0, false)}, []string{"a", "b"}, "", ""},
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
