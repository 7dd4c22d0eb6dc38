package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestParseAntiAffinity(t *testing.T) {
	tests := []struct {
		in      []string
		want    []*havenv1.AntiAffinity
		wantErr string
	}{
		{in: nil},
		{in: []string{"sql"}, want: []*havenv1.AntiAffinity{{Class: "sql"}}},
		{in: []string{"sql:hard"}, want: []*havenv1.AntiAffinity{{Class: "sql", Hard: true}}},
		{in: []string{"sql:sites:hard", "web:soft"}, want: []*havenv1.AntiAffinity{{Class: "sql", Hard: true, AcrossSites: true}, {Class: "web"}}},
		{in: []string{"dc:across-sites"}, want: []*havenv1.AntiAffinity{{Class: "dc", AcrossSites: true}}},
		{in: []string{":hard"}, wantErr: "the class name comes first"},
		{in: []string{"sql:strict"}, wantErr: `unknown modifier "strict"`},
		{in: []string{"sql:hard:soft"}, wantErr: "hard and soft at once"},
		{in: []string{"sql", "sql:hard"}, wantErr: `class "sql" given twice`},
	}
	for _, tt := range tests {
		got, err := parseAntiAffinity(tt.in)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseAntiAffinity(%q) = %v, want an error with %q", tt.in, err, tt.wantErr)
			}
		case err != nil:
			t.Errorf("parseAntiAffinity(%q): %v", tt.in, err)
		case len(got) != len(tt.want):
			t.Errorf("parseAntiAffinity(%q) = %v, want %v", tt.in, got, tt.want)
		default:
			for i := range got {
				if !proto.Equal(got[i], tt.want[i]) {
					t.Errorf("parseAntiAffinity(%q)[%d] = %v, want %v", tt.in, i, got[i], tt.want[i])
				}
				if back := antiAffinityWord(got[i]); !strings.HasPrefix(back, got[i].GetClass()) {
					t.Errorf("antiAffinityWord(%v) = %q", got[i], back)
				}
			}
		}
	}
	if w := antiAffinityWord(&havenv1.AntiAffinity{Class: "sql", Hard: true, AcrossSites: true}); w != "sql:hard:sites" {
		t.Errorf("antiAffinityWord = %q, want the flag that sets it", w)
	}
}

func TestParseCPU(t *testing.T) {
	for in, want := range map[string]int64{"2": 2000, "0.5": 500, "1.25": 1250, "500m": 500, " 3 ": 3000, "0": 0} {
		if got, err := parseCPU(in); err != nil || got != want {
			t.Errorf("parseCPU(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "two", "-1", "1.5m", "-5m", "NaN", "Inf", "1e300"} {
		if got, err := parseCPU(in); err == nil {
			t.Errorf("parseCPU(%q) = %d, want an error", in, got)
		}
	}
}

func TestWriteReserve(t *testing.T) {
	var b bytes.Buffer
	ok := &havenv1.GetReserveResponse{
		K: 1, Enforced: true, CanSustain: true, Method: havenv1.ReserveMethod_RESERVE_METHOD_ENUMERATED,
		WorstFailure: []string{"n2"}, Headroom: &havenv1.Capacity{CpuMillis: 12000, MemoryBytes: 3 << 30},
		FailureSetsChecked: 3, FailureSetsPruned: 1, Leader: "n1", CpuOvercommit: 4, ConfiguredK: 1,
	}
	if err := writeReserve(&b, ok); err != nil {
		t.Fatal(err)
	}
	want := `Can sustain 1 failure(s):  yes
Method:                    enumerated (every failure set has a restart plan)
Failure sets:              3 checked, 1 pruned (displace no HA group), 0 broken
Worst failure:             n2
Breach:                    -
Headroom:                  cpu 12, memory 3GiB (least left after any failure of up to 1 node(s) and its restarts)
Admission:                 enforced: groups that would break it are refused (placement.reserve 1)
CPU overcommit:            4x
Leader:                    n1
`
	if got := b.String(); got != want {
		t.Errorf("reserve table:\n%s\nwant:\n%s", got, want)
	}

	b.Reset()
	broken := proto.Clone(ok).(*havenv1.GetReserveResponse)
	broken.CanSustain, broken.FailureSetsBroken = false, 2
	broken.Headroom.MemoryBytes = -(512 << 20)
	broken.Breach = &havenv1.ReserveBreach{FailedNodes: []string{"n2"}, Group: "db", Reason: "memory: needs 4.0 GiB, at most 1.0 GiB free (node n3) on n1,n3"}
	if err := writeReserve(&b, broken); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Can sustain 1 failure(s):  no",
		`Breach:                    if n2 fails, group "db" cannot restart: memory: needs 4.0 GiB`,
		"memory -512MiB",
		"2 broken",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("broken reserve table lacks %q:\n%s", want, b.String())
		}
	}

	b.Reset()
	capped := proto.Clone(ok).(*havenv1.GetReserveResponse)
	capped.K, capped.Enforced, capped.ConfiguredK = 0, false, 1
	if err := writeReserve(&b, capped); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "placement.reserve is 1, but too few nodes host groups to keep more than 0") {
		t.Errorf("capped reserve:\n%s", b.String())
	}
	if got := breachText(&havenv1.ReserveBreach{FailedNodes: []string{"a", "b"}, Group: "g", Reason: "r"}); got != `if a,b fail, group "g" cannot restart: r` {
		t.Errorf("breach of two: %q", got)
	}
	if got := breachText(&havenv1.ReserveBreach{Group: "g", Reason: "r"}); !strings.HasPrefix(got, "with no further failure") {
		t.Errorf("breach of none: %q", got)
	}
}

// The site-loss reserve: kept, it is named with the admission and a
// site's loss reads as that site; asked for but not kept, it says why.
func TestWriteReserveSites(t *testing.T) {
	var b bytes.Buffer
	r := &havenv1.GetReserveResponse{
		K: 1, Enforced: true, CanSustain: false, Method: havenv1.ReserveMethod_RESERVE_METHOD_ENUMERATED,
		WorstFailure: []string{"a1"}, Headroom: &havenv1.Capacity{CpuMillis: 12000, MemoryBytes: 3 << 30},
		FailureSetsChecked: 6, FailureSetsBroken: 1, Leader: "a1", CpuOvercommit: 4, ConfiguredK: 1,
		ReserveSites: 1, ConfiguredReserveSites: 1,
		Breach: &havenv1.ReserveBreach{FailedNodes: []string{"b1", "b2"}, Site: "b", Group: "db", Reason: "memory"},
	}
	if err := writeReserve(&b, r); err != nil {
		t.Fatal(err)
	}
	want := `Can sustain 1 failure(s):  no
Method:                    enumerated (every failure set has a restart plan)
Failure sets:              6 checked, 0 pruned (displace no HA group), 1 broken
Site loss:                 checked too: each site that hosts groups is a failure set (placement.reserve_sites 1)
Worst failure:             a1
Breach:                    if site b fails (b1,b2), group "db" cannot restart: memory
Headroom:                  cpu 12, memory 3GiB (least left after any failure of up to 1 node(s) and its restarts)
Admission:                 enforced: groups that would break it are refused (placement.reserve 1, placement.reserve_sites 1)
CPU overcommit:            4x
Leader:                    a1
`
	if got := b.String(); got != want {
		t.Errorf("reserve table:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	r.ReserveSites, r.Breach, r.CanSustain = 0, nil, true
	if err := writeReserve(&b, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Site loss:                 not kept: placement.reserve_sites is 1, but fewer than two sites host groups\n") {
		t.Errorf("reserve_sites not kept:\n%s", b.String())
	}
	b.Reset()
	r.K, r.ConfiguredK, r.ReserveSites = 0, 0, 1
	if err := writeReserve(&b, r); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.String(), "Can sustain the loss of any one site:  yes\n") {
		t.Errorf("site-loss reserve alone:\n%s", b.String())
	}
}

func TestWriteRanked(t *testing.T) {
	var b bytes.Buffer
	resp := &havenv1.RankNodesResponse{ReserveK: 1, Nodes: []*havenv1.RankedNode{
		{Node: "n3", Score: 96, Stars: 5, Feasible: true, KeepsReserve: true, Why: []string{"in preferred site b", "memory 25% -> 38% of 64.0 GiB"}},
		{Node: "n2", Score: 71, Stars: 0, Feasible: true, Why: []string{"breaks reserve 1: if n2 fails, group \"db\" cannot restart: memory"}},
		{Node: "n1", Why: []string{"hard anti-affinity: class sql: runs sql1"}},
	}}
	if err := writeRanked(&b, resp); err != nil {
		t.Fatal(err)
	}
	want := `NODE  SCORE  STARS  RESERVE  WHY
n3    96     ★★★★★  keeps    in preferred site b; memory 25% -> 38% of 64.0 GiB
n2    71     ☆☆☆☆☆  breaks   breaks reserve 1: if n2 fails, group "db" cannot restart: memory
n1    -      -      -        hard anti-affinity: class sql: runs sql1

RESERVE: whether the cluster still sustains 1 node failure(s) with the group on that node.
`
	if got := b.String(); got != want {
		t.Errorf("ranked table:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteBalance(t *testing.T) {
	var b bytes.Buffer
	resp := &havenv1.BalanceResponse{
		Mode: havenv1.BalancerMode_BALANCER_MODE_AUTOMATIC, ImbalanceBefore: 0.2843, ImbalanceAfter: 0.0924, Threshold: 0.05, ReserveK: 1,
		Moves: []*havenv1.BalanceMove{{Group: "web1", From: "n2", To: "n4", Gain: 0.2891, CostBytes: 24 << 30, CostSeconds: 20.6, Cost: 0.0103,
			Why: "web1: n2 (cpu 12%, mem 75%) -> n4 (cpu 0%, mem 0%); reserve 1 holds"}},
		Stopped:  "no move lowers the spread further",
		Notes:    []string{"automatic mode: 1 of the 1 moves started (live, at most 2 at once, none while another move is in flight); see haven ops"},
		Executed: true,
	}
	if err := writeBalance(&b, resp); err != nil {
		t.Fatal(err)
	}
	want := `Balancer:   automatic
Imbalance:  0.2843 -> 0.0924 (threshold 0.0500)
Reserve:    every move keeps the reserve of 1 failure(s)
Moves:      1

GROUP  FROM  TO  GAIN    MIGRATION        COST
web1   n2    n4  0.2891  24GiB in ~20.6s  0.0103

Why:
  web1: n2 (cpu 12%, mem 75%) -> n4 (cpu 0%, mem 0%); reserve 1 holds

Stopped: no move lowers the spread further

Notes:
  automatic mode: 1 of the 1 moves started (live, at most 2 at once, none while another move is in flight); see haven ops
`
	if got := b.String(); got != want {
		t.Errorf("balance:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	power := &havenv1.BalanceResponse{Mode: havenv1.BalancerMode_BALANCER_MODE_RECOMMEND, PowerOff: []string{"n3", "n4"}}
	if err := writeBalance(&b, power); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Could be powered off: n3, n4") || strings.Contains(b.String(), "Nothing was moved") {
		t.Errorf("power proposal:\n%s", b.String())
	}
	b.Reset()
	recommend := &havenv1.BalanceResponse{Mode: havenv1.BalancerMode_BALANCER_MODE_RECOMMEND, Moves: resp.GetMoves()}
	if err := writeBalance(&b, recommend); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Nothing was moved") {
		t.Errorf("power proposal:\n%s", b.String())
	}
}

func TestPlacementCommandMistakes(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"place", "--cpu", "two"}, "--cpu"},
		{[]string{"place", "--mem", "lots"}, "--mem"},
		{[]string{"place", "--anti-affinity", "sql:strict"}, "--anti-affinity"},
		{[]string{"place", "--priority", "urgent"}, "--priority"},
		{[]string{"place", "extra"}, "no arguments"},
		{[]string{"reserve", "x"}, "takes no arguments"},
		{[]string{"balance", "now"}, "takes no arguments"},
		{[]string{"group", "create", "web", "--anti-affinity", ":hard"}, "--anti-affinity"},
		{[]string{"group", "create", "-f", "x.yaml", "--preferred-site", "b"}, "--preferred-site cannot be combined with -f"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			root := newRootCmd(func(string) string { return "" })
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(tt.args)
			err := root.Execute()
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want a usage error containing %q", err, tt.want)
			}
		})
	}
}
