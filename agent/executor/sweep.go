package executor

import (
	"os"
	"path/filepath"
	"time"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/migrate"
)

// A quick move's state files are removed by the target once its VM runs.
// Those of a move that rolled back (the source resumed its own memory), or
// whose target died, are nobody's: every executor sweeps them, at most
// every sweepEvery. A directory younger than sweepAge is left alone: its
// move may not have reached this node's FSM yet. Removing is idempotent,
// so nodes sweeping together do no harm.
const (
	sweepEvery = time.Minute
	sweepAge   = time.Minute
)

// sweepStateFiles removes the state directories of moves not in flight.
func (e *Executor) sweepStateFiles(now time.Time) {
	if e.sharedDir == "" {
		return
	}
	root := filepath.Join(e.sharedDir, filepath.Dir(migrate.StateDir("x")))
	entries, err := os.ReadDir(root)
	if err != nil {
		return // no quick move yet
	}
	for _, de := range entries {
		info, err := de.Info()
		if err != nil || !de.IsDir() || now.Sub(info.ModTime()) < sweepAge {
			continue
		}
		if fsm.InFlight(e.state.Operation(de.Name())) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, de.Name())); err != nil {
			e.log.Warn("removing a finished move's state files", "operation", de.Name(), "error", err)
			continue
		}
		e.log.Info("removed a finished move's state files", "operation", de.Name())
	}
}
