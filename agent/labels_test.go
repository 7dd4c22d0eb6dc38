package agent

import (
	"strings"
	"testing"
)

func TestCheckLabels(t *testing.T) {
	for _, tt := range []struct {
		labels map[string]string
		want   string
	}{
		{map[string]string{"rack": "r1"}, ""},
		{map[string]string{"ra,ck": "r1"}, "keys and values"},
		{map[string]string{"rack": "a=b"}, "keys and values"},
		{map[string]string{"rack": strings.Repeat("x", 63), "row": strings.Repeat("y", 63), "dc": strings.Repeat("z", 63), "k": strings.Repeat("w", 20)}, "bytes once encoded"},
	} {
		err := checkLabels(tt.labels)
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("checkLabels(%v) = %v, want %q", tt.labels, err, tt.want)
		}
	}
}
