package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

const applyTimeout = 10 * time.Second

// proposer commits commands: Raft in an agent, the FSM alone in tests of
// the leader's decisions.
type proposer interface {
	propose(data []byte) (*fsm.Result, error)
}

// raftProposer commits through the agent's Raft.
type raftProposer struct{ a *Agent }

func (p raftProposer) propose(data []byte) (*fsm.Result, error) {
	fut := p.a.raft.Apply(data, applyTimeout)
	if err := fut.Error(); err != nil {
		return nil, err
	}
	res, ok := fut.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("unexpected apply response %T", fut.Response())
	}
	return res, nil
}

// propose commits a command on the leader and returns its result. It stamps
// the time: the FSM never reads a clock.
func (a *Agent) propose(c *havenv1.Command) (*fsm.Result, error) {
	c.Time = timestamppb.Now()
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode command: %v", err)
	}
	res, err := a.proposer.propose(data)
	if err != nil {
		return nil, a.raftError(err, c.GetRequestId())
	}
	return res, nil
}

// applyInternal is propose for the leader's own bookkeeping.
func (a *Agent) applyInternal(c *havenv1.Command) error {
	res, err := a.propose(c)
	if err != nil {
		return err
	}
	if res.Err != nil {
		return res.Err
	}
	return nil
}

// raftError translates Raft's errors at the boundary. After
// ErrLeadershipLost the command may or may not be committed; the request id
// makes a retry safe, so say so.
func (a *Agent) raftError(err error, requestID string) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return a.notLeader()
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrAbortedByRestore):
		return status.Errorf(codes.Unavailable, "leadership changed while committing: outcome unknown, retry with request_id %q", requestID)
	case errors.Is(err, raft.ErrRaftShutdown):
		return status.Error(codes.Unavailable, "agent is shutting down")
	}
	return status.Errorf(codes.Internal, "raft: %v", err)
}

// notLeader is the error a write gets on a node that cannot forward it.
func (a *Agent) notLeader() error {
	name, addr, err := a.leader()
	if err != nil {
		return status.Errorf(codes.Unavailable, "no leader: the cluster has no quorum or is electing one (%v)", err)
	}
	return status.Errorf(codes.Unavailable, "not the leader; the leader is %s at %s", name, addr)
}

func fsmError(e *fsm.Error) error {
	code := codes.Internal
	switch e.Code {
	case fsm.CodeInvalidArgument:
		code = codes.InvalidArgument
	case fsm.CodeNotFound:
		code = codes.NotFound
	case fsm.CodeAlreadyExists:
		code = codes.AlreadyExists
	case fsm.CodeFailedPrecondition:
		code = codes.FailedPrecondition
	}
	return status.Error(code, e.Msg)
}

func newRequestID(given string) (string, error) {
	if given == "" {
		return uuid.NewString(), nil
	}
	if len(given) > 128 {
		return "", status.Errorf(codes.InvalidArgument, "request_id: %d bytes, the limit is 128", len(given))
	}
	return given, nil
}
