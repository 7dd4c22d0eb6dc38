// Package keyring is haven.v1.KeyringService: the gossip keys of every
// live node, managed from any agent. A call fans out from the agent that
// receives it to every live member, this one included, as a local_only
// leg that each agent answers for itself; the answers come back per node.
// The legs go agent to agent, carrying the caller's authorization, so a
// node answers a leg under the same rules as the original call.
package keyring

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/internal/logging"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Keyring is this node's gossip keyring (heartbeat.Membership).
type Keyring interface {
	Keyring() (heartbeat.KeyringState, error)
	InstallKey(key []byte) error
	UseKey(key []byte) error
	RemoveKey(key []byte) error
}

// Members is gossip's view of the cluster: the fan-out's targets.
type Members interface {
	Members() []heartbeat.Member
}

// Config is what the service needs.
type Config struct {
	// Name is this node's name; its own leg is a direct call.
	Name    string
	Keyring Keyring
	Members Members
	// Peer returns a client of the agent at a gRPC address.
	Peer func(addr string) (havenv1.KeyringServiceClient, error)
	// LegTimeout bounds each leg; zero means DefaultLegTimeout.
	LegTimeout time.Duration
	Logger     *slog.Logger
}

// DefaultLegTimeout bounds the call to one node: a keyring change is a
// file write and a memory update, so a node that takes longer is down or
// cut off, and the others' answers should not wait for it.
const DefaultLegTimeout = 5 * time.Second

// Service implements haven.v1.KeyringService.
type Service struct {
	havenv1.UnimplementedKeyringServiceServer
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service {
	if cfg.LegTimeout <= 0 {
		cfg.LegTimeout = DefaultLegTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = logging.Discard()
	}
	return &Service{cfg: cfg}
}

// status maps a keyring error to its gRPC status; there is no leader to
// locate, keyring calls are answered by every node.
func (s *Service) status(err error) error {
	return services.Status(err, func() (string, string, error) { return "", "", errors.New("keyring calls need no leader") })
}

// ListKeys gathers every live node's keys.
func (s *Service) ListKeys(ctx context.Context, req *havenv1.ListKeysRequest) (*havenv1.ListKeysResponse, error) {
	if req.GetLocalOnly() {
		ring, err := s.cfg.Keyring.Keyring()
		if err != nil {
			return nil, s.status(err)
		}
		return &havenv1.ListKeysResponse{Nodes: []*havenv1.KeyringNodeResult{{Node: s.cfg.Name, Keys: encodeKeys(ring.Keys)}}}, nil
	}
	if _, err := s.cfg.Keyring.Keyring(); err != nil {
		return nil, s.status(err)
	}
	nodes, failed := s.list(ctx)
	return &havenv1.ListKeysResponse{Keys: tally(nodes), Nodes: nodes, Failed: failed}, nil
}

// list asks every live node for its keys.
func (s *Service) list(ctx context.Context) ([]*havenv1.KeyringNodeResult, uint32) {
	return s.fanOut(ctx, func(ctx context.Context, c havenv1.KeyringServiceClient) (*havenv1.KeyringNodeResult, error) {
		resp, err := c.ListKeys(ctx, &havenv1.ListKeysRequest{LocalOnly: true})
		if err != nil {
			return nil, err
		}
		if len(resp.GetNodes()) != 1 {
			return nil, status.Errorf(codes.Internal, "%d answers to a local keyring list", len(resp.GetNodes()))
		}
		return resp.GetNodes()[0], nil
	})
}

// tally counts, for each key, the nodes that hold it and those that
// encrypt with it.
func tally(nodes []*havenv1.KeyringNodeResult) []*havenv1.KeyringKey {
	byKey := map[string]*havenv1.KeyringKey{}
	for _, n := range nodes {
		for i, k := range n.GetKeys() {
			kk := byKey[k]
			if kk == nil {
				kk = &havenv1.KeyringKey{Key: k}
				byKey[k] = kk
			}
			kk.HeldBy++
			if i == 0 {
				kk.PrimaryOn = append(kk.PrimaryOn, n.GetNode())
			}
		}
	}
	out := make([]*havenv1.KeyringKey, 0, len(byKey))
	for _, k := range byKey {
		out = append(out, k)
	}
	// Most held first, then the one in use, so a rotation reads top down.
	slices.SortFunc(out, func(a, b *havenv1.KeyringKey) int {
		return cmp.Or(cmp.Compare(b.HeldBy, a.HeldBy), cmp.Compare(len(b.PrimaryOn), len(a.PrimaryOn)), strings.Compare(a.Key, b.Key))
	})
	return out
}

// InstallKey adds a key on every live node.
func (s *Service) InstallKey(ctx context.Context, req *havenv1.InstallKeyRequest) (*havenv1.InstallKeyResponse, error) {
	key, err := decodeKey(req.GetKey())
	if err != nil {
		return nil, err
	}
	canon := base64.StdEncoding.EncodeToString(key)
	if req.GetLocalOnly() {
		if err := s.cfg.Keyring.InstallKey(key); err != nil {
			return nil, s.status(err)
		}
		return &havenv1.InstallKeyResponse{Nodes: []*havenv1.KeyringNodeResult{{Node: s.cfg.Name}}}, nil
	}
	if _, err := s.cfg.Keyring.Keyring(); err != nil {
		return nil, s.status(err)
	}
	nodes, failed := s.change(ctx, func(ctx context.Context, c havenv1.KeyringServiceClient) error {
		_, err := c.InstallKey(ctx, &havenv1.InstallKeyRequest{Key: canon, LocalOnly: true})
		return err
	})
	return &havenv1.InstallKeyResponse{Nodes: nodes, Failed: failed}, nil
}

// UseKey makes a key the primary on every live node, once every live node
// holds it.
func (s *Service) UseKey(ctx context.Context, req *havenv1.UseKeyRequest) (*havenv1.UseKeyResponse, error) {
	key, err := decodeKey(req.GetKey())
	if err != nil {
		return nil, err
	}
	canon := base64.StdEncoding.EncodeToString(key)
	if req.GetLocalOnly() {
		if err := s.cfg.Keyring.UseKey(key); err != nil {
			return nil, s.status(err)
		}
		return &havenv1.UseKeyResponse{Nodes: []*havenv1.KeyringNodeResult{{Node: s.cfg.Name}}}, nil
	}
	if _, err := s.cfg.Keyring.Keyring(); err != nil {
		return nil, s.status(err)
	}
	// A node that encrypts with a key some peer lacks is cut off from
	// that peer: refuse unless every live node says it holds the key. A
	// node that cannot be asked might lack it, so it blocks the change too.
	listed, _ := s.list(ctx)
	var lacking, unasked []string
	for _, n := range listed {
		switch {
		case n.GetError() != "":
			unasked = append(unasked, n.GetNode()+" ("+n.GetError()+")")
		case !slices.Contains(n.GetKeys(), canon):
			lacking = append(lacking, n.GetNode())
		}
	}
	if len(lacking) > 0 || len(unasked) > 0 {
		var why []string
		if len(lacking) > 0 {
			why = append(why, "not installed on "+strings.Join(lacking, ", ")+"; install it first")
		}
		if len(unasked) > 0 {
			why = append(why, "cannot tell whether it is installed on "+strings.Join(unasked, ", "))
		}
		return nil, status.Error(codes.FailedPrecondition, "key not made primary anywhere: "+strings.Join(why, "; "))
	}
	nodes, failed := s.change(ctx, func(ctx context.Context, c havenv1.KeyringServiceClient) error {
		_, err := c.UseKey(ctx, &havenv1.UseKeyRequest{Key: canon, LocalOnly: true})
		return err
	})
	return &havenv1.UseKeyResponse{Nodes: nodes, Failed: failed}, nil
}

// RemoveKey drops a key from every live node, unless some node encrypts
// with it.
func (s *Service) RemoveKey(ctx context.Context, req *havenv1.RemoveKeyRequest) (*havenv1.RemoveKeyResponse, error) {
	key, err := decodeKey(req.GetKey())
	if err != nil {
		return nil, err
	}
	canon := base64.StdEncoding.EncodeToString(key)
	if req.GetLocalOnly() {
		if err := s.cfg.Keyring.RemoveKey(key); err != nil {
			return nil, s.status(err)
		}
		return &havenv1.RemoveKeyResponse{Nodes: []*havenv1.KeyringNodeResult{{Node: s.cfg.Name}}}, nil
	}
	if _, err := s.cfg.Keyring.Keyring(); err != nil {
		return nil, s.status(err)
	}
	// Each node refuses to drop its own primary; checking first keeps the
	// others from dropping a key that node still writes with, which would
	// cut it off.
	listed, _ := s.list(ctx)
	var primaryOn []string
	for _, n := range listed {
		if len(n.GetKeys()) > 0 && n.GetKeys()[0] == canon {
			primaryOn = append(primaryOn, n.GetNode())
		}
	}
	if len(primaryOn) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "key is the primary on %s: use another key first", strings.Join(primaryOn, ", "))
	}
	nodes, failed := s.change(ctx, func(ctx context.Context, c havenv1.KeyringServiceClient) error {
		_, err := c.RemoveKey(ctx, &havenv1.RemoveKeyRequest{Key: canon, LocalOnly: true})
		return err
	})
	return &havenv1.RemoveKeyResponse{Nodes: nodes, Failed: failed}, nil
}

// change runs a change's leg on every live node.
func (s *Service) change(ctx context.Context, leg func(context.Context, havenv1.KeyringServiceClient) error) ([]*havenv1.KeyringNodeResult, uint32) {
	return s.fanOut(ctx, func(ctx context.Context, c havenv1.KeyringServiceClient) (*havenv1.KeyringNodeResult, error) {
		return &havenv1.KeyringNodeResult{}, leg(ctx, c)
	})
}

// fanOut runs leg against every live member at once, each bounded by
// LegTimeout, and returns one result per member, by name, and how many
// failed. This node's own leg is a direct call, not a round trip.
func (s *Service) fanOut(ctx context.Context, leg func(context.Context, havenv1.KeyringServiceClient) (*havenv1.KeyringNodeResult, error)) ([]*havenv1.KeyringNodeResult, uint32) {
	ctx = forwardAuth(ctx)
	var targets []heartbeat.Member
	for _, m := range s.cfg.Members.Members() {
		if m.State == heartbeat.StateAlive {
			targets = append(targets, m)
		}
	}
	results := make([]*havenv1.KeyringNodeResult, len(targets))
	var wg sync.WaitGroup
	for i, m := range targets {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, s.cfg.LegTimeout)
			defer cancel()
			r, err := s.leg(ctx, m, leg)
			if err != nil {
				s.cfg.Logger.Warn("keyring call to a node failed", "node", m.Name, "error", err)
				r = &havenv1.KeyringNodeResult{Error: describe(err)}
			}
			r.Node = m.Name
			results[i] = r
		})
	}
	wg.Wait()
	slices.SortFunc(results, func(a, b *havenv1.KeyringNodeResult) int { return strings.Compare(a.GetNode(), b.GetNode()) })
	var failed uint32
	for _, r := range results {
		if r.GetError() != "" {
			failed++
		}
	}
	return results, failed
}

func (s *Service) leg(ctx context.Context, m heartbeat.Member, leg func(context.Context, havenv1.KeyringServiceClient) (*havenv1.KeyringNodeResult, error)) (*havenv1.KeyringNodeResult, error) {
	if m.Name == s.cfg.Name {
		return leg(ctx, local{s})
	}
	if m.Meta.GRPCAddr == "" {
		return nil, status.Error(codes.Unavailable, "node advertises no gRPC address")
	}
	c, err := s.cfg.Peer(m.Meta.GRPCAddr)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return leg(ctx, c)
}

// forwardAuth carries the caller's authorization to the legs, so that
// each node checks the caller's own rights.
func forwardAuth(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) == 0 {
		return ctx
	}
	return metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", auth[0]))
}

func describe(err error) string {
	st := status.Convert(err)
	return st.Code().String() + ": " + st.Message()
}

// decodeKey reads a key as the API and the config file give it.
func decodeKey(s string) ([]byte, error) {
	if s == "" {
		return nil, services.Invalid("key: required")
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, services.Invalid("key: not base64: %v", err)
	}
	if err := heartbeat.ValidateKey(k); err != nil {
		return nil, services.Invalid("key: %v", err)
	}
	return k, nil
}

func encodeKeys(keys [][]byte) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = base64.StdEncoding.EncodeToString(k)
	}
	return out
}

// local is this node's own leg: the handlers called directly.
type local struct{ s *Service }

func (l local) ListKeys(ctx context.Context, req *havenv1.ListKeysRequest, _ ...grpc.CallOption) (*havenv1.ListKeysResponse, error) {
	return l.s.ListKeys(ctx, req)
}

func (l local) InstallKey(ctx context.Context, req *havenv1.InstallKeyRequest, _ ...grpc.CallOption) (*havenv1.InstallKeyResponse, error) {
	return l.s.InstallKey(ctx, req)
}

func (l local) UseKey(ctx context.Context, req *havenv1.UseKeyRequest, _ ...grpc.CallOption) (*havenv1.UseKeyResponse, error) {
	return l.s.UseKey(ctx, req)
}

func (l local) RemoveKey(ctx context.Context, req *havenv1.RemoveKeyRequest, _ ...grpc.CallOption) (*havenv1.RemoveKeyResponse, error) {
	return l.s.RemoveKey(ctx, req)
}
