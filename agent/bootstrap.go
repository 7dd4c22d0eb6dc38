package agent

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
	"github.com/haven-ha/haven/quorum"
)

// handleEvents consumes gossip events: it tries to bootstrap until this node
// has Raft state, and wakes the leader's reconcile.
func (a *Agent) handleEvents(ctx context.Context) {
	// Retry the bootstrap check on a timer too: a peer that was asked
	// during its own start-up may have had no gRPC server yet.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-a.events:
			a.log.Debug("membership", "event", e.Type, "node", e.Member.Name, "state", e.Member.State)
			select {
			case a.reconcileCh <- struct{}{}:
			default:
			}
		case <-tick.C:
		}
		a.maybeBootstrap(ctx)
	}
}

func (a *Agent) maybeBootstrap(ctx context.Context) {
	a.bootMu.Lock()
	done := a.bootstrapped
	a.bootMu.Unlock()
	if done || a.cfg.BootstrapExpect == 0 {
		return
	}
	if a.hasRaftState() {
		a.setBootstrapped()
		return
	}
	var peers []quorum.Peer
	for _, m := range a.members.Members() {
		if m.State != heartbeat.StateAlive {
			continue
		}
		peers = append(peers, quorum.Peer{ID: m.Name, RaftAddr: m.Meta.RaftAddr, Expect: m.Meta.Expect})
	}
	self := quorum.Peer{ID: a.cfg.Name, Expect: a.cfg.BootstrapExpect}
	// Count and expect values first; only then ask each peer, so that a
	// node waiting for its peers does not dial them every second.
	if servers, why, err := quorum.Bootstrap(self, a.cfg.BootstrapExpect, peers); err != nil {
		a.log.Error("not bootstrapping", "reason", err)
		return
	} else if servers == nil {
		a.log.Debug("not bootstrapping", "reason", why)
		return
	}
	for i := range peers {
		if peers[i].ID == a.cfg.Name {
			continue
		}
		has, err := a.askHasState(ctx, peers[i])
		if err != nil {
			a.log.Info("not bootstrapping yet: cannot ask peer", "peer", peers[i].ID, "error", err)
			return
		}
		peers[i].HasState = has
	}
	servers, why, err := quorum.Bootstrap(self, a.cfg.BootstrapExpect, peers)
	if err != nil || servers == nil {
		a.log.Info("not bootstrapping", "reason", why, "error", err)
		return
	}
	var conf raft.Configuration
	for _, s := range servers {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.RaftAddr)})
	}
	a.log.Info("bootstrapping the cluster", "servers", len(conf.Servers))
	if err := a.raft.BootstrapCluster(conf).Error(); err != nil && err != raft.ErrCantBootstrap {
		a.log.Error("bootstrap failed", "error", err)
		return
	}
	a.setBootstrapped()
}

func (a *Agent) setBootstrapped() {
	a.bootMu.Lock()
	a.bootstrapped = true
	a.bootMu.Unlock()
}

func (a *Agent) askHasState(ctx context.Context, p quorum.Peer) (bool, error) {
	var addr string
	for _, m := range a.members.Members() {
		if m.Name == p.ID {
			addr = m.Meta.GRPCAddr
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := havenv1.NewNodeServiceClient(conn).GetRaftStatus(ctx, &havenv1.GetRaftStatusRequest{})
	if err != nil {
		return false, err
	}
	return resp.GetHasState(), nil
}
