package leader

import (
	"crypto/rand"
	"fmt"

	"github.com/haven-ha/haven/agent/acl"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// BootstrapACL makes the first admin token, named "bootstrap". Its secret
// is made here, before the command is proposed, and only its hash enters
// the log; the FSM refuses every bootstrap after the first, unless the
// operator asked for a reset (Config.ACLBootstrapReset), whose token is
// named after the bootstrap it replaces.
func (l *Leader) BootstrapACL(requestID string) (*havenv1.AclToken, string, error) {
	var reset uint64
	if l.cfg.ACLBootstrapReset != nil {
		reset = l.cfg.ACLBootstrapReset()
	}
	name := "bootstrap"
	if reset != 0 {
		name = fmt.Sprintf("bootstrap-reset-%d", reset)
	}
	tok, secret, err := acl.NewToken(rand.Reader, name, acl.Admin)
	if err != nil {
		return nil, "", err
	}
	return l.storeToken(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_BootstrapAcl{BootstrapAcl: &havenv1.BootstrapAclCommand{Token: tok, ResetIndex: reset}}}, tok, secret)
}

// CreateACLToken makes a token of name and role.
func (l *Leader) CreateACLToken(name string, role havenv1.AclRole, requestID string) (*havenv1.AclToken, string, error) {
	tok, secret, err := acl.NewToken(rand.Reader, name, role)
	if err != nil {
		return nil, "", err
	}
	return l.storeToken(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_CreateAclToken{CreateAclToken: &havenv1.CreateAclTokenCommand{Token: tok}}}, tok, secret)
}

// storeToken commits c, which stores tok, and answers with the secret. A
// retried request that was applied before cannot have its secret back:
// the first try's secret was never stored, so it is refused.
func (l *Leader) storeToken(c *havenv1.Command, tok *havenv1.AclToken, secret string) (*havenv1.AclToken, string, error) {
	if l.current() == nil {
		return nil, "", ErrNotLeader
	}
	res, err := l.cfg.Raft.Commit(c)
	if err != nil {
		return nil, "", err
	}
	if res.Err != nil {
		return nil, "", res.Err
	}
	if res.Duplicate {
		return nil, "", refuse(ErrConflict, "request %s made a token before, whose secret was shown then and is not kept: revoke that token and make another", c.GetRequestId())
	}
	tok.CreateIndex, tok.CreateTime = res.Index, c.GetTime()
	return tok, secret, nil
}

// RevokeACLToken deletes the token of accessorID.
func (l *Leader) RevokeACLToken(accessorID, requestID string) error {
	if l.current() == nil {
		return ErrNotLeader
	}
	return l.apply(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_RevokeAclToken{RevokeAclToken: &havenv1.RevokeAclTokenCommand{AccessorId: accessorID}}})
}
