package leader

import (
	"testing"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestFailbackAllowed(t *testing.T) {
	at := func(h int) time.Time { return time.Date(2026, 11, 25, h, 30, 0, 0, time.UTC) }
	window := func(from, to uint32) *havenv1.FailbackPolicy {
		return &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_WINDOW, WindowStartHour: from, WindowEndHour: to}
	}
	for _, tt := range []struct {
		name string
		fb   *havenv1.FailbackPolicy
		hour int
		want bool
	}{
		{"no policy", nil, 3, false},
		{"never", &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_NEVER}, 3, false},
		{"immediate", &havenv1.FailbackPolicy{Mode: havenv1.FailbackMode_FAILBACK_MODE_IMMEDIATE}, 3, true},
		{"inside window", window(1, 5), 3, true},
		{"window end excluded", window(1, 5), 5, false},
		{"before window", window(1, 5), 0, false},
		{"wrapping window, late", window(22, 4), 23, true},
		{"wrapping window, early", window(22, 4), 2, true},
		{"wrapping window, midday", window(22, 4), 12, false},
	} {
		if got := failbackAllowed(tt.fb, at(tt.hour)); got != tt.want {
			t.Errorf("%s at %02d:30: %v, want %v", tt.name, tt.hour, got, tt.want)
		}
	}
}
