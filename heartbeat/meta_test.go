package heartbeat

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func TestMetaRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		meta    Meta
		leaving bool
	}{
		{"zero", Meta{}, false},
		{"typical", Meta{Site: "A", RaftAddr: "10.0.0.1:7001", GRPCAddr: "10.0.0.1:7002", LANAddr: "10.0.0.1:7946", Version: "0.1.0", Expect: 3, CPUMillis: 32000, MemoryBytes: 256 << 30}, false},
		{"witness leaving", Meta{Site: "W", Witness: true, Version: "0.1.0"}, true},
		{"ipv6", Meta{Site: "B", RaftAddr: "[fd00::1]:7001", LANAddr: "[fd00::1]:7946"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := encodeMeta(tt.meta, tt.leaving)
			if err != nil {
				t.Fatal(err)
			}
			got, leaving, err := decodeMeta(b)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.meta || leaving != tt.leaving {
				t.Fatalf("round trip = %+v leaving=%v, want %+v leaving=%v", got, leaving, tt.meta, tt.leaving)
			}
		})
	}
}

func TestMetaDecodeErrors(t *testing.T) {
	if m, leaving, err := decodeMeta(nil); err != nil || m != (Meta{}) || leaving {
		t.Fatalf("decodeMeta(nil) = %+v, %v, %v; want zero", m, leaving, err)
	}
	if _, _, err := decodeMeta([]byte("\x00not json")); err == nil {
		t.Fatal("decodeMeta accepted garbage")
	}
}

// The largest meta we expect in practice must fit with room to spare.
func TestMetaWorstCaseFits(t *testing.T) {
	v6 := "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
	worst := Meta{
		Site:        strings.Repeat("s", 63), // a DNS label
		Witness:     true,
		RaftAddr:    v6,
		GRPCAddr:    v6,
		LANAddr:     v6,
		Version:     "v10.20.30-rc.12+g0123456789abcdef0123456789abcdef01234567", // semver with a full git hash
		Expect:      99,
		RaftState:   true,
		CPUMillis:   1 << 40,
		MemoryBytes: 1 << 62,
		HotPlug:     true,
	}
	b, err := encodeMeta(worst, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("worst realistic meta: %d of %d bytes", len(b), memberlist.MetaMaxSize)
	if len(b) > memberlist.MetaMaxSize*3/4 {
		t.Fatalf("worst realistic meta is %d bytes, want under three quarters of %d", len(b), memberlist.MetaMaxSize)
	}
}

func TestMetaTooLarge(t *testing.T) {
	_, err := encodeMeta(Meta{Version: strings.Repeat("v", memberlist.MetaMaxSize)}, false)
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("encodeMeta(oversize) = %v, want ErrMetaTooLarge", err)
	}

	// A meta that fits only without the leaving flag is refused up front,
	// or Leave could not advertise the flag later.
	var m Membership
	base, _ := encodeMeta(Meta{}, false)
	justFits := Meta{Version: strings.Repeat("v", memberlist.MetaMaxSize-len(base)-len(`"v":""`))}
	if b, err := encodeMeta(justFits, false); err != nil || len(b) != memberlist.MetaMaxSize {
		t.Fatalf("test meta: %d bytes, %v; want exactly %d", len(b), err, memberlist.MetaMaxSize)
	}
	if err := m.setMeta(justFits); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("setMeta(fits only without leaving flag) = %v, want ErrMetaTooLarge", err)
	}
}
