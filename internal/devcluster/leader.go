package devcluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// StatusTimeout bounds each GetStatus of Poll, so that a hung or paused
// agent costs a round no more than this.
const StatusTimeout = 2 * time.Second

// Answer is one node's reply to GetStatus: Status or Err.
type Answer struct {
	Node   *Node
	Status *havenv1.GetStatusResponse
	Err    error
}

// Poll asks every node for its status at once and returns the answers in
// the order of nodes.
func Poll(ctx context.Context, nodes []*Node) []Answer {
	answers := make([]Answer, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, StatusTimeout)
			defer cancel()
			st, err := n.Client().GetStatus(cctx, &havenv1.GetStatusRequest{})
			answers[i] = Answer{Node: n, Status: st, Err: err}
		})
	}
	wg.Wait()
	return answers
}

// Leader returns the node that every answer names as leader. Asking every
// node, not just one, proves that gossip and Raft have both reached each of
// them; the leader must be one of the nodes asked, so that a leader that
// has just died but is still named does not count. The error says who
// failed or disagrees.
func Leader(answers []Answer) (*Node, error) {
	if len(answers) == 0 {
		return nil, errors.New("no agent to ask")
	}
	name := ""
	for _, a := range answers {
		switch l := a.Status.GetLeader(); {
		case a.Err != nil:
			return nil, fmt.Errorf("%s: %w", a.Node.Name, a.Err)
		case l == "":
			return nil, fmt.Errorf("%s sees no leader", a.Node.Name)
		case name != "" && l != name:
			return nil, fmt.Errorf("%s sees leader %s, %s sees %s", a.Node.Name, l, answers[0].Node.Name, name)
		default:
			name = l
		}
	}
	for _, a := range answers {
		if a.Node.Name == name {
			return a.Node, nil
		}
	}
	return nil, fmt.Errorf("leader %q is none of the agents asked", name)
}
