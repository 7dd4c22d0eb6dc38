// Package logtest sends a test's logs to t.Log, so they show with the
// test that wrote them, and only when it fails or runs verbose.
package logtest

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/haven-ha/haven/internal/logging"
)

// New is a debug-level logger writing through t.Log.
func New(t testing.TB) *slog.Logger {
	return logging.New(writer{t}, slog.LevelDebug)
}

type writer struct{ t testing.TB }

func (w writer) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// Buffer collects what a logger (or a process) writes while the test
// reads it: a bytes.Buffer safe for both at once.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
