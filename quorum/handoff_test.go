package quorum

import "testing"

func TestHandOff(t *testing.T) {
	srv := func(id, site string, witness bool) Server {
		s := live(id, true)
		s.Site, s.Witness = site, witness
		return s
	}
	base := []Server{srv("a1", "a", false), srv("a2", "a", false), srv("b1", "b", false), srv("b2", "b", false), srv("w1", "w", true)}
	noVote := func(ss []Server, id string) []Server {
		out := append([]Server(nil), ss...)
		for i := range out {
			if out[i].ID == id {
				out[i].NoVote = true
			}
		}
		return out
	}
	dead := func(ss []Server, ids ...string) []Server {
		out := append([]Server(nil), ss...)
		for i := range out {
			for _, id := range ids {
				if out[i].ID == id {
					out[i].Alive = false
				}
			}
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		servers []Server
		leader  string
		groups  map[string]int
		want    string
	}{
		{"a data node keeps leading", base, "a1", map[string]int{"b": 9}, ""},
		{"the witness hands off to the site with the most groups", base, "w1", map[string]int{"a": 3, "b": 5}, "b1"},
		{"no groups anywhere: by ID", base, "w1", nil, "a1"},
		{"only live voters", dead(base, "b1"), "w1", map[string]int{"b": 5}, "b2"},
		{"a whole site dead", dead(base, "b1", "b2"), "w1", map[string]int{"b": 5}, "a1"},
		{"nobody to hand off to", dead(base, "a1", "a2", "b1", "b2"), "w1", nil, ""},
		{"not to a non-voter", func() []Server {
			ss := append([]Server(nil), base...)
			ss[0].Voter = false
			return ss
		}(), "w1", map[string]int{"a": 5}, "a2"},
		{"a leader of weight 0 hands off", noVote(base, "a1"), "a1", nil, "a2"},
		{"not to a node of weight 0", noVote(base, "b1"), "w1", map[string]int{"b": 5}, "b2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := HandOff(tc.servers, tc.leader, tc.groups)
			if got != tc.want || ok != (tc.want != "") {
				t.Fatalf("HandOff = %q, %v; want %q", got, ok, tc.want)
			}
		})
	}
}
