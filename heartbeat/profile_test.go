package heartbeat

import (
	"strings"
	"testing"
	"time"
)

func TestProfileValidate(t *testing.T) {
	good := Profile{ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, SuspicionMult: 4, GossipInterval: 200 * time.Millisecond}
	tests := []struct {
		name    string
		mod     func(*Profile)
		wantErr string // a substring naming the field; "" for valid
	}{
		{"valid", func(*Profile) {}, ""},
		{"zero interval", func(p *Profile) { p.ProbeInterval = 0 }, "ProbeInterval"},
		{"negative interval", func(p *Profile) { p.ProbeInterval = -time.Second }, "ProbeInterval"},
		{"zero timeout", func(p *Profile) { p.ProbeTimeout = 0 }, "ProbeTimeout"},
		{"timeout equals interval", func(p *Profile) { p.ProbeTimeout = p.ProbeInterval }, "ProbeTimeout"},
		{"timeout above interval", func(p *Profile) { p.ProbeTimeout = 2 * p.ProbeInterval }, "ProbeTimeout"},
		{"zero suspicion", func(p *Profile) { p.SuspicionMult = 0 }, "SuspicionMult"},
		{"suspicion one", func(p *Profile) { p.SuspicionMult = 1 }, ""},
		{"zero gossip", func(p *Profile) { p.GossipInterval = 0 }, "GossipInterval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good
			tt.mod(&p)
			err := p.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate() = nil, want an error naming %s", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Validate() = %v, want it to name %s", err, tt.wantErr)
			}
		})
	}
}

func TestDefaultsAreValid(t *testing.T) {
	for name, p := range map[string]Profile{"same-site": SameSiteDefaults(), "cross-site": CrossSiteDefaults()} {
		if err := p.Validate(); err != nil {
			t.Errorf("%s defaults: %v", name, err)
		}
	}
	if s, c := SameSiteDefaults().DetectionTime(10), CrossSiteDefaults().DetectionTime(10); s >= c {
		t.Errorf("same-site detection %v should be faster than cross-site %v", s, c)
	}
}

func TestProfileDetectionTime(t *testing.T) {
	tests := []struct {
		name string
		p    Profile
		n    int
		want time.Duration
	}{
		// 1s + 500ms + 4*1*1s: log10 is floored at 1 for small pools.
		{"same-site, 0 nodes", SameSiteDefaults(), 0, 5500 * time.Millisecond},
		{"same-site, 1 node", SameSiteDefaults(), 1, 5500 * time.Millisecond},
		{"same-site, 3 nodes", SameSiteDefaults(), 3, 5500 * time.Millisecond},
		{"same-site, 10 nodes", SameSiteDefaults(), 10, 5500 * time.Millisecond},
		{"same-site, 100 nodes", SameSiteDefaults(), 100, 9500 * time.Millisecond},
		// 2s + 1s + 4*1*2s
		{"cross-site, 5 nodes", CrossSiteDefaults(), 5, 11 * time.Second},
		// 2s + 1s + 4*3*2s
		{"cross-site, 1000 nodes", CrossSiteDefaults(), 1000, 27 * time.Second},
		// 100ms + 50ms + 2*log10(50)*100ms, log10(50) = 1.69897 kept to 1/1000
		{"tight, 50 nodes", Profile{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond, SuspicionMult: 2, GossipInterval: 50 * time.Millisecond}, 50, 150*time.Millisecond + 2*1698*100*time.Millisecond/1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.DetectionTime(tt.n); got != tt.want {
				t.Fatalf("DetectionTime(%d) = %v, want %v", tt.n, got, tt.want)
			}
		})
	}
}
