package fsm

import (
	"crypto/sha256"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func testToken(id, name string, role havenv1.AclRole) *havenv1.AclToken {
	h := sha256.Sum256([]byte("secret-of-" + name))
	return &havenv1.AclToken{AccessorId: id, Name: name, Role: role, SecretHash: h[:]}
}

func bootstrapCmd(t *havenv1.AclToken) *havenv1.Command {
	return &havenv1.Command{Cmd: &havenv1.Command_BootstrapAcl{BootstrapAcl: &havenv1.BootstrapAclCommand{Token: t}}}
}

func createTokenCmd(t *havenv1.AclToken) *havenv1.Command {
	return &havenv1.Command{Cmd: &havenv1.Command_CreateAclToken{CreateAclToken: &havenv1.CreateAclTokenCommand{Token: t}}}
}

func revokeTokenCmd(id string) *havenv1.Command {
	return &havenv1.Command{Cmd: &havenv1.Command_RevokeAclToken{RevokeAclToken: &havenv1.RevokeAclTokenCommand{AccessorId: id}}}
}

func wantCode(t *testing.T, what string, r *Result, code Code) {
	t.Helper()
	if code == CodeOK {
		if r.Err != nil {
			t.Fatalf("%s: refused: %v", what, r.Err)
		}
		return
	}
	if r.Err == nil || r.Err.Code != code {
		t.Fatalf("%s: got %v, want code %v", what, r.Err, code)
	}
}

func TestACLBootstrapOnce(t *testing.T) {
	a := &applier{t: t, f: New()}
	admin := havenv1.AclRole_ACL_ROLE_ADMIN
	wantCode(t, "bootstrap with a read token", a.apply(t0, bootstrapCmd(testToken("a0", "boot", havenv1.AclRole_ACL_ROLE_READ))), CodeInvalidArgument)
	if a.f.ACLBootstrapIndex() != 0 {
		t.Fatal("a refused bootstrap counted")
	}
	wantCode(t, "bootstrap", a.apply(t0, bootstrapCmd(testToken("a1", "boot", admin))), CodeOK)
	if a.f.ACLBootstrapIndex() != 2 {
		t.Fatalf("bootstrap index %d, want 2", a.f.ACLBootstrapIndex())
	}
	tok := a.f.ACLToken("a1")
	if tok.GetCreateIndex() != 2 || !tok.GetCreateTime().AsTime().Equal(t0) {
		t.Errorf("bootstrap token %v: want create index 2 at %v", tok, t0)
	}
	wantCode(t, "second bootstrap", a.apply(t0, bootstrapCmd(testToken("a2", "boot2", admin))), CodeFailedPrecondition)
	if a.f.ACLToken("a2") != nil {
		t.Error("a refused bootstrap stored its token")
	}
	b := roundTrip(t, a.f)
	ba := &applier{t: t, f: b, index: a.index}
	wantCode(t, "bootstrap after restore", ba.apply(t0, bootstrapCmd(testToken("a3", "boot3", admin))), CodeFailedPrecondition)

	// A reset names the last bootstrap's index: one more bootstrap, the
	// old tokens kept; a stale or wrong index changes nothing.
	reset := func(id, name string, index uint64) *havenv1.Command {
		c := bootstrapCmd(testToken(id, name, admin))
		c.GetBootstrapAcl().ResetIndex = index
		return c
	}
	wantCode(t, "reset at a wrong index", ba.apply(t0, reset("a4", "boot4", 7)), CodeFailedPrecondition)
	wantCode(t, "reset", ba.apply(t0, reset("a5", "boot5", 2)), CodeOK)
	if b.ACLBootstrapIndex() != ba.index || b.ACLToken("a1") == nil || b.ACLToken("a5") == nil {
		t.Fatalf("after the reset: bootstrap index %d (want %d), tokens %v", b.ACLBootstrapIndex(), ba.index, b.ACLTokens())
	}
	wantCode(t, "the same reset again", ba.apply(t0, reset("a6", "boot6", 2)), CodeFailedPrecondition)
}

func TestACLTokens(t *testing.T) {
	a := &applier{t: t, f: New()}
	admin, op, read := havenv1.AclRole_ACL_ROLE_ADMIN, havenv1.AclRole_ACL_ROLE_OPERATE, havenv1.AclRole_ACL_ROLE_READ
	wantCode(t, "bootstrap", a.apply(t0, bootstrapCmd(testToken("a1", "root", admin))), CodeOK)
	wantCode(t, "create ops", a.apply(t0, createTokenCmd(testToken("o1", "ops", op))), CodeOK)
	wantCode(t, "create viewer", a.apply(t0, createTokenCmd(testToken("r1", "viewer", read))), CodeOK)

	bad := testToken("x1", "x", op)
	bad.SecretHash = bad.SecretHash[:8]
	for _, c := range []struct {
		what string
		tok  *havenv1.AclToken
		code Code
	}{
		{"same name", testToken("o2", "ops", op), CodeAlreadyExists},
		{"same accessor", testToken("o1", "ops2", op), CodeAlreadyExists},
		{"same secret", func() *havenv1.AclToken {
			t := testToken("o3", "ops3", op)
			t.SecretHash = testToken("", "ops", op).SecretHash
			return t
		}(), CodeAlreadyExists},
		{"bad name", testToken("o4", "Ops!", op), CodeInvalidArgument},
		{"no role", testToken("o5", "ops5", havenv1.AclRole_ACL_ROLE_UNSPECIFIED), CodeInvalidArgument},
		{"no accessor", testToken("", "ops6", op), CodeInvalidArgument},
		{"short hash", bad, CodeInvalidArgument},
	} {
		wantCode(t, c.what, a.apply(t0, createTokenCmd(c.tok)), c.code)
	}
	if n := len(a.f.ACLTokens()); n != 3 {
		t.Fatalf("%d tokens after refused creates, want 3", n)
	}
	h := testToken("", "ops", op).GetSecretHash()
	if got := a.f.ACLTokenByHash(h); got.GetAccessorId() != "o1" {
		t.Fatalf("lookup by hash: %v, want ops", got)
	}

	wantCode(t, "revoke ops", a.apply(t0, revokeTokenCmd("o1")), CodeOK)
	if a.f.ACLTokenByHash(h) != nil || a.f.ACLToken("o1") != nil {
		t.Error("revoked token still found")
	}
	wantCode(t, "revoke again", a.apply(t0, revokeTokenCmd("o1")), CodeNotFound)
	wantCode(t, "revoke last admin", a.apply(t0, revokeTokenCmd("a1")), CodeFailedPrecondition)
	wantCode(t, "second admin", a.apply(t0, createTokenCmd(testToken("a2", "root2", admin))), CodeOK)
	wantCode(t, "revoke first admin", a.apply(t0, revokeTokenCmd("a1")), CodeOK)
	wantCode(t, "revoke the now last admin", a.apply(t0, revokeTokenCmd("a2")), CodeFailedPrecondition)
}

func TestACLSnapshotRoundTrip(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(t0, bootstrapCmd(testToken("a1", "root", havenv1.AclRole_ACL_ROLE_ADMIN)))
	a.apply(t0, createTokenCmd(testToken("o1", "ops", havenv1.AclRole_ACL_ROLE_OPERATE)))
	a.apply(t0, createTokenCmd(testToken("r1", "viewer", havenv1.AclRole_ACL_ROLE_READ)))
	a.apply(t0, revokeTokenCmd("r1"))
	b := roundTrip(t, a.f)
	if diff := cmp.Diff(a.f.ACLTokens(), b.ACLTokens(), protocmp.Transform()); diff != "" || len(b.ACLTokens()) != 2 {
		t.Errorf("tokens differ (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(a.f.st.acl.byHash, b.st.acl.byHash, protocmp.Transform()); diff != "" {
		t.Errorf("hash index differs (-before +after):\n%s", diff)
	}
	if b.ACLBootstrapIndex() != 1 {
		t.Errorf("bootstrap index %d after restore, want 1", b.ACLBootstrapIndex())
	}
}
