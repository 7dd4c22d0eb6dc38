package server

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/acl"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Tokens is where the interceptor looks tokens up: this agent's copy of
// the FSM. A follower's copy may lag a revoke; a forwarded write is
// checked again on the leader, whose copy does not.
type Tokens interface {
	ACLTokenByHash(hash []byte) *havenv1.AclToken
	ACLBootstrapIndex() uint64
}

// Auth is the interceptor that enforces access control: every call needs
// what agent/acl's rule for its method says. Every refusal is
// PermissionDenied, a missing or unknown token too (one code for "not
// allowed", as the issue asks; the message tells which), and its message
// never holds the secret.
type Auth struct {
	Tokens Tokens
	// IsNode reports whether the caller is a haven node (its verified TLS
	// certificate names node.haven), for the agent-to-agent methods.
	IsNode func(ctx context.Context) bool
	// Audit records every call that changes something; nil records
	// nothing.
	Audit *Audit
	// Logger logs the refusals, at warn.
	Logger *slog.Logger
}

// caller is who made a call, as far as it is known.
type caller struct {
	token *havenv1.AclToken
	peer  string
	// node: a node called without a token, as the rule allows.
	node bool
}

func (c caller) attrs() []any {
	a := []any{"peer", c.peer}
	if c.node {
		a = append(a, "node", true)
	}
	if c.token != nil {
		a = append(a, "token", c.token.GetName(), "accessor", c.token.GetAccessorId())
	}
	return a
}

// check decides a call; the error is the status to answer with.
func (a *Auth) check(ctx context.Context, method string, req any) (caller, acl.Rule, error) {
	c := caller{peer: "unknown"}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		c.peer = p.Addr.String()
	}
	rule := acl.RuleFor(method, req)
	switch {
	case rule.Open:
		return c, rule, nil
	case rule.Node:
		if a.IsNode(ctx) {
			return c, rule, nil
		}
		return c, rule, a.deny(c, method, "%s is agent to agent (or a leg of a fan-out among agents): only a haven node may call it", method)
	}
	secret, ok := "", false
	if md, found := metadata.FromIncomingContext(ctx); found {
		if v := md.Get("authorization"); len(v) > 0 {
			secret, ok = acl.Bearer(v[0])
		}
	}
	if !ok && rule.OrNode && a.IsNode(ctx) {
		c.node = true
		return c, rule, nil
	}
	if !ok {
		hint := ""
		if a.Tokens.ACLBootstrapIndex() == 0 {
			hint = " (the cluster's ACL is not bootstrapped yet: run 'haven acl bootstrap')"
		}
		return c, rule, a.deny(c, method, "%s needs a token with role %s: none given (send 'authorization: Bearer <secret>'; the CLI reads --token or HAVEN_TOKEN)%s", method, acl.RoleName(rule.Role), hint)
	}
	c.token = a.Tokens.ACLTokenByHash(acl.Hash(secret))
	if c.token == nil {
		return c, rule, a.deny(c, method, "%s: the token given is unknown or revoked", method)
	}
	if !acl.Allows(c.token.GetRole(), rule.Role) {
		return c, rule, a.deny(c, method, "%s needs role %s; token %q has role %s", method, acl.RoleName(rule.Role), c.token.GetName(), acl.RoleName(c.token.GetRole()))
	}
	return c, rule, nil
}

func (a *Auth) deny(c caller, method, format string, args ...any) error {
	err := status.Errorf(codes.PermissionDenied, format, args...)
	a.Logger.Warn("call refused", append([]any{"method", method, "reason", status.Convert(err).Message()}, c.attrs()...)...)
	return err
}

// Unary is the interceptor of unary calls.
func (a *Auth) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	c, rule, err := a.check(ctx, info.FullMethod, req)
	if err == nil {
		var resp any
		resp, err = handler(ctx, req)
		a.record(ctx, c, rule, info.FullMethod, req, err)
		return resp, err
	}
	a.record(ctx, c, rule, info.FullMethod, req, err)
	return nil, err
}

// Stream is the interceptor of streaming calls. A stream is checked when
// it opens, before its first message is read (no fan-out leg is a
// stream): a WatchEvents that was allowed goes on after its token is
// revoked, until it ends.
func (a *Auth) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	c, rule, err := a.check(ss.Context(), info.FullMethod, nil)
	if err != nil {
		a.record(ss.Context(), c, rule, info.FullMethod, nil, err)
		return err
	}
	return handler(srv, ss)
}

func (a *Auth) record(ctx context.Context, c caller, rule acl.Rule, method string, req any, err error) {
	if !rule.Audit || a.Audit == nil {
		return
	}
	e := AuditEntry{Time: time.Now().UTC(), Method: method, Peer: c.peer, Subject: acl.Subject(req), Code: status.Code(err).String()}
	if c.token != nil {
		e.Token, e.Accessor = c.token.GetName(), c.token.GetAccessorId()
	}
	e.Node = c.node
	if err != nil {
		e.Error = status.Convert(err).Message()
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(forwardedKey); len(v) > 0 {
			e.ForwardedBy = v[0]
		}
	}
	a.Audit.Record(e)
}
