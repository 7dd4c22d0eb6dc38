package agent

import (
	"fmt"
	"regexp"

	"github.com/haven-ha/haven/heartbeat"
)

// Node labels travel in gossip metadata (512 bytes in all) as sorted
// "k=v" pairs joined by commas; these bounds keep them well inside it.
const (
	maxLabels     = 16
	maxLabelBytes = 200
)

var labelRE = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)

func checkLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("labels: %d labels, at most %d", len(labels), maxLabels)
	}
	for k, v := range labels {
		if !labelRE.MatchString(k) || !labelRE.MatchString(v) {
			return fmt.Errorf("labels: %q=%q: keys and values are 1-63 letters, digits, '.', '_', '/' or '-'", k, v)
		}
	}
	if n := len(heartbeat.FormatLabels(labels)); n > maxLabelBytes {
		return fmt.Errorf("labels: %d bytes once encoded, at most %d (they travel in gossip metadata)", n, maxLabelBytes)
	}
	return nil
}
