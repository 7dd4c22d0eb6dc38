package devcluster

import (
	"context"
	"fmt"
)

// StopHooks let the caller of Stop report as it goes; a nil hook is skipped.
type StopHooks struct {
	// Killing is called just before the agent of n is killed, with why.
	Killing func(n *Node, why error)
	// Stopped is called once the agent of n has exited, in the order of
	// the nodes given to Stop.
	Stopped func(n *Node)
}

// Stop stops the agents of nodes that run, together: SIGTERM to each, so
// they leave the cluster and stop their VMs in parallel, then it waits for
// every one of them. When ctx is done while some still run (its deadline is
// the grace an agent gets, its cancellation a "now"), those are killed with
// their process groups; context.Cause(ctx) is the why given to
// hooks.Killing. An agent that cannot be sent SIGTERM is killed at once.
// Stop returns once every agent has exited.
func Stop(ctx context.Context, nodes []*Node, hooks StopHooks) {
	type running struct {
		n *Node
		p *Process
	}
	var alive []running
	for _, n := range nodes {
		if p := n.Process(); p != nil && !p.Exited() {
			alive = append(alive, running{n, p})
		}
	}
	kill := func(r running, why error) {
		if r.p.Exited() {
			return
		}
		if hooks.Killing != nil {
			hooks.Killing(r.n, why)
		}
		_ = r.p.Kill()
	}
	for _, r := range alive {
		if err := r.p.Terminate(); err != nil {
			kill(r, fmt.Errorf("SIGTERM: %w", err))
		}
	}
	done := ctx.Done()
	for _, r := range alive {
		for !r.p.Exited() {
			select {
			case <-r.p.Done():
			case <-done:
				for _, r := range alive {
					kill(r, context.Cause(ctx))
				}
				done = nil // killed: now only wait
			}
		}
		if hooks.Stopped != nil {
			hooks.Stopped(r.n)
		}
	}
}
