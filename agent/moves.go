package agent

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// movers is the leader's line to a move's two ends: the node's gRPC
// address from the FSM, over the pooled connection (the control stream is
// small; the state itself flows between the two ends on a connection of
// its own).
type movers struct{ a *Agent }

func (m movers) client(node string) (havenv1.NodeServiceClient, error) {
	n := m.a.fsm.Node(node)
	if n == nil || n.GetGrpcAddr() == "" {
		return nil, fmt.Errorf("node %s has no known address", node)
	}
	conn, err := m.a.pool.Conn(n.GetGrpcAddr())
	if err != nil {
		return nil, err
	}
	return havenv1.NewNodeServiceClient(conn), nil
}

func (m movers) MoveOut(ctx context.Context, node string, req *havenv1.MoveOutRequest, progress func(*havenv1.MoveOutResponse)) error {
	c, err := m.client(node)
	if err != nil {
		return err
	}
	st, err := c.MoveOut(ctx, req)
	if err != nil {
		return err
	}
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		progress(r)
	}
}

func (m movers) ConfirmMoveIn(ctx context.Context, node string, req *havenv1.ConfirmMoveInRequest) error {
	c, err := m.client(node)
	if err != nil {
		return err
	}
	_, err = c.ConfirmMoveIn(ctx, req)
	return err
}

func (m movers) RestoreMove(ctx context.Context, node string, req *havenv1.RestoreMoveRequest) error {
	c, err := m.client(node)
	if err != nil {
		return err
	}
	_, err = c.RestoreMove(ctx, req)
	return err
}

// moveWindow is the HTTP/2 flow-control window of a move's connection:
// with gRPC's default (64 KiB, grown by its BDP estimate) one stream
// would crawl at the start of every round.
const moveWindow = 16 << 20

// dialMove opens a connection of its own for a move's stream.
func (a *Agent) dialMove(addr string) (havenv1.NodeServiceClient, func(), error) {
	opts := append(rpcclient.AgentOptions(a.cfg.Lease.Duration, a.clientTLS()),
		grpc.WithInitialWindowSize(moveWindow), grpc.WithInitialConnWindowSize(moveWindow))
	conn, err := rpcclient.Dial(addr, opts...)
	if err != nil {
		return nil, nil, err
	}
	return havenv1.NewNodeServiceClient(conn), func() { _ = conn.Close() }, nil
}
