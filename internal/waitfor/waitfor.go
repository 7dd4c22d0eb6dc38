// Package waitfor is how a unit test waits for something another
// goroutine does: by checking the condition until it holds, within a
// bound, never by sleeping for a guessed time.
package waitfor

import (
	"testing"
	"time"
)

// poll is how often the condition is checked.
const poll = 2 * time.Millisecond

// Cond fails t unless cond returns true within timeout; what names the
// condition in the failure.
func Cond(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", timeout, what)
		}
		time.Sleep(poll)
	}
}
