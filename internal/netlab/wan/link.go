package wan

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Link is what one WAN link does to the packets an iptables NFQUEUE rule
// sends to its queue: each is held for a delay drawn uniformly from
// [Delay-Jitter, Delay+Jitter]. One queue serves one link; both directions
// of the link may share it.
type Link struct {
	Queue  uint16
	Delay  time.Duration
	Jitter time.Duration
}

// Validate says which field of the link is wrong, if any.
func (k Link) Validate() error {
	switch {
	case k.Delay < 0:
		return fmt.Errorf("queue %d: delay %v is negative", k.Queue, k.Delay)
	case k.Jitter < 0:
		return fmt.Errorf("queue %d: jitter %v is negative", k.Queue, k.Jitter)
	case k.Jitter > k.Delay:
		// A delay below zero would release a packet before it arrived.
		return fmt.Errorf("queue %d: jitter %v exceeds delay %v", k.Queue, k.Jitter, k.Delay)
	}
	return nil
}

// String renders the link as ParseLink reads it, which is also the value of
// the delay program's --link flag (Command).
func (k Link) String() string {
	return fmt.Sprintf("queue=%d,delay=%v,jitter=%v", k.Queue, k.Delay, k.Jitter)
}

// ParseLink reads "queue=N,delay=D,jitter=J" (durations as time.ParseDuration
// reads them; jitter may be left out and is then zero) and validates it.
func ParseLink(s string) (Link, error) {
	var k Link
	seen := map[string]bool{}
	for field := range strings.SplitSeq(s, ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(field), "=")
		if !ok {
			return Link{}, fmt.Errorf("link %q: %q is not key=value", s, field)
		}
		if seen[name] {
			return Link{}, fmt.Errorf("link %q: %s given twice", s, name)
		}
		seen[name] = true
		var err error
		switch name {
		case "queue":
			var n uint64
			n, err = strconv.ParseUint(value, 10, 16)
			k.Queue = uint16(n)
		case "delay":
			k.Delay, err = time.ParseDuration(value)
		case "jitter":
			k.Jitter, err = time.ParseDuration(value)
		default:
			return Link{}, fmt.Errorf("link %q: unknown key %q (want queue, delay, jitter)", s, name)
		}
		if err != nil {
			return Link{}, fmt.Errorf("link %q: %s: %w", s, name, err)
		}
	}
	for _, name := range []string{"queue", "delay"} {
		if !seen[name] {
			return Link{}, fmt.Errorf("link %q: %s missing", s, name)
		}
	}
	return k, k.Validate()
}

// validateLinks checks each link and that no two share a queue: a queue
// number can be bound by one socket only.
func validateLinks(links []Link) error {
	if len(links) == 0 {
		return errors.New("no links")
	}
	queues := map[uint16]bool{}
	for _, k := range links {
		if err := k.Validate(); err != nil {
			return err
		}
		if queues[k.Queue] {
			return fmt.Errorf("queue %d given to two links", k.Queue)
		}
		queues[k.Queue] = true
	}
	return nil
}
