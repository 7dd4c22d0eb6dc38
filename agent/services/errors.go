// Package services holds what the gRPC services share: the one switch
// from domain errors to gRPC status codes, and request checks. The
// services themselves are in cluster/ (the operator's API) and node/
// (agent to agent).
package services

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/agent/lease"
	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/migrate"
	"github.com/haven-ha/haven/placement"
)

// Locate names the leader and its gRPC address, for the message a client
// gets on a node that cannot answer.
type Locate func() (name, addr string, err error)

// Status maps a domain error to its gRPC status. Errors that already are
// statuses (a forwarded call's) pass through.
func Status(err error, locate Locate) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var fe *fsm.Error
	var unknown *consensus.OutcomeUnknownError
	switch {
	case errors.As(err, &fe):
		return status.Error(fsmCode(fe.Code), fe.Msg)
	case errors.Is(err, consensus.ErrNotLeader):
		return NotLeader(locate)
	case errors.As(err, &unknown):
		return status.Error(codes.Unavailable, unknown.Error())
	case errors.Is(err, consensus.ErrShutdown):
		return status.Error(codes.Unavailable, "agent is shutting down")
	case errors.Is(err, consensus.ErrReadsNotReady), errors.Is(err, lease.ErrNotReady), errors.Is(err, lease.ErrUnverified):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, leader.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, leader.ErrConflict), errors.Is(err, placement.ErrAlreadyRunning):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, leader.ErrInvalid), errors.Is(err, placement.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, placement.ErrResourceExhausted):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, migrate.ErrRefused), errors.As(err, new(*driver.GiveUpError)):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, heartbeat.ErrInvalidKey):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, heartbeat.ErrNotEncrypted), errors.Is(err, heartbeat.ErrKeyNotInstalled), errors.Is(err, heartbeat.ErrRemovePrimary):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, heartbeat.ErrShutdown), errors.Is(err, heartbeat.ErrLeft):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

func fsmCode(c fsm.Code) codes.Code {
	switch c {
	case fsm.CodeInvalidArgument:
		return codes.InvalidArgument
	case fsm.CodeNotFound:
		return codes.NotFound
	case fsm.CodeAlreadyExists:
		return codes.AlreadyExists
	case fsm.CodeFailedPrecondition:
		return codes.FailedPrecondition
	}
	return codes.Internal
}

// NotLeader is the error a request gets on a node that does not lead and
// cannot forward it.
func NotLeader(locate Locate) error {
	name, addr, err := locate()
	if err != nil {
		return status.Errorf(codes.Unavailable, "no leader: the cluster has no quorum or is electing one (%v)", err)
	}
	return status.Errorf(codes.Unavailable, "not the leader; the leader is %s at %s", name, addr)
}

// Invalid is an InvalidArgument status.
func Invalid(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}

// RequestID returns the request's id, or a new one when none was given.
func RequestID(given string) (string, error) {
	if given == "" {
		return uuid.NewString(), nil
	}
	if len(given) > 128 {
		return "", Invalid("request_id: %d bytes, the limit is 128", len(given))
	}
	return given, nil
}
