package acl

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/agent/acl"
	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/services/servicetest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

type fakeState struct{ tokens []*havenv1.AclToken }

func (s *fakeState) ACLToken(id string) *havenv1.AclToken {
	for _, t := range s.tokens {
		if t.GetAccessorId() == id {
			return t
		}
	}
	return nil
}

func (s *fakeState) ACLTokens() []*havenv1.AclToken { return s.tokens }

type fakeLeader struct {
	err     error
	revoked []string
	created []string
}

func (l *fakeLeader) BootstrapACL(string) (*havenv1.AclToken, string, error) {
	if l.err != nil {
		return nil, "", l.err
	}
	return &havenv1.AclToken{Name: "bootstrap", Role: acl.Admin, SecretHash: []byte("h")}, "s3cret", nil
}

func (l *fakeLeader) CreateACLToken(name string, role havenv1.AclRole, _ string) (*havenv1.AclToken, string, error) {
	l.created = append(l.created, name)
	return &havenv1.AclToken{Name: name, Role: role, SecretHash: []byte("h")}, "s3cret", l.err
}

func (l *fakeLeader) RevokeACLToken(id, _ string) error {
	l.revoked = append(l.revoked, id)
	return l.err
}

func newService() (*Service, *fakeLeader) {
	l := &fakeLeader{}
	st := &fakeState{tokens: []*havenv1.AclToken{
		{AccessorId: "a-1", Name: "bootstrap", Role: acl.Admin, SecretHash: []byte("h1")},
		{AccessorId: "a-2", Name: "ops", Role: acl.Operate, SecretHash: []byte("h2")},
	}}
	return New(Config{State: st, Leader: l, Locate: func() (string, string, error) { return "n1", "127.0.0.1:1", nil }}), l
}

func TestBootstrap(t *testing.T) {
	s, l := newService()
	resp, err := s.Bootstrap(context.Background(), &havenv1.BootstrapRequest{})
	if err != nil || resp.GetSecret() != "s3cret" || resp.GetToken().GetSecretHash() != nil {
		t.Fatalf("bootstrap: %v, %v: want the secret and no hash", resp, err)
	}
	l.err = consensus.ErrNotLeader
	_, err = s.Bootstrap(context.Background(), &havenv1.BootstrapRequest{})
	servicetest.WantStatus(t, err, codes.Unavailable, "not the leader")
}

func TestCreateToken(t *testing.T) {
	s, l := newService()
	resp, err := s.CreateToken(context.Background(), &havenv1.CreateTokenRequest{Name: "viewer", Role: acl.Read})
	if err != nil || resp.GetSecret() != "s3cret" || resp.GetToken().GetSecretHash() != nil {
		t.Fatalf("create: %v, %v", resp, err)
	}
	_, err = s.CreateToken(context.Background(), &havenv1.CreateTokenRequest{Name: "Bad Name", Role: acl.Read})
	servicetest.WantStatus(t, err, codes.InvalidArgument, "name:")
	_, err = s.CreateToken(context.Background(), &havenv1.CreateTokenRequest{Name: "x"})
	servicetest.WantStatus(t, err, codes.InvalidArgument, "role:")
	if len(l.created) != 1 {
		t.Errorf("invalid requests reached the leader: %v", l.created)
	}
}

func TestListTokens(t *testing.T) {
	s, _ := newService()
	resp, err := s.ListTokens(context.Background(), &havenv1.ListTokensRequest{})
	if err != nil || len(resp.GetTokens()) != 2 {
		t.Fatalf("list: %v, %v", resp, err)
	}
	for _, tok := range resp.GetTokens() {
		if tok.GetSecretHash() != nil {
			t.Errorf("%s listed with its hash", tok.GetName())
		}
	}
	if s.cfg.State.ACLTokens()[0].GetSecretHash() == nil {
		t.Error("listing stripped the state's own record")
	}
}

func TestRevokeToken(t *testing.T) {
	s, l := newService()
	for _, ref := range []string{"ops", "a-2"} {
		resp, err := s.RevokeToken(context.Background(), &havenv1.RevokeTokenRequest{Token: ref})
		if err != nil || resp.GetToken().GetName() != "ops" {
			t.Fatalf("revoke %s: %v, %v", ref, resp, err)
		}
	}
	if len(l.revoked) != 2 || l.revoked[0] != "a-2" || l.revoked[1] != "a-2" {
		t.Errorf("revoked %v, want a-2 twice", l.revoked)
	}
	_, err := s.RevokeToken(context.Background(), &havenv1.RevokeTokenRequest{Token: "nobody"})
	servicetest.WantStatus(t, err, codes.NotFound, "token nobody not found")
	_, err = s.RevokeToken(context.Background(), &havenv1.RevokeTokenRequest{})
	servicetest.WantStatus(t, err, codes.InvalidArgument, "token: is empty")
	l.err = errors.New("boom")
	_, err = s.RevokeToken(context.Background(), &havenv1.RevokeTokenRequest{Token: "ops"})
	servicetest.WantStatus(t, err, codes.Internal, "boom")
}
