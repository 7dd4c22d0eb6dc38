package leader

import (
	"errors"
	"fmt"

	"github.com/haven-ha/haven/agent/consensus"
)

// The leader's refusals. Each is wrapped with a message for the operator;
// test with errors.Is. The service layer maps them, the FSM's refusals
// (*fsm.Error), placement's (placement.ErrResourceExhausted, ...) and
// consensus's to gRPC codes in one switch.
var (
	// ErrNotLeader: this node does not lead (or its term just ended).
	ErrNotLeader = consensus.ErrNotLeader
	// ErrNotFound: the group or node named does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request cannot be honoured in the current state.
	ErrConflict = errors.New("failed precondition")
	// ErrInvalid: the request itself is wrong.
	ErrInvalid = errors.New("invalid argument")
)

type refusal struct {
	kind error
	msg  string
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return r.kind }

func refuse(kind error, format string, args ...any) error {
	return &refusal{kind: kind, msg: fmt.Sprintf(format, args...)}
}
