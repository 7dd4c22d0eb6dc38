package cluster

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/haven-ha/haven/agent/events"
	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// watchBuffer is how many events a watcher may fall behind by before it
// is ended (it then resumes from the last index it read).
const watchBuffer = 1024

// maxKinds bounds the kinds filter.
const maxKinds = 32

// WatchEvents streams the kept events after from_index, then, with
// follow, new ones until the client goes.
func (s *Service) WatchEvents(req *havenv1.WatchEventsRequest, stream havenv1.ClusterService_WatchEventsServer) error {
	filter, err := eventFilter(req)
	if err != nil {
		return err
	}
	replay, sub, err := s.cfg.Events.Watch(req.GetFromIndex(), watchBuffer, filter)
	var ce *events.CompactedError
	if errors.As(err, &ce) {
		return status.Error(codes.OutOfRange, err.Error())
	}
	if err != nil {
		return s.status(err)
	}
	defer sub.Close()
	last := req.GetFromIndex()
	send := func(e events.Event) error {
		if err := stream.Send(&havenv1.WatchEventsResponse{Event: eventProto(e)}); err != nil {
			return err
		}
		last = max(last, e.Index)
		return nil
	}
	for _, e := range replay {
		if err := send(e); err != nil {
			return err
		}
	}
	if !req.GetFollow() {
		return nil
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case e, ok := <-sub.C():
			if !ok {
				return nil
			}
			if sub.Dropped() > 0 {
				return status.Error(codes.Aborted, fmt.Sprintf("the watcher fell behind: watch again from index %d", last))
			}
			if err := send(e); err != nil {
				return err
			}
		}
	}
}

// eventFilter checks the request's filters and returns them as one.
func eventFilter(req *havenv1.WatchEventsRequest) (func(events.Event) bool, error) {
	if len(req.GetKinds()) > maxKinds {
		return nil, services.Invalid("kinds: %d given, at most %d", len(req.GetKinds()), maxKinds)
	}
	for i, k := range req.GetKinds() {
		if !fsm.ValidName(k) {
			return nil, services.Invalid("kinds[%d]: %q is not an event kind", i, k)
		}
	}
	if n := req.GetNode(); n != "" && !fsm.ValidName(n) {
		return nil, services.Invalid("node: %q is not a valid node name", n)
	}
	if g := req.GetGroup(); g != "" && !fsm.ValidName(g) {
		return nil, services.Invalid("group: %q is not a valid group name", g)
	}
	kinds, node, group := req.GetKinds(), req.GetNode(), req.GetGroup()
	return func(e events.Event) bool {
		return (len(kinds) == 0 || slices.Contains(kinds, string(e.Kind))) &&
			(node == "" || e.Node == node) && (group == "" || e.Group == group)
	}, nil
}

func eventProto(e events.Event) *havenv1.Event {
	p := &havenv1.Event{Index: e.Index, Kind: string(e.Kind), Group: e.Group, Node: e.Node, Epoch: e.Epoch,
		State: e.State, Reason: e.Reason, Refused: e.Refused}
	if !e.Time.IsZero() {
		p.Time = timestamppb.New(e.Time)
	}
	return p
}
