package leader

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/haven-ha/haven/agent/acl"
	"github.com/haven-ha/haven/fsm"
)

func TestBootstrapACL(t *testing.T) {
	l := newTestLeader(t, nil)
	tok, secret, err := l.BootstrapACL("r1")
	if err != nil {
		t.Fatal(err)
	}
	stored := l.raft.FSM.ACLToken(tok.GetAccessorId())
	if stored == nil || !bytes.Equal(stored.GetSecretHash(), acl.Hash(secret)) || stored.GetRole() != acl.Admin {
		t.Fatalf("stored %v: want an admin token with the secret's hash", stored)
	}
	if tok.GetCreateIndex() != stored.GetCreateIndex() || tok.GetCreateIndex() == 0 {
		t.Errorf("answered create index %d, stored %d", tok.GetCreateIndex(), stored.GetCreateIndex())
	}
	// A retry of the same request cannot get the secret back.
	if _, _, err := l.BootstrapACL("r1"); !errors.Is(err, ErrConflict) {
		t.Errorf("retried bootstrap: %v, want ErrConflict", err)
	}
	var fe *fsm.Error
	if _, _, err := l.BootstrapACL("r2"); !errors.As(err, &fe) || fe.Code != fsm.CodeFailedPrecondition {
		t.Errorf("second bootstrap: %v, want the FSM's refusal", err)
	}
	if n := len(l.raft.FSM.ACLTokens()); n != 1 {
		t.Errorf("%d tokens, want 1", n)
	}
}

func TestACLTokensOnLeader(t *testing.T) {
	l := newTestLeader(t, nil)
	if _, _, err := l.BootstrapACL(""); err != nil {
		t.Fatal(err)
	}
	tok, secret, err := l.CreateACLToken("ops", acl.Operate, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.raft.FSM.ACLTokenByHash(acl.Hash(secret)); got.GetName() != "ops" {
		t.Fatalf("lookup by the secret: %v", got)
	}
	if err := l.RevokeACLToken(tok.GetAccessorId(), ""); err != nil {
		t.Fatal(err)
	}
	if l.raft.FSM.ACLTokenByHash(acl.Hash(secret)) != nil {
		t.Error("revoked token still found")
	}
}

// TestBootstrapACLReset: with the operator's reset naming the last
// bootstrap, one more bootstrap goes through, under its own name.
func TestBootstrapACLReset(t *testing.T) {
	l := newTestLeader(t, nil)
	first, _, err := l.BootstrapACL("")
	if err != nil {
		t.Fatal(err)
	}
	l.cfg.ACLBootstrapReset = func() uint64 { return first.GetCreateIndex() }
	tok, secret, err := l.BootstrapACL("")
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetName() != fmt.Sprintf("bootstrap-reset-%d", first.GetCreateIndex()) || l.raft.FSM.ACLTokenByHash(acl.Hash(secret)) == nil {
		t.Errorf("reset token %v: want it stored, named after the bootstrap it replaces", tok)
	}
	// The file still names the old index: no third bootstrap.
	if _, _, err := l.BootstrapACL(""); err == nil {
		t.Error("a stale reset bootstrapped again")
	}
}
