package heartbeat

import "testing"

func TestTransition(t *testing.T) {
	alive := &Member{State: StateAlive, Meta: Meta{Version: "1"}}
	dead := &Member{State: StateDead, Meta: Meta{Version: "1"}}
	left := &Member{State: StateLeft, Meta: Meta{Version: "1"}}
	tests := []struct {
		name   string
		prev   *Member
		cur    Member
		want   EventType
		wantOK bool
	}{
		{"first sighting", nil, *alive, EventJoin, true},
		{"first sighting already gone", nil, *dead, 0, false},
		{"same again", alive, *alive, 0, false},
		{"meta changed", alive, Member{State: StateAlive, Meta: Meta{Version: "2"}}, EventUpdate, true},
		{"failed", alive, *dead, EventFailed, true},
		{"left", alive, *left, EventLeave, true},
		{"back after failing", dead, *alive, EventJoin, true},
		{"back after leaving", left, *alive, EventJoin, true},
		{"dead then left", dead, *left, 0, false},
		{"left then dead", left, *dead, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := transition(tt.prev, tt.cur)
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Fatalf("transition = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestStateRule(t *testing.T) {
	lanDead := view{seen: true, state: StateDead, meta: Meta{Site: "A"}, addr: "lan"}
	wanAlive := view{seen: true, state: StateAlive, meta: Meta{Site: "A"}, addr: "wan"}
	tests := []struct {
		name     string
		lan, wan view
		want     State
	}{
		{"only in WAN", view{}, wanAlive, StateAlive},
		{"LAN wins once joined", lanDead, wanAlive, StateDead},
		{"only in LAN", lanDead, view{}, StateDead},
		{"moved to another site", lanDead, view{seen: true, state: StateAlive, meta: Meta{Site: "B"}}, StateAlive},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &peer{name: "n", lan: tt.lan, wan: tt.wan}
			got := p.member("A")
			if got.State != tt.want {
				t.Fatalf("state = %v, want %v", got.State, tt.want)
			}
			if got.Addr != tt.wan.addr {
				t.Fatalf("Addr = %q, want the WAN address %q", got.Addr, tt.wan.addr)
			}
		})
	}
}

func TestStrings(t *testing.T) {
	for v, want := range map[interface{ String() string }]string{
		StateAlive: "alive", StateSuspect: "suspect", StateDead: "dead", StateLeft: "left", State(9): "State(9)",
		EventJoin: "join", EventUpdate: "update", EventFailed: "failed", EventLeave: "leave", EventType(9): "EventType(9)",
	} {
		if got := v.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", v, got, want)
		}
	}
}
