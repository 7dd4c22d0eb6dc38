// Package server is the agent's gRPC server: the listener, the limits,
// the interceptor chain (metrics, access control, forwarding to the
// leader), health and reflection. The services it
// serves are built elsewhere and registered by the caller.
package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/haven-ha/haven/agent/metrics"
	"github.com/haven-ha/haven/internal/rpcclient"
	"github.com/haven-ha/haven/internal/tlsutil"
)

// MaxMessageBytes bounds every request: a group spec is a few KiB, so
// anything near this is a mistake or an attack, refused with
// ResourceExhausted before it is decoded.
const MaxMessageBytes = 1 << 20

// Config is what a Server needs.
type Config struct {
	// Addr is the host:port to listen on.
	Addr string
	// Forward sends leader-only calls to the leader; nil serves every
	// call here.
	Forward *Forwarder
	// Metrics counts and times every call; nil counts nothing.
	Metrics *metrics.Metrics
	// TLS, when set, serves over mutual TLS (see internal/tlsutil); nil
	// serves plaintext.
	TLS *tls.Config
	// Auth checks every call's token or node; nil lets every call in
	// (acl.enabled false).
	Auth   *Auth
	Logger *slog.Logger
}

// Server is the agent's gRPC server.
type Server struct {
	*grpc.Server
	lis net.Listener
	log *slog.Logger
}

// New listens on cfg.Addr and builds the server with its interceptors;
// register the services, then Serve.
func New(cfg Config) (*Server, error) {
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("grpc listener: %w", err)
	}
	// Metrics first: a forwarded call is counted where it arrived too.
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	if cfg.Metrics != nil {
		unary = append(unary, cfg.Metrics.UnaryInterceptor)
		stream = append(stream, cfg.Metrics.StreamInterceptor)
	}
	// Auth before forwarding: a follower refuses what the caller may not
	// do, and the leader checks again what was forwarded.
	if cfg.Auth != nil {
		unary = append(unary, cfg.Auth.Unary)
		stream = append(stream, cfg.Auth.Stream)
	}
	if cfg.Forward != nil {
		unary = append(unary, cfg.Forward.Unary)
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...)}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(tlsutil.Credentials(cfg.TLS)))
	}
	g := grpc.NewServer(opts...)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	return &Server{Server: g, lis: lis, log: cfg.Logger}, nil
}

// Addr is where the server listens.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Serve serves until Stop.
func (s *Server) Serve() {
	if err := s.Server.Serve(s.lis); err != nil {
		s.log.Error("grpc server stopped", "error", err)
	}
}

// Stop lets calls in flight finish for at most wait, then cuts them.
func (s *Server) Stop(wait time.Duration) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		s.Server.Stop()
	}
}

// forwardedKey marks a request a follower forwarded, so that a node that
// lost leadership meanwhile answers it (with "not the leader") instead of
// forwarding it again.
const forwardedKey = "haven-forwarded"

// Forwarder is the interceptor that sends leader-only calls, received on
// a node that does not lead, to the leader once, with
// ClientConn.Invoke. The leader answers; its status passes through.
type Forwarder struct {
	// Self is this node's name.
	Self string
	// LeaderOnly reports whether a call must be answered by the leader.
	LeaderOnly func(method string, req any) bool
	IsLeader   func() bool
	// Locate names the leader and its gRPC address.
	Locate func() (name, addr string, err error)
	Pool   *rpcclient.Pool
}

// Unary is the interceptor.
func (f *Forwarder) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !f.LeaderOnly(info.FullMethod, req) || f.IsLeader() {
		return handler(ctx, req)
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		// Leadership moved while it travelled: the handler says where
		// it went, and the caller retries with the same request id.
		return handler(ctx, req)
	}
	name, addr, err := f.Locate()
	if err != nil || name == f.Self {
		return handler(ctx, req)
	}
	reply, err := newReply(info.FullMethod)
	if err != nil {
		return nil, err
	}
	conn, err := f.Pool.Conn(addr)
	if err != nil {
		return handler(ctx, req)
	}
	// The agent that first receives a write names it, as the API promises.
	req = rpcclient.WithRequestID(req)
	ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, f.Self)
	// The caller's token goes on, for the leader to check against its own
	// state (this node's may lag a revoke).
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v[0])
		}
	}
	if err := conn.Invoke(ctx, info.FullMethod, req, reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// newReply makes an empty response of the method's output type, found in
// the registry of generated types ("/pkg.Service/Method").
func newReply(fullMethod string) (proto.Message, error) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok {
		return nil, fmt.Errorf("method %q: not /service/method", fullMethod)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil, fmt.Errorf("method %q: %w", fullMethod, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("method %q: %s is not a service", fullMethod, svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return nil, fmt.Errorf("method %q: no such method", fullMethod)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, fmt.Errorf("method %q: %w", fullMethod, err)
	}
	return mt.New().Interface(), nil
}
