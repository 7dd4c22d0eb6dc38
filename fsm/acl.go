package fsm

import (
	"crypto/sha256"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ACLBootstrapResetFile, in the leader's data directory, holding the index
// of the last bootstrap, allows one more bootstrap: the way back in for an
// operator who lost the bootstrap secret (as Consul's acl-bootstrap-reset).
// Whoever may write there owns the node anyway.
const ACLBootstrapResetFile = "acl-bootstrap-reset"

// aclState is the ACL part of the state: the tokens by accessor id, an
// index of them by secret hash (derived, never stored) and the bootstrap.
type aclState struct {
	bootstrapIndex uint64
	tokens         map[string]*havenv1.AclToken
	byHash         map[string]*havenv1.AclToken
}

func newACLState() aclState {
	return aclState{tokens: map[string]*havenv1.AclToken{}, byHash: map[string]*havenv1.AclToken{}}
}

func (a aclState) clone() aclState {
	c := aclState{bootstrapIndex: a.bootstrapIndex, tokens: make(map[string]*havenv1.AclToken, len(a.tokens)), byHash: make(map[string]*havenv1.AclToken, len(a.byHash))}
	for k, v := range a.tokens {
		c.tokens[k] = v
	}
	for k, v := range a.byHash {
		c.byHash[k] = v
	}
	return c
}

func (a aclState) put(t *havenv1.AclToken) {
	a.tokens[t.GetAccessorId()] = t
	a.byHash[string(t.GetSecretHash())] = t
}

// checkToken refuses a token record that could not authorize correctly.
func (s *state) checkToken(t *havenv1.AclToken) *Error {
	switch {
	case t.GetAccessorId() == "" || len(t.GetAccessorId()) > 64:
		return errorf(CodeInvalidArgument, "token: accessor id must be 1-64 bytes")
	case !ValidName(t.GetName()):
		return errorf(CodeInvalidArgument, "token: name %q must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", t.GetName())
	case t.GetRole() < havenv1.AclRole_ACL_ROLE_READ || t.GetRole() > havenv1.AclRole_ACL_ROLE_ADMIN:
		return errorf(CodeInvalidArgument, "token %q: role %v is not read, operate or admin", t.GetName(), t.GetRole())
	case len(t.GetSecretHash()) != sha256.Size:
		return errorf(CodeInvalidArgument, "token %q: secret hash is %d bytes, want %d", t.GetName(), len(t.GetSecretHash()), sha256.Size)
	}
	if _, ok := s.acl.tokens[t.GetAccessorId()]; ok {
		return errorf(CodeAlreadyExists, "token accessor id %s already exists", t.GetAccessorId())
	}
	if _, ok := s.acl.byHash[string(t.GetSecretHash())]; ok {
		return errorf(CodeAlreadyExists, "token %q: a token with this secret already exists", t.GetName())
	}
	for _, o := range s.acl.tokens {
		if o.GetName() == t.GetName() {
			return errorf(CodeAlreadyExists, "token %q already exists", t.GetName())
		}
	}
	return nil
}

func (s *state) storeToken(index uint64, t *havenv1.AclToken, now time.Time) {
	t = proto.Clone(t).(*havenv1.AclToken)
	t.CreateIndex = index
	t.CreateTime = timestamppb.New(now)
	s.acl.put(t)
}

func (s *state) bootstrapACL(index uint64, c *havenv1.BootstrapAclCommand, now time.Time) *Error {
	if s.acl.bootstrapIndex != 0 && c.GetResetIndex() != s.acl.bootstrapIndex {
		return errorf(CodeFailedPrecondition, "ACL already bootstrapped at index %d (to bootstrap again, write %d into the leader's data_dir/%s)", s.acl.bootstrapIndex, s.acl.bootstrapIndex, ACLBootstrapResetFile)
	}
	if c.GetToken().GetRole() != havenv1.AclRole_ACL_ROLE_ADMIN {
		return errorf(CodeInvalidArgument, "bootstrap token: role %v, want admin", c.GetToken().GetRole())
	}
	if err := s.checkToken(c.GetToken()); err != nil {
		return err
	}
	s.acl.bootstrapIndex = index
	s.storeToken(index, c.GetToken(), now)
	return nil
}

func (s *state) createACLToken(index uint64, c *havenv1.CreateAclTokenCommand, now time.Time) *Error {
	if err := s.checkToken(c.GetToken()); err != nil {
		return err
	}
	s.storeToken(index, c.GetToken(), now)
	return nil
}

func (s *state) revokeACLToken(c *havenv1.RevokeAclTokenCommand) *Error {
	t, ok := s.acl.tokens[c.GetAccessorId()]
	if !ok {
		return errorf(CodeNotFound, "token %s not found", c.GetAccessorId())
	}
	if t.GetRole() == havenv1.AclRole_ACL_ROLE_ADMIN {
		admins := 0
		for _, o := range s.acl.tokens {
			if o.GetRole() == havenv1.AclRole_ACL_ROLE_ADMIN {
				admins++
			}
		}
		if admins == 1 {
			return errorf(CodeFailedPrecondition, "token %q is the last admin token: create another admin token first", t.GetName())
		}
	}
	delete(s.acl.tokens, t.GetAccessorId())
	delete(s.acl.byHash, string(t.GetSecretHash()))
	return nil
}

// ACLTokenByHash is the token whose secret hashes to hash, or nil.
func (f *FSM) ACLTokenByHash(hash []byte) *havenv1.AclToken {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.acl.byHash[string(hash)]
}

// ACLToken is the token of that accessor id, or nil.
func (f *FSM) ACLToken(accessorID string) *havenv1.AclToken {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.acl.tokens[accessorID]
}

// ACLTokens returns every token sorted by name.
func (f *FSM) ACLTokens() []*havenv1.AclToken {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sorted(f.st.acl.tokens, func(t *havenv1.AclToken) string { return t.GetName() })
}

// ACLBootstrapIndex is the index of the ACL bootstrap; 0 before it.
func (f *FSM) ACLBootstrapIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.acl.bootstrapIndex
}
