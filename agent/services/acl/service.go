// Package acl is haven.v1.AclService: the bootstrap and the tokens. Who
// may call it is the server's interceptor's business (agent/acl has the
// rules); a handler checks its request, asks the leader to commit, and
// maps the domain error to a status.
package acl

import (
	"context"

	"github.com/haven-ha/haven/agent/acl"
	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// State is what the service reads of the FSM.
type State interface {
	ACLToken(accessorID string) *havenv1.AclToken
	ACLTokens() []*havenv1.AclToken
}

// Leader makes and revokes tokens; it makes the secrets.
type Leader interface {
	BootstrapACL(requestID string) (*havenv1.AclToken, string, error)
	CreateACLToken(name string, role havenv1.AclRole, requestID string) (*havenv1.AclToken, string, error)
	RevokeACLToken(accessorID, requestID string) error
}

// Config is what the service needs.
type Config struct {
	State  State
	Leader Leader
	Locate services.Locate
}

// Service implements haven.v1.AclService.
type Service struct {
	havenv1.UnimplementedAclServiceServer
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// LeaderOnly reports whether the leader must answer method: every write,
// since the leader makes the secrets.
func LeaderOnly(method string) bool {
	switch method {
	case havenv1.AclService_Bootstrap_FullMethodName, havenv1.AclService_CreateToken_FullMethodName, havenv1.AclService_RevokeToken_FullMethodName:
		return true
	}
	return false
}

func (s *Service) status(err error) error { return services.Status(err, s.cfg.Locate) }

// Bootstrap makes the first admin token, once.
func (s *Service) Bootstrap(_ context.Context, req *havenv1.BootstrapRequest) (*havenv1.BootstrapResponse, error) {
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	tok, secret, err := s.cfg.Leader.BootstrapACL(id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.BootstrapResponse{Token: acl.Public(tok), Secret: secret}, nil
}

// CreateToken makes a token.
func (s *Service) CreateToken(_ context.Context, req *havenv1.CreateTokenRequest) (*havenv1.CreateTokenResponse, error) {
	if !fsm.ValidName(req.GetName()) {
		return nil, services.Invalid("name: %q must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", req.GetName())
	}
	if !acl.Allows(req.GetRole(), acl.Read) {
		return nil, services.Invalid("role: %v is not read, operate or admin", req.GetRole())
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	tok, secret, err := s.cfg.Leader.CreateACLToken(req.GetName(), req.GetRole(), id)
	if err != nil {
		return nil, s.status(err)
	}
	return &havenv1.CreateTokenResponse{Token: acl.Public(tok), Secret: secret}, nil
}

// ListTokens lists the tokens without their hashes.
func (s *Service) ListTokens(context.Context, *havenv1.ListTokensRequest) (*havenv1.ListTokensResponse, error) {
	resp := &havenv1.ListTokensResponse{}
	for _, t := range s.cfg.State.ACLTokens() {
		resp.Tokens = append(resp.Tokens, acl.Public(t))
	}
	return resp, nil
}

// RevokeToken revokes a token named by its accessor id or its name.
func (s *Service) RevokeToken(_ context.Context, req *havenv1.RevokeTokenRequest) (*havenv1.RevokeTokenResponse, error) {
	if req.GetToken() == "" {
		return nil, services.Invalid("token: is empty (an accessor id or a name)")
	}
	id, err := services.RequestID(req.GetRequestId())
	if err != nil {
		return nil, err
	}
	tok := s.find(req.GetToken())
	if tok == nil {
		return nil, services.Status(&fsm.Error{Code: fsm.CodeNotFound, Msg: "token " + req.GetToken() + " not found"}, s.cfg.Locate)
	}
	if err := s.cfg.Leader.RevokeACLToken(tok.GetAccessorId(), id); err != nil {
		return nil, s.status(err)
	}
	return &havenv1.RevokeTokenResponse{Token: acl.Public(tok)}, nil
}

func (s *Service) find(ref string) *havenv1.AclToken {
	if t := s.cfg.State.ACLToken(ref); t != nil {
		return t
	}
	for _, t := range s.cfg.State.ACLTokens() {
		if t.GetName() == ref {
			return t
		}
	}
	return nil
}
