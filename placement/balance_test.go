package placement

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestBalance(t *testing.T) {
	// Four 4 GiB groups all on n1; n2 empty.
	lopsided := cluster(nodes(2, 16), "a@n1:4", "b@n1:4", "c@n1:4", "d@n1:4")
	// n1 runs BIG, which can only restart on n3 (empty) if n1 fails;
	// n2 is the crowded one. Balancing n2 onto n3 is fine once, but a
	// second move would leave no node with 12 GiB for BIG.
	spare := cluster([]Node{node("n1", "A", 64000, 16), node("n2", "A", 64000, 16), node("n3", "A", 64000, 16)},
		"BIG@n1:12", "s1@n2:4", "s2@n2:4", "s3@n2:4", "s4@n2:2")
	tests := []struct {
		name     string
		st       State
		opts     BalanceOptions
		hist     History
		moves    []Move
		execute  bool
		stopped  string
		notes    string
		whyHas   string
		powerOff []string
	}{
		{
			name: "off proposes nothing", st: lopsided,
			opts:    BalanceOptions{Mode: ModeOff},
			stopped: "balancer is off",
		},
		{
			name: "two moves even it out", st: lopsided,
			opts:    BalanceOptions{Mode: ModeAutomatic, Now: t0},
			moves:   []Move{{"a", "n1", "n2"}, {"b", "n1", "n2"}},
			execute: true,
			stopped: "imbalance 0.0000 is at or below the threshold 0.0500",
			whyHas:  "a: n1 (cpu 6%, mem 100%) -> n2 (cpu 0%, mem 0%); imbalance 0.5010 -> 0.2505 (spread gain 0.3765); moves 4.0 GiB in ~3.4s (dirty 0 B/s), cost 0.0017",
		},
		{
			name: "recommend and dry run do not execute", st: lopsided,
			opts:  BalanceOptions{Mode: ModeAutomatic, Now: t0, DryRun: true},
			moves: []Move{{"a", "n1", "n2"}, {"b", "n1", "n2"}}, stopped: "at or below the threshold",
		},
		{
			name: "groups moved within the hold-off stay", st: lopsided,
			opts:    BalanceOptions{Mode: ModeRecommend, Now: t0},
			hist:    History{"a": {At: t0.Add(-time.Minute)}, "b": {At: t0.Add(-59 * time.Minute)}, "c": {At: t0.Add(-2 * time.Hour)}},
			moves:   []Move{{"c", "n1", "n2"}, {"d", "n1", "n2"}},
			stopped: "at or below the threshold",
		},
		{
			name: "hold-off can leave the imbalance", st: lopsided,
			opts:    BalanceOptions{Mode: ModeRecommend, Now: t0},
			hist:    History{"a": {At: t0}, "b": {At: t0}, "c": {At: t0}},
			moves:   []Move{{"d", "n1", "n2"}},
			stopped: "no move lowers the spread",
			notes:   "held off (moved within 1h0m0s): a,b,c",
		},
		{
			name: "a guest dirtying memory too fast is not moved live",
			st: edit(lopsided, func(s *State) {
				for i := range s.Groups {
					s.Groups[i].DirtyRateBytesPerSec = 1_100_000_000
				}
			}),
			opts:    BalanceOptions{Mode: ModeRecommend},
			stopped: "no move lowers the spread",
			notes:   "not moved live (dirty rate too high for pre-copy): a,b,c,d",
		},
		{
			name: "cost outweighs gain", st: lopsided,
			opts:    BalanceOptions{Mode: ModeRecommend, CostPerSecond: 1},
			stopped: "no move lowers the spread",
		},
		{
			name: "below the threshold nothing moves", st: lopsided,
			opts:    BalanceOptions{Mode: ModeRecommend, Threshold: 0.9},
			stopped: "imbalance 0.5010 is at or below the threshold 0.9000",
		},
		{
			name: "possible owners pin a group",
			st: edit(lopsided, func(s *State) {
				for i := range s.Groups {
					s.Groups[i].PossibleOwners = []string{"n1"}
				}
			}),
			opts:    BalanceOptions{Mode: ModeRecommend},
			stopped: "no move lowers the spread",
		},
		{
			name: "a group on its preferred owner stays; the others move",
			st: edit(lopsided, func(s *State) {
				s.Groups[0].PreferredOwners = []string{"n1"}
			}),
			opts:    BalanceOptions{Mode: ModeRecommend},
			moves:   []Move{{"b", "n1", "n2"}, {"c", "n1", "n2"}},
			stopped: "at or below the threshold",
		},
		{
			name: "without a reserve both moves are taken", st: spare,
			opts:    BalanceOptions{Mode: ModeRecommend},
			moves:   []Move{{"s1", "n2", "n3"}, {"s4", "n2", "n3"}},
			stopped: "no move lowers the spread",
		},
		{
			name: "no move breaks the reserve", st: spare,
			opts:    BalanceOptions{Mode: ModeRecommend, Reserve: 1},
			moves:   []Move{{"s1", "n2", "n3"}},
			stopped: "would each break reserve 1",
			notes:   "rejected because they would break reserve 1",
			whyHas:  "reserve 1 holds",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Balance(tc.st, tc.opts, tc.hist)
			var got []Move
			for _, m := range p.Moves {
				got = append(got, m.Move)
				if m.Why == "" || m.Bytes <= 0 || m.Gain <= 0 {
					t.Errorf("move without explanation or cost: %+v", m)
				}
			}
			if !reflect.DeepEqual(got, tc.moves) {
				t.Errorf("moves %v, want %v\nstopped: %s\nnotes: %v", got, tc.moves, p.Stopped, p.Notes)
			}
			if p.Execute != tc.execute {
				t.Errorf("execute %v, want %v", p.Execute, tc.execute)
			}
			if !strings.Contains(p.Stopped, tc.stopped) {
				t.Errorf("stopped %q, want %q", p.Stopped, tc.stopped)
			}
			if notes := strings.Join(p.Notes, "\n"); !strings.Contains(notes, tc.notes) {
				t.Errorf("notes %q, want %q", notes, tc.notes)
			}
			if tc.whyHas != "" && (len(p.Moves) == 0 || !strings.Contains(p.Moves[0].Why, tc.whyHas)) {
				t.Errorf("why %+v, want %q", p.Moves, tc.whyHas)
			}
			if len(p.Moves) > 0 && p.After >= p.Before {
				t.Errorf("imbalance %.4f -> %.4f", p.Before, p.After)
			}
		})
	}
}

func TestBalancePower(t *testing.T) {
	// Four 16 GiB nodes, one 2 GiB group each.
	light := cluster(nodes(4, 16), "a@n1:2", "b@n2:2", "c@n3:2", "d@n4:2")
	// Three 16 GiB nodes, one 6 GiB group each: emptying one leaves two
	// nodes with 12 and 6 GiB, and losing the first leaves 12 GiB to
	// restart on 10 free.
	heavy := cluster(nodes(3, 16), "a@n1:6", "b@n2:6", "c@n3:6")
	tests := []struct {
		name     string
		st       State
		k        int
		powerOff []string
		moves    int
		notes    string
	}{
		{"reserve 0 keeps one node", light, 0, []string{"n1", "n3", "n4"}, 3, "keeping the last 1 node(s) on"},
		{"reserve 1 keeps two", light, 1, []string{"n1", "n3"}, 2, "keeping the last 2 node(s) on (reserve 1 needs 2)"},
		{"reserve 2 keeps three", light, 2, []string{"n1"}, 1, "reserve 2 needs 3"},
		{"a node the reserve needs stays on", heavy, 1, nil, 0, "powering it off breaks reserve 1"},
		{"without the reserve it can go", heavy, 0, []string{"n1"}, 1, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Balance(tc.st, BalanceOptions{Mode: ModeRecommend, Power: true, Reserve: tc.k}, nil)
			if !reflect.DeepEqual(p.PowerOff, tc.powerOff) || len(p.Moves) != tc.moves {
				t.Fatalf("power off %v with %d moves, want %v with %d\n%v\n%v", p.PowerOff, len(p.Moves), tc.powerOff, tc.moves, p.Moves, p.Notes)
			}
			if notes := strings.Join(p.Notes, "\n"); !strings.Contains(notes, tc.notes) {
				t.Errorf("notes %q, want %q", notes, tc.notes)
			}
			for _, m := range p.Moves {
				if !strings.Contains(m.Why, "to power it off") {
					t.Errorf("why %q", m.Why)
				}
			}
		})
	}
}
