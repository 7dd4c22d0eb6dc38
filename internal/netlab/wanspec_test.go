package netlab

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestWANValidate(t *testing.T) {
	for _, tc := range []struct {
		w  WAN
		ok bool
	}{
		{WAN{}, true},
		{WAN{Delay: 30 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.02}, true},
		{WAN{Loss: 0.999}, true},
		{WAN{Loss: 1}, false},
		{WAN{Loss: -0.1}, false},
		{WAN{Loss: math.NaN()}, false},
		{WAN{Delay: 10 * time.Millisecond, Jitter: 30 * time.Millisecond}, false},
		{WAN{Delay: -30 * time.Millisecond}, false},
	} {
		if err := tc.w.validate(); (err == nil) != tc.ok {
			t.Errorf("%v: %v, want ok %v", tc.w, err, tc.ok)
		}
	}
}

func TestParseWAN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want WAN
	}{
		{"30ms±10ms,2%", WAN{Delay: 30 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.02}},
		{"30ms+-10ms,2%", WAN{Delay: 30 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.02}},
		{" 30ms ± 10ms , 2 % ", WAN{Delay: 30 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.02}},
		{"30ms", WAN{Delay: 30 * time.Millisecond}},
		{"20ms±5ms", WAN{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}},
		{"50ms,0.5%", WAN{Delay: 50 * time.Millisecond, Loss: 0.005}},
		{"1.5s+-500ms", WAN{Delay: 1500 * time.Millisecond, Jitter: 500 * time.Millisecond}},
		{"0,1%", WAN{Loss: 0.01}},
		{"1%", WAN{Loss: 0.01}},
		{"0", WAN{}},
	} {
		got, err := ParseWAN(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseWAN(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if err == nil {
			// What String prints, ParseWAN reads back.
			if back, err := ParseWAN(got.String()); err != nil || back != got {
				t.Errorf("ParseWAN(%q) = %+v, %v; want %+v", got.String(), back, err, got)
			}
		}
	}
	for _, tc := range []struct{ in, msg string }{
		{"", "empty"},
		{"fast", "delay"},
		{"30", "delay"},
		{"30ms±", "jitter"},
		{"30ms±abc", "jitter"},
		{"10ms±30ms", "exceeds delay"},
		{"-5ms", "negative"},
		{"30ms,2", "must end in %"},
		{"30ms,x%", "not a number"},
		{"30ms,100%", "loss"},
		{"30ms,-1%", "loss"},
		{"30ms,NaN%", "not a number"},
	} {
		_, err := ParseWAN(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "e.g. 30ms±10ms,2%") {
			t.Errorf("ParseWAN(%q): error %v, want one saying %q and showing the form", tc.in, err, tc.msg)
		}
	}
}
