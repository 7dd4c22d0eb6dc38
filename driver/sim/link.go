package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// link is the source's side of the wire under its frame buffer: it counts
// what is written, which is what a round's rate is measured in, and paces
// it to the bandwidth limit.
type link struct {
	ctx   context.Context
	w     io.Writer
	limit int64 // bytes per second; 0 is none
	sent  int64
	// due is when the bytes written so far may all have gone at limit.
	due time.Time
}

func (l *link) Write(p []byte) (int, error) {
	start := time.Now()
	n, err := l.w.Write(p)
	l.sent += int64(n)
	if err != nil || l.limit <= 0 {
		return n, err
	}
	// The write's own time counts towards its share, and so does up to
	// linkSlack of lateness before it (a timer that fired late, the
	// scheduler): counting from each write's end, or crediting nothing,
	// paced a 200 MiB/s cap down to 124 MiB/s on a busy host. Idle time
	// beyond that (waiting for an ack) earns no credit: a burst after it
	// would exceed the cap the operator set by more than linkSlack's worth.
	l.due = later(l.due, start.Add(-linkSlack)).Add(time.Duration(float64(n) / float64(l.limit) * float64(time.Second)))
	if wait := time.Until(l.due); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-l.ctx.Done():
			return n, context.Cause(l.ctx)
		}
	}
	return n, nil
}

// linkSlack is the lateness a capped link may make up for.
const linkSlack = 5 * time.Millisecond

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// unblockOnCancel makes a read or write of conn that is blocked when ctx
// ends return, if conn has deadlines (a net.Conn). A conn without them
// must end with ctx by itself, as a gRPC stream of ctx does. The returned
// stop ends the watch.
func unblockOnCancel(ctx context.Context, conn any) (stop func() bool) {
	dl, ok := conn.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { _ = dl.SetDeadline(time.Unix(1, 0)) })
}

// cause puts the context's cause in front of err if the context ended:
// the I/O error of an unblocked conn says less than why it was unblocked.
func cause(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w: %v", context.Cause(ctx), err)
	}
	return err
}
