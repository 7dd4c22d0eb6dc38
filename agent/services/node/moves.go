package node

import (
	"context"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/migrate"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Mover is this node's part in moves (the executor).
type Mover interface {
	MoveOut(ctx context.Context, id string, index uint64, dial migrate.Dial, report func(migrate.Progress) error) error
	MoveIn(ctx context.Context, id string, index uint64, vm string, conn io.ReadWriter) error
	RestoreMove(ctx context.Context, id string, index uint64) error
	ConfirmMoveIn(ctx context.Context, id string, index uint64) error
}

// DialNode opens a connection of its own to another agent, for a move's
// stream: sharing the pooled one would queue lease renewals behind
// gigabytes of memory. close releases it.
type DialNode func(addr string) (c havenv1.NodeServiceClient, close func(), err error)

// MoveOut implements haven.v1.NodeService.
func (s *Service) MoveOut(req *havenv1.MoveOutRequest, stream havenv1.NodeService_MoveOutServer) error {
	if s.cfg.Mover == nil || s.cfg.DialNode == nil {
		return status.Error(codes.Unimplemented, "this agent takes no part in moves")
	}
	dial := func(ctx context.Context, vm string) (io.ReadWriteCloser, error) {
		return s.openMoveIn(ctx, req, vm)
	}
	report := func(p migrate.Progress) error {
		return stream.Send(&havenv1.MoveOutResponse{Phase: p.Phase, Progress: p.Progress, Ready: p.Ready, Checksum: p.Checksum})
	}
	return s.status(s.cfg.Mover.MoveOut(stream.Context(), req.GetOperation(), req.GetIndex(), dial, report))
}

// openMoveIn opens the stream of one VM to the target.
func (s *Service) openMoveIn(ctx context.Context, req *havenv1.MoveOutRequest, vm string) (io.ReadWriteCloser, error) {
	c, release, err := s.cfg.DialNode(req.GetTargetAddr())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.MoveIn(ctx)
	if err == nil {
		err = st.Send(&havenv1.MoveInRequest{Operation: req.GetOperation(), Index: req.GetIndex(), Vm: vm})
	}
	if err != nil {
		cancel()
		release()
		return nil, err
	}
	conn := migrate.NewConn(
		func(b []byte) error { return st.Send(&havenv1.MoveInRequest{Data: b}) },
		func() ([]byte, error) {
			m, err := st.Recv()
			return m.GetData(), err
		},
		st.CloseSend)
	return &streamCloser{Conn: conn, done: func() { cancel(); release() }}, nil
}

// streamCloser ends the sending side, then the call and its connection.
type streamCloser struct {
	*migrate.Conn
	done func()
}

func (c *streamCloser) Close() error {
	err := c.Conn.Close()
	c.done()
	return err
}

// MoveIn implements haven.v1.NodeService.
func (s *Service) MoveIn(stream havenv1.NodeService_MoveInServer) error {
	if s.cfg.Mover == nil {
		return status.Error(codes.Unimplemented, "this agent takes no part in moves")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	conn := migrate.NewConn(
		func(b []byte) error { return stream.Send(&havenv1.MoveInResponse{Data: b}) },
		func() ([]byte, error) {
			m, err := stream.Recv()
			return m.GetData(), err
		},
		nil)
	return s.status(s.cfg.Mover.MoveIn(stream.Context(), first.GetOperation(), first.GetIndex(), first.GetVm(), conn))
}

// RestoreMove implements haven.v1.NodeService.
func (s *Service) RestoreMove(ctx context.Context, req *havenv1.RestoreMoveRequest) (*havenv1.RestoreMoveResponse, error) {
	if s.cfg.Mover == nil {
		return nil, status.Error(codes.Unimplemented, "this agent takes no part in moves")
	}
	if err := s.cfg.Mover.RestoreMove(ctx, req.GetOperation(), req.GetIndex()); err != nil {
		return nil, s.status(err)
	}
	return &havenv1.RestoreMoveResponse{}, nil
}

// ConfirmMoveIn implements haven.v1.NodeService.
func (s *Service) ConfirmMoveIn(ctx context.Context, req *havenv1.ConfirmMoveInRequest) (*havenv1.ConfirmMoveInResponse, error) {
	if s.cfg.Mover == nil {
		return nil, status.Error(codes.Unimplemented, "this agent takes no part in moves")
	}
	if err := s.cfg.Mover.ConfirmMoveIn(ctx, req.GetOperation(), req.GetIndex()); err != nil {
		return nil, s.status(err)
	}
	return &havenv1.ConfirmMoveInResponse{}, nil
}
