package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/haven-ha/haven/migrate"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A link probe is a diagnostic: what one stream of a live move from this
// agent to another can carry, measured on the path a move takes (the
// dedicated connection DialNode opens, the chunking of migrate.Conn), with
// nothing of a move around it (no driver, no frames, no acks). It loads
// the link as a move would, hence the bounds below.
const (
	// MaxProbeBytes bounds what one probe sends.
	MaxProbeBytes = 4 << 30
	// MaxProbeTime bounds how long either end of a probe runs, whatever
	// the caller's deadline.
	MaxProbeTime = 2 * time.Minute
	// probeWrite is how much the sender hands migrate.Conn at a time,
	// which cuts it into chunks as it does a move's stream.
	probeWrite = 1 << 20
)

// ProbeLink implements haven.v1.NodeService.
func (s *Service) ProbeLink(ctx context.Context, req *havenv1.ProbeLinkRequest) (*havenv1.ProbeLinkResponse, error) {
	if s.cfg.DialNode == nil {
		return nil, status.Error(codes.Unimplemented, "this agent takes no part in moves")
	}
	want := req.GetBytes()
	if want < 1 || want > MaxProbeBytes {
		return nil, status.Errorf(codes.InvalidArgument, "bytes: %d is outside 1..%d", want, int64(MaxProbeBytes))
	}
	if req.GetTarget() == s.cfg.Name {
		return nil, status.Errorf(codes.InvalidArgument, "target: %s is this node", req.GetTarget())
	}
	n := s.cfg.State.Node(req.GetTarget())
	switch {
	case n == nil:
		return nil, status.Errorf(codes.NotFound, "node %q not found", req.GetTarget())
	case n.GetGrpcAddr() == "":
		return nil, status.Errorf(codes.FailedPrecondition, "node %s has no known address", req.GetTarget())
	}
	if !s.probeOut.CompareAndSwap(false, true) {
		return nil, status.Error(codes.ResourceExhausted, "a link probe from this agent is already running")
	}
	defer s.probeOut.Store(false)
	ctx, cancel := context.WithTimeoutCause(ctx, MaxProbeTime, fmt.Errorf("the probe ran past its limit of %s", MaxProbeTime))
	defer cancel()
	got, took, err := s.probe(ctx, n.GetGrpcAddr(), want)
	if err != nil {
		st := status.Convert(err)
		code, why := st.Code(), st.Message()
		if ctx.Err() != nil {
			code, why = status.FromContextError(ctx.Err()).Code(), context.Cause(ctx).Error()
		}
		return nil, status.Errorf(code, "link probe to %s at %s: %s", n.GetName(), n.GetGrpcAddr(), why)
	}
	if got != want {
		return nil, status.Errorf(codes.Internal, "link probe to %s: it counted %d bytes of the %d sent", n.GetName(), got, want)
	}
	return &havenv1.ProbeLinkResponse{Bytes: got, Duration: durationpb.New(took)}, nil
}

// probe sends want bytes to the ProbeSink at addr and returns what the
// sink counted and the time from the first chunk to its count.
func (s *Service) probe(ctx context.Context, addr string, want int64) (int64, time.Duration, error) {
	c, release, err := s.cfg.DialNode(addr)
	if err != nil {
		return 0, 0, status.Error(codes.Unavailable, err.Error())
	}
	defer release()
	st, err := c.ProbeSink(ctx)
	if err == nil {
		err = st.Send(&havenv1.ProbeSinkRequest{Node: s.cfg.Name})
	}
	if err != nil {
		return 0, 0, err
	}
	conn := migrate.NewConn(
		func(b []byte) error { return st.Send(&havenv1.ProbeSinkRequest{Data: b}) },
		nil, nil)
	buf := make([]byte, probeWrite)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8) // not zeros; nothing compresses it anyway
	}
	start := time.Now()
	for left := want; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err = conn.Write(buf[:k]); err != nil {
			break
		}
		left -= k
	}
	// A Send that fails with io.EOF means the sink ended the call: its
	// status comes with the reply.
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, 0, err
	}
	resp, err := st.CloseAndRecv()
	took := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	return resp.GetBytes(), took, nil
}

// ProbeSink implements haven.v1.NodeService. The stream is read on a
// goroutine of its own so that a sender that stalls is cut off at
// MaxProbeTime, even one that set no deadline: returning ends the call,
// which ends the read.
func (s *Service) ProbeSink(stream havenv1.NodeService_ProbeSinkServer) error {
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := s.sink(stream)
		done <- result{n, err}
	}()
	t := time.NewTimer(MaxProbeTime)
	defer t.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			return r.err
		}
		return stream.SendAndClose(&havenv1.ProbeSinkResponse{Bytes: r.n})
	case <-t.C:
		return status.Errorf(codes.DeadlineExceeded, "link probe: the sender ran past the limit of %s", MaxProbeTime)
	}
}

// sink counts and discards what a probe sends, from a member of the
// cluster, one probe at a time.
func (s *Service) sink(stream havenv1.NodeService_ProbeSinkServer) (int64, error) {
	first, err := stream.Recv()
	if err != nil {
		return 0, err
	}
	if err := s.checkMember(first.GetNode(), "link probe"); err != nil {
		return 0, err
	}
	if !s.probeIn.CompareAndSwap(false, true) {
		return 0, status.Error(codes.ResourceExhausted, "a link probe into this agent is already running")
	}
	defer s.probeIn.Store(false)
	var n int64
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if n += int64(len(m.GetData())); n > MaxProbeBytes {
			return n, status.Errorf(codes.ResourceExhausted, "link probe: more than %d bytes", int64(MaxProbeBytes))
		}
	}
}
