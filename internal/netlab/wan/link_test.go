package wan

import (
	"testing"
	"time"
)

func TestParseLink(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Link
		wantErr bool
	}{
		{"queue=1,delay=30ms,jitter=10ms", Link{1, 30 * time.Millisecond, 10 * time.Millisecond}, false},
		{"delay=1s,queue=65535", Link{65535, time.Second, 0}, false},
		{" queue=0, delay=0s, jitter=0s", Link{}, false},
		{"queue=1,delay=5ms,jitter=10ms", Link{}, true},
		{"queue=1,delay=-5ms", Link{}, true},
		{"queue=65536,delay=5ms", Link{}, true},
		{"queue=1", Link{}, true},
		{"delay=5ms", Link{}, true},
		{"queue=1,delay=5ms,loss=2%", Link{}, true},
		{"queue=1,queue=2,delay=5ms", Link{}, true},
		{"queue=1,delay=5", Link{}, true},
		{"queue=1;delay=5ms", Link{}, true},
	} {
		got, err := ParseLink(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && got != tc.want) {
			t.Errorf("ParseLink(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err == nil {
			if back, err := ParseLink(got.String()); err != nil || back != got {
				t.Errorf("ParseLink(%q.String() = %q) = %+v, %v", tc.in, got.String(), back, err)
			}
		}
	}
}

func TestValidateLinks(t *testing.T) {
	ok := Link{Queue: 1, Delay: time.Millisecond}
	if err := validateLinks([]Link{ok, {Queue: 2}}); err != nil {
		t.Error(err)
	}
	if err := validateLinks(nil); err == nil {
		t.Error("no links accepted")
	}
	if err := validateLinks([]Link{ok, ok}); err == nil {
		t.Error("two links on one queue accepted")
	}
}
