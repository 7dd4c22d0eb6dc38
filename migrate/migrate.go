// Package migrate is what the two ends of a move and the leader share: the
// progress a source reports, the stream a live move's state travels in, and
// where a quick move keeps its state. The phases themselves are the FSM's
// (fsm/moves.go), the leader's (agent/leader/moves.go) and the executor's
// (agent/executor/moves.go); the bytes are the driver's.
package migrate

import (
	"context"
	"errors"
	"io"
	"path"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ErrRefused is a move a node will not take part in: it is not the move's
// source or target, the move is over, or the group moved on.
var ErrRefused = errors.New("move refused")

// Progress is what a move's source reports to the leader.
type Progress struct {
	Phase    havenv1.OperationPhase
	Progress *havenv1.MoveProgress
	// Ready and Checksum come last: every VM of the group is paused and
	// the target verified its copy of each.
	Ready    bool
	Checksum uint64
}

// Dial opens a stream to a live move's target for one VM of the group.
type Dial func(ctx context.Context, vm string) (io.ReadWriteCloser, error)

// StateFile is where a quick move keeps a VM's state, relative to the
// shared storage root; StateDir holds every file of one move.
func StateFile(op, vm string) string { return path.Join(StateDir(op), vm+".state") }

func StateDir(op string) string { return path.Join(".moves", op) }
