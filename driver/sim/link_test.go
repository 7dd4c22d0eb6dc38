package sim

import (
	"context"
	"testing"
	"time"
)

// slowWriter takes d per write, as a link busy sending does.
type slowWriter struct{ d time.Duration }

func (w slowWriter) Write(p []byte) (int, error) { time.Sleep(w.d); return len(p), nil }

// The cap holds however long the writes themselves take: a link never
// carries more than the limit over the move (give or take linkSlack),
// though the writes' own time counts towards their share.
func TestLinkKeepsTheCap(t *testing.T) {
	const limit, chunk, total = 64 << 20, 256 << 10, 8 << 20
	for _, d := range []time.Duration{0, time.Millisecond, 10 * time.Millisecond} {
		l := &link{ctx: context.Background(), w: slowWriter{d}, limit: limit}
		buf := make([]byte, chunk)
		t0 := time.Now()
		for sent := 0; sent < total; sent += chunk {
			if _, err := l.Write(buf); err != nil {
				t.Fatal(err)
			}
		}
		took := time.Since(t0)
		if min := time.Duration(float64(total)/limit*float64(time.Second)) - linkSlack; took < min {
			t.Errorf("writes of %s each: %d bytes in %s, faster than the cap allows (%s)", d, total, took, min)
		}
	}
}
