package netlab

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

// WAN is what the link between two sites does to every packet crossing it,
// in each direction.
type WAN struct {
	// Delay is the one-way delay; each packet's is uniform in
	// [Delay-Jitter, Delay+Jitter], and packets of one flow (IPv4
	// 5-tuple) are never reordered.
	Delay, Jitter time.Duration
	// Loss is the probability that a packet is dropped, each way.
	Loss float64
}

// String renders w as ParseWAN reads it: "30ms±10ms,2%".
func (w WAN) String() string {
	return fmt.Sprintf("%v±%v,%g%%", w.Delay, w.Jitter, 100*w.Loss)
}

// ParseWAN reads a WAN as an operator writes it: DELAY[±JITTER][,LOSS%],
// e.g. "30ms±10ms,2%", "30ms+-10ms,2%" (the same in ASCII), "30ms",
// "20ms±5ms", "0,1%" (loss alone) or "0.5%". Durations are Go's
// (time.ParseDuration; a bare 0 is none), the loss a percentage.
func ParseWAN(s string) (WAN, error) {
	var w WAN
	fail := func(format string, args ...any) (WAN, error) {
		return WAN{}, fmt.Errorf("WAN %q: %s (want DELAY[±JITTER][,LOSS%%], e.g. 30ms±10ms,2%%)", s, fmt.Sprintf(format, args...))
	}
	delays, loss, hasLoss := strings.Cut(strings.TrimSpace(s), ",")
	if !hasLoss && strings.HasSuffix(delays, "%") {
		delays, loss, hasLoss = "", delays, true // "2%": loss alone
	}
	if hasLoss {
		p, ok := strings.CutSuffix(strings.TrimSpace(loss), "%")
		if !ok {
			return fail("loss %q must end in %%", loss)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(f) {
			return fail("loss %q is not a number", loss)
		}
		w.Loss = f / 100
	}
	if delays = strings.TrimSpace(delays); delays != "" {
		delay, jitter, hasJitter := strings.Cut(delays, "±")
		if !hasJitter {
			delay, jitter, hasJitter = strings.Cut(delays, "+-")
		}
		var err error
		if w.Delay, err = time.ParseDuration(strings.TrimSpace(delay)); err != nil {
			return fail("delay: %v", err)
		}
		if hasJitter {
			if w.Jitter, err = time.ParseDuration(strings.TrimSpace(jitter)); err != nil {
				return fail("jitter: %v", err)
			}
		}
	} else if !hasLoss {
		return fail("empty")
	}
	if err := w.validate(); err != nil {
		return fail("%v", err)
	}
	return w, nil
}

func (w WAN) validate() error {
	if math.IsNaN(w.Loss) || w.Loss < 0 || w.Loss >= 1 {
		return fmt.Errorf("loss %g: want 0 <= loss < 1", w.Loss)
	}
	return wan.Link{Delay: w.Delay, Jitter: w.Jitter}.Validate()
}
