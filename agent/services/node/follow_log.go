package node

import (
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// FollowLog streams the committed log to a member outside the Raft
// configuration (agent/follow).
func (s *Service) FollowLog(req *havenv1.FollowLogRequest, stream grpc.ServerStreamingServer[havenv1.FollowLogResponse]) error {
	if !fsm.ValidName(req.GetNode()) {
		return services.Invalid("node: %q is not a valid node name", req.GetNode())
	}
	if err := s.checkMember(req.GetNode(), "log stream"); err != nil {
		return err
	}
	if s.cfg.Log == nil {
		return status.Error(codes.Unimplemented, "this agent serves no log stream")
	}
	err := s.cfg.Log.Serve(stream.Context(), req.GetAfterIndex(), stream.Send)
	switch {
	case errors.Is(err, consensus.ErrSilent):
		return status.Errorf(codes.Unavailable, "%v: follow another member", err)
	case stream.Context().Err() != nil:
		return status.FromContextError(stream.Context().Err()).Err()
	case err != nil:
		return status.Errorf(codes.Internal, "log stream: %v", err)
	}
	return nil
}
