// Package acl is what access control decides, with no transport: the
// roles, which role each API method needs, and the tokens' secrets and
// their hashes. The interceptor that enforces it is agent/server's; the
// tokens live in the FSM.
package acl

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// The roles, each allowed what the ones before it are.
const (
	Read    = havenv1.AclRole_ACL_ROLE_READ
	Operate = havenv1.AclRole_ACL_ROLE_OPERATE
	Admin   = havenv1.AclRole_ACL_ROLE_ADMIN
)

// RoleName is a role as the CLI and the logs write it: read, operate,
// admin.
func RoleName(r havenv1.AclRole) string {
	switch r {
	case Read:
		return "read"
	case Operate:
		return "operate"
	case Admin:
		return "admin"
	}
	return r.String()
}

// ParseRole reads a role's name.
func ParseRole(s string) (havenv1.AclRole, error) {
	for _, r := range []havenv1.AclRole{Read, Operate, Admin} {
		if strings.EqualFold(s, RoleName(r)) {
			return r, nil
		}
	}
	return 0, fmt.Errorf("role %q is not one of read, operate, admin", s)
}

// Allows reports whether a token of role may do what need asks.
func Allows(role, need havenv1.AclRole) bool {
	return role >= Read && role <= Admin && role >= need
}

// Rule is what a caller needs to call a method.
type Rule struct {
	// Open methods need nothing: health, reflection, the bootstrap.
	Open bool
	// Node methods are agent to agent: the caller must be a node (its
	// TLS certificate says so); tokens do not count.
	Node bool
	// Role is the least role of a token that may call the method.
	Role havenv1.AclRole
	// OrNode lets a node call the method without a token: an agent
	// drains itself on its way down through its own API.
	OrNode bool
	// Audit marks a call that changes something (or could: a bootstrap),
	// recorded in the audit log.
	Audit bool
}

func role(r havenv1.AclRole) Rule { return Rule{Role: r, Audit: r >= Operate} }

// methods is every method of the operator's API and the role it needs.
// A method missing here needs admin (Lookup), and the test that walks
// the registry of generated services fails until it is listed.
var methods = map[string]Rule{
	havenv1.ClusterService_GetStatus_FullMethodName:      role(Read),
	havenv1.ClusterService_ListNodes_FullMethodName:      role(Read),
	havenv1.ClusterService_GetGroup_FullMethodName:       role(Read),
	havenv1.ClusterService_ListGroups_FullMethodName:     role(Read),
	havenv1.ClusterService_GetReserve_FullMethodName:     role(Read),
	havenv1.ClusterService_RankNodes_FullMethodName:      role(Read),
	havenv1.ClusterService_WatchEvents_FullMethodName:    role(Read),
	havenv1.ClusterService_GetOperation_FullMethodName:   role(Read),
	havenv1.ClusterService_ListOperations_FullMethodName: role(Read),

	havenv1.ClusterService_StartGroup_FullMethodName:      role(Operate),
	havenv1.ClusterService_StopGroup_FullMethodName:       role(Operate),
	havenv1.ClusterService_MoveGroup_FullMethodName:       role(Operate),
	havenv1.ClusterService_CancelOperation_FullMethodName: role(Operate),
	havenv1.ClusterService_DrainNode_FullMethodName:       {Role: Operate, OrNode: true, Audit: true},
	havenv1.ClusterService_ResumeNode_FullMethodName:      {Role: Operate, OrNode: true, Audit: true},
	havenv1.ClusterService_AttachDisk_FullMethodName:      role(Operate),
	havenv1.ClusterService_DetachDisk_FullMethodName:      role(Operate),
	// Even a dry run: it costs the leader a placement pass.
	havenv1.ClusterService_Balance_FullMethodName: role(Operate),

	havenv1.ClusterService_CreateGroup_FullMethodName: role(Admin),
	havenv1.ClusterService_DeleteGroup_FullMethodName: role(Admin),

	// Bootstrap needs no token (there is none yet); the FSM lets it
	// succeed once.
	havenv1.AclService_Bootstrap_FullMethodName:   {Open: true, Audit: true},
	havenv1.AclService_CreateToken_FullMethodName: role(Admin),
	havenv1.AclService_ListTokens_FullMethodName:  role(Admin),
	havenv1.AclService_RevokeToken_FullMethodName: role(Admin),

	// Gossip keys: a call to any agent fans out to every node (see Leg).
	havenv1.KeyringService_ListKeys_FullMethodName:   role(Read),
	havenv1.KeyringService_InstallKey_FullMethodName: role(Admin),
	havenv1.KeyringService_UseKey_FullMethodName:     role(Admin),
	havenv1.KeyringService_RemoveKey_FullMethodName:  role(Admin),
}

// services are whole services with one rule.
var services = map[string]Rule{
	// Agent to agent: leases, reports, migration streams, fault hands.
	havenv1.NodeService_ServiceDesc.ServiceName: {Node: true},
	// A load balancer's probe and grpcurl's discovery carry no token.
	"grpc.health.v1.Health":                    {Open: true},
	"grpc.reflection.v1.ServerReflection":      {Open: true},
	"grpc.reflection.v1alpha.ServerReflection": {Open: true},
}

// Lookup is the rule of a method ("/pkg.Service/Method"); known is false
// for a method nobody listed, which needs admin.
func Lookup(fullMethod string) (r Rule, known bool) {
	if r, ok := methods[fullMethod]; ok {
		return r, true
	}
	svc, _, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if r, ok := services[svc]; ok {
		return r, true
	}
	return Rule{Role: Admin, Audit: true}, false
}

// Leg reports whether req is one leg of a fan-out among agents (its
// local_only is set: the agent answers for itself alone), which only a
// node may call; the call that fanned out was checked against its token.
func Leg(req any) bool {
	m, ok := req.(proto.Message)
	if !ok {
		return false
	}
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("local_only")
	return fd != nil && fd.Kind() == protoreflect.BoolKind && r.Get(fd).Bool()
}

// RuleFor is the rule of a call to method with req: a fan-out's leg
// needs a node, any other call what Lookup says.
func RuleFor(method string, req any) Rule {
	r, _ := Lookup(method)
	if Leg(req) && !r.Open {
		return Rule{Node: true, Audit: r.Audit}
	}
	return r
}

// SecretBytes is the entropy of a secret: 256 bits.
const SecretBytes = 32

// Hash is what the cluster keeps of a secret.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// NewToken makes a token of name and role with a fresh secret read from
// rand (crypto/rand's Reader), on the leader before it proposes the
// command: the FSM gets the hash only, and stays deterministic.
func NewToken(rand io.Reader, name string, r havenv1.AclRole) (tok *havenv1.AclToken, secret string, err error) {
	b := make([]byte, SecretBytes)
	if _, err := io.ReadFull(rand, b); err != nil {
		return nil, "", fmt.Errorf("token secret: %w", err)
	}
	id, err := uuid.NewRandomFromReader(rand)
	if err != nil {
		return nil, "", fmt.Errorf("token accessor id: %w", err)
	}
	secret = base64.RawURLEncoding.EncodeToString(b)
	return &havenv1.AclToken{AccessorId: id.String(), Name: name, Role: r, SecretHash: Hash(secret)}, secret, nil
}

// Public is t as the API shows it: without its secret's hash.
func Public(t *havenv1.AclToken) *havenv1.AclToken {
	if t == nil {
		return nil
	}
	c := proto.Clone(t).(*havenv1.AclToken)
	c.SecretHash = nil
	return c
}

// Bearer is the secret of an authorization metadata value
// ("Bearer <secret>"), or false.
func Bearer(v string) (string, bool) {
	scheme, secret, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	secret = strings.TrimSpace(secret)
	return secret, secret != ""
}

// subjectFields are the request fields the audit log records: names of
// things, never a key or a secret (a keyring request's key is a secret).
var subjectFields = map[string]bool{"name": true, "group": true, "node": true, "target": true, "id": true, "disk": true, "token": true}

// Subject is what a request names, for the audit log: the string fields
// of subjectFields and the name of a message field that has one
// (spec.name, disk.name).
func Subject(req any) map[string]string {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	out := map[string]string{}
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		switch {
		case fd.IsList() || fd.IsMap():
		case fd.Kind() == protoreflect.StringKind && subjectFields[name]:
			out[name] = v.String()
		case fd.Kind() == protoreflect.MessageKind:
			if nf := fd.Message().Fields().ByName("name"); nf != nil && nf.Kind() == protoreflect.StringKind {
				if s := v.Message().Get(nf).String(); s != "" {
					out[name+".name"] = s
				}
			}
		}
		return true
	})
	return out
}
