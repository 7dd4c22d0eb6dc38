package keyring

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/heartbeat"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ring is a node's keyring with heartbeat's rules.
type ring struct {
	mu   sync.Mutex
	keys [][]byte // nil: plaintext
}

func (r *ring) Keyring() (heartbeat.KeyringState, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys == nil {
		return heartbeat.KeyringState{}, heartbeat.ErrNotEncrypted
	}
	return heartbeat.KeyringState{Keys: slices.Clone(r.keys)}, nil
}

func (r *ring) InstallKey(k []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.ContainsFunc(r.keys, func(x []byte) bool { return bytes.Equal(x, k) }) {
		r.keys = append(r.keys, k)
	}
	return nil
}

func (r *ring) UseKey(k []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.keys, func(x []byte) bool { return bytes.Equal(x, k) })
	if i < 0 {
		return heartbeat.ErrKeyNotInstalled
	}
	r.keys = append([][]byte{k}, slices.Delete(r.keys, i, i+1)...)
	return nil
}

func (r *ring) RemoveKey(k []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if bytes.Equal(r.keys[0], k) {
		return heartbeat.ErrRemovePrimary
	}
	r.keys = slices.DeleteFunc(r.keys, func(x []byte) bool { return bytes.Equal(x, k) })
	return nil
}

func (r *ring) has(k []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.keys, func(x []byte) bool { return bytes.Equal(x, k) })
}

func (r *ring) primary() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[0]
}

type members []heartbeat.Member

func (m members) Members() []heartbeat.Member { return m }

// cluster is one Service per node, reaching each other through peer,
// which passes the outgoing metadata on as a server would receive it.
type cluster struct {
	rings    map[string]*ring
	svcs     map[string]*Service
	down     map[string]bool // their Peer dial fails
	mu       sync.Mutex
	seenAuth map[string][]string // node -> authorization of the legs it got
}

func newCluster(keys map[string][][]byte, dead ...string) *cluster {
	c := &cluster{rings: map[string]*ring{}, svcs: map[string]*Service{}, down: map[string]bool{}, seenAuth: map[string][]string{}}
	var ms members
	for name, k := range keys {
		c.rings[name] = &ring{keys: k}
		st := heartbeat.StateAlive
		if slices.Contains(dead, name) {
			st = heartbeat.StateDead
		}
		ms = append(ms, heartbeat.Member{Name: name, State: st, Meta: heartbeat.Meta{GRPCAddr: name + ":7949"}})
	}
	for name := range keys {
		c.svcs[name] = New(Config{Name: name, Keyring: c.rings[name], Members: ms, Peer: c.peer})
	}
	return c
}

func (c *cluster) peer(addr string) (havenv1.KeyringServiceClient, error) {
	name, _, _ := strings.Cut(addr, ":")
	if c.down[name] {
		return nil, errors.New("connection refused")
	}
	return wire{c, name}, nil
}

// wire delivers a call to a node's service as a remote call would.
type wire struct {
	c    *cluster
	name string
}

func (w wire) in(ctx context.Context) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	w.c.mu.Lock()
	w.c.seenAuth[w.name] = append(w.c.seenAuth[w.name], md.Get("authorization")...)
	w.c.mu.Unlock()
	return metadata.NewIncomingContext(ctx, md)
}

func (w wire) ListKeys(ctx context.Context, req *havenv1.ListKeysRequest, _ ...grpc.CallOption) (*havenv1.ListKeysResponse, error) {
	return w.c.svcs[w.name].ListKeys(w.in(ctx), req)
}

func (w wire) InstallKey(ctx context.Context, req *havenv1.InstallKeyRequest, _ ...grpc.CallOption) (*havenv1.InstallKeyResponse, error) {
	return w.c.svcs[w.name].InstallKey(w.in(ctx), req)
}

func (w wire) UseKey(ctx context.Context, req *havenv1.UseKeyRequest, _ ...grpc.CallOption) (*havenv1.UseKeyResponse, error) {
	return w.c.svcs[w.name].UseKey(w.in(ctx), req)
}

func (w wire) RemoveKey(ctx context.Context, req *havenv1.RemoveKeyRequest, _ ...grpc.CallOption) (*havenv1.RemoveKeyResponse, error) {
	return w.c.svcs[w.name].RemoveKey(w.in(ctx), req)
}

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

func withAuth(secret string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+secret))
}

func TestListTalliesEveryLiveNode(t *testing.T) {
	k1, k2 := key(1), key(2)
	c := newCluster(map[string][][]byte{"n1": {k1, k2}, "n2": {k2, k1}, "n3": {k1}, "n4": {k1}, "gone": {k1}}, "gone")
	c.down["n4"] = true
	resp, err := c.svcs["n1"].ListKeys(withAuth("s3cret"), &havenv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range resp.GetNodes() {
		names = append(names, n.GetNode())
	}
	if !slices.Equal(names, []string{"n1", "n2", "n3", "n4"}) || resp.GetFailed() != 1 {
		t.Fatalf("nodes %v, failed %d: want the 4 live ones, n4 failed", names, resp.GetFailed())
	}
	if e := resp.GetNodes()[3].GetError(); !strings.HasPrefix(e, "Unavailable: connection refused") {
		t.Errorf("n4's error %q", e)
	}
	if got := resp.GetNodes()[1].GetKeys(); !slices.Equal(got, []string{b64(k2), b64(k1)}) {
		t.Errorf("n2's keys %v, want k2 then k1", got)
	}
	keys := resp.GetKeys()
	if len(keys) != 2 ||
		keys[0].GetKey() != b64(k1) || keys[0].GetHeldBy() != 3 || !slices.Equal(keys[0].GetPrimaryOn(), []string{"n1", "n3"}) ||
		keys[1].GetKey() != b64(k2) || keys[1].GetHeldBy() != 2 || !slices.Equal(keys[1].GetPrimaryOn(), []string{"n2"}) {
		t.Errorf("keys %v: want k1 held by 3, primary on n1 n3; k2 held by 2, primary on n2", keys)
	}
	// The legs carried the caller's token; the receiving node's own leg
	// is no round trip.
	for _, n := range []string{"n2", "n3"} {
		if got := c.seenAuth[n]; !slices.Equal(got, []string{"Bearer s3cret"}) {
			t.Errorf("%s's leg carried authorization %v", n, got)
		}
	}
	if c.seenAuth["n1"] != nil || c.seenAuth["gone"] != nil {
		t.Errorf("legs to n1 (self) %v, to the dead node %v: want none", c.seenAuth["n1"], c.seenAuth["gone"])
	}
}

// A rotation through the API: install, use, remove, with the refusals
// that keep a node from being cut off on the way.
func TestRotation(t *testing.T) {
	k1, k2 := key(1), key(2)
	c := newCluster(map[string][][]byte{"n1": {k1}, "n2": {k1}, "n3": {k1}})
	svc := c.svcs["n2"]
	ctx := context.Background()

	// n3 is out of reach: install reaches the others and says so.
	c.down["n3"] = true
	inst, err := svc.InstallKey(ctx, &havenv1.InstallKeyRequest{Key: b64(k2)})
	if err != nil || inst.GetFailed() != 1 || inst.GetNodes()[2].GetError() == "" {
		t.Fatalf("install with n3 down: %v, %v; want n3 failed", inst, err)
	}
	if !c.rings["n1"].has(k2) || c.rings["n3"].has(k2) {
		t.Fatal("install did not reach n1, or reached n3")
	}
	// Use is refused while a node cannot be asked, and while one lacks it.
	_, err = svc.UseKey(ctx, &havenv1.UseKeyRequest{Key: b64(k2)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "n3") {
		t.Errorf("use with n3 down: %v, want FailedPrecondition naming n3", err)
	}
	c.down["n3"] = false
	_, err = svc.UseKey(ctx, &havenv1.UseKeyRequest{Key: b64(k2)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not installed on n3") {
		t.Errorf("use with n3 lacking the key: %v, want FailedPrecondition, not installed on n3", err)
	}
	for n, r := range c.rings {
		if !bytes.Equal(r.primary(), k1) {
			t.Fatalf("a refused use changed %s's primary", n)
		}
	}
	if inst, err := svc.InstallKey(ctx, &havenv1.InstallKeyRequest{Key: b64(k2)}); err != nil || inst.GetFailed() != 0 {
		t.Fatalf("second install: %v, %v", inst, err)
	}
	if use, err := svc.UseKey(ctx, &havenv1.UseKeyRequest{Key: b64(k2)}); err != nil || use.GetFailed() != 0 || len(use.GetNodes()) != 3 {
		t.Fatalf("use: %v, %v", use, err)
	}
	// Remove refuses a key some node writes with.
	c.rings["n3"].UseKey(k1) // as if n3 had missed the use
	_, err = svc.RemoveKey(ctx, &havenv1.RemoveKeyRequest{Key: b64(k1)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "primary on n3") {
		t.Errorf("remove of n3's primary: %v, want FailedPrecondition, primary on n3", err)
	}
	if !c.rings["n1"].has(k1) {
		t.Error("a refused remove dropped the key on n1")
	}
	c.rings["n3"].UseKey(k2)
	if rm, err := svc.RemoveKey(ctx, &havenv1.RemoveKeyRequest{Key: b64(k1)}); err != nil || rm.GetFailed() != 0 {
		t.Fatalf("remove: %v, %v", rm, err)
	}
	for n, r := range c.rings {
		if k, _ := r.Keyring(); len(k.Keys) != 1 || !bytes.Equal(k.Keys[0], k2) {
			t.Errorf("%s ends with %d keys, want only k2", n, len(k.Keys))
		}
	}
}

func TestRefusals(t *testing.T) {
	c := newCluster(map[string][][]byte{"n1": {key(1)}})
	plain := newCluster(map[string][][]byte{"p1": nil})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"not base64", func() error {
			_, err := c.svcs["n1"].InstallKey(ctx, &havenv1.InstallKeyRequest{Key: "%%%"})
			return err
		}, codes.InvalidArgument, "not base64"},
		{"short key", func() error {
			_, err := c.svcs["n1"].UseKey(ctx, &havenv1.UseKeyRequest{Key: b64([]byte("short"))})
			return err
		}, codes.InvalidArgument, "16, 24 or 32 bytes"},
		{"no key", func() error { _, err := c.svcs["n1"].RemoveKey(ctx, &havenv1.RemoveKeyRequest{}); return err }, codes.InvalidArgument, "key: required"},
		{"local use of a missing key", func() error {
			_, err := c.svcs["n1"].UseKey(ctx, &havenv1.UseKeyRequest{Key: b64(key(9)), LocalOnly: true})
			return err
		}, codes.FailedPrecondition, "not installed"},
		{"local remove of the primary", func() error {
			_, err := c.svcs["n1"].RemoveKey(ctx, &havenv1.RemoveKeyRequest{Key: b64(key(1)), LocalOnly: true})
			return err
		}, codes.FailedPrecondition, "primary"},
		{"plaintext list", func() error { _, err := plain.svcs["p1"].ListKeys(ctx, &havenv1.ListKeysRequest{}); return err }, codes.FailedPrecondition, "encryption is off"},
		{"plaintext install", func() error {
			_, err := plain.svcs["p1"].InstallKey(ctx, &havenv1.InstallKeyRequest{Key: b64(key(1))})
			return err
		}, codes.FailedPrecondition, "encryption is off"},
	} {
		err := tc.call()
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %v with %q", tc.name, err, tc.code, tc.msg)
		}
	}
}
