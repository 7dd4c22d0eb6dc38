package heartbeat

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func withKeys(keys ...[]byte) func(*Config) { return func(c *Config) { c.Keys = keys } }

func withLabel(l string) func(*Config) { return func(c *Config) { c.Label = l } }

// refused checks that n cannot join to, and that neither lists the other
// a moment later.
func refused(t *testing.T, n, to *node) {
	t.Helper()
	if _, err := n.Join([]string{to.WANAddr()}); err == nil {
		t.Fatalf("%s joined %s", n.name, to.name)
	}
	// The failed join must leave no trace on either side, even once
	// gossip had time to carry one.
	time.Sleep(5 * fast().GossipInterval)
	if _, ok := to.Member(n.name); ok {
		t.Errorf("%s lists %s", to.name, n.name)
	}
	if _, ok := n.Member(to.name); ok {
		t.Errorf("%s lists %s", n.name, to.name)
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	a1 := start(t, "a1", "A", withKeys(k1))
	refused(t, start(t, "other-key", "A", withKeys(k2)), a1)
	refused(t, start(t, "plaintext", "A"), a1)
	// A node that writes with the cluster's key joins, whatever else it
	// holds.
	a2 := start(t, "a2", "A", withKeys(k1, k2))
	a2.join(t, a1)
	waitFor(t, "a1 and a2 together", func() error { return errors.Join(a1.sees("a1", "a2"), a2.sees("a1", "a2")) })
}

func TestWrongLabelCannotJoin(t *testing.T) {
	a1 := start(t, "a1", "A", withLabel("prod"))
	refused(t, start(t, "staging", "A", withLabel("staging")), a1)
	refused(t, start(t, "unlabeled", "A"), a1)
	// With encryption the label is checked too, as authenticated data.
	k := newKey(t)
	e1 := start(t, "e1", "A", withLabel("prod"), withKeys(k))
	refused(t, start(t, "e-staging", "A", withLabel("staging"), withKeys(k)), e1)
	a2 := start(t, "a2", "A", withLabel("prod"))
	a2.join(t, a1)
	waitFor(t, "a1 and a2 together", func() error { return errors.Join(a1.sees("a1", "a2"), a2.sees("a1", "a2")) })
}

// A full rotation, one node at a time as a fan-out does it, keeps every
// node alive in both pools: nobody is ever reported failed, and gossip
// still flows at the end, when only the new key is left.
func TestRotationKeepsGossiping(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	dir := t.TempDir()
	withFile := func(c *Config) { c.KeyringFile = filepath.Join(dir, c.Name, "keyring") }
	a1, a2, b1 := twoSites(t, withKeys(k1), withFile)
	nodes := []*node{a1, a2, b1}
	each := func(step string, f func(*Membership) error) {
		t.Helper()
		for _, n := range nodes {
			if err := f(n.Membership); err != nil {
				t.Fatalf("%s on %s: %v", step, n.name, err)
			}
			// Let gossip run with the cluster half-way through the step.
			time.Sleep(3 * fast().ProbeInterval)
		}
	}
	each("install", func(m *Membership) error { return m.InstallKey(k2) })
	each("use", func(m *Membership) error { return m.UseKey(k2) })
	each("remove", func(m *Membership) error { return m.RemoveKey(k1) })

	for _, n := range nodes {
		ring, err := n.Keyring()
		if err != nil || len(ring.Keys) != 1 || !bytes.Equal(ring.Primary(), k2) {
			t.Errorf("%s keyring %d keys, primary new %v, err %v: want only the new key", n.name, len(ring.Keys), bytes.Equal(ring.Primary(), k2), err)
		}
		saved, err := LoadKeyring(n.cfg.KeyringFile)
		if err != nil || !slices.EqualFunc(saved, [][]byte{k2}, bytes.Equal) {
			t.Errorf("%s saved keyring %d keys, err %v: want only the new key", n.name, len(saved), err)
		}
		n.rec.mu.Lock()
		events := slices.Clone(n.rec.events)
		n.rec.mu.Unlock()
		for _, e := range events {
			if e.Type != EventJoin {
				t.Errorf("%s: %v about %s during the rotation", n.name, e.Type, e.Member.Name)
			}
		}
	}
	// Gossip still flows on the new key alone: a meta change spreads.
	if err := b1.UpdateMeta(Meta{Version: "2", RaftAddr: "127.0.0.1:1", Expect: 3}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b1's new meta on a1 and a2", func() error {
		for _, n := range []*node{a1, a2} {
			if m, _ := n.Member("b1"); m.Meta.Version != "2" {
				return errors.New(n.name + " still sees b1's old meta")
			}
		}
		return nil
	})
	// The old key no longer opens the cluster; the new one does.
	refused(t, start(t, "old-key", "A", withKeys(k1)), a1)
	a3 := start(t, "a3", "A", withKeys(k2))
	a3.join(t, a1)
	waitFor(t, "a3 in", func() error { return a1.sees("a1", "a2", "a3", "b1") })
}

func TestKeyringErrors(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	file := filepath.Join(t.TempDir(), "gossip", "keyring")
	n := start(t, "a1", "A", withKeys(k1), func(c *Config) { c.KeyringFile = file })
	if err := n.UseKey(k2); !errors.Is(err, ErrKeyNotInstalled) {
		t.Errorf("use of a missing key: %v, want ErrKeyNotInstalled", err)
	}
	if err := n.RemoveKey(k1); !errors.Is(err, ErrRemovePrimary) {
		t.Errorf("remove of the primary: %v, want ErrRemovePrimary", err)
	}
	if err := n.InstallKey([]byte("short")); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("install of a 5-byte key: %v, want ErrInvalidKey", err)
	}
	if err := n.InstallKey(k2); err != nil {
		t.Fatal(err)
	}
	if err := n.InstallKey(k2); err != nil {
		t.Errorf("second install: %v, want a no-op", err)
	}
	if ring, _ := n.Keyring(); !slices.EqualFunc(ring.Keys, [][]byte{k1, k2}, bytes.Equal) {
		t.Errorf("ring has %d keys, want k1 then k2", len(ring.Keys))
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file: %v, %v; want mode 0600", fi, err)
	}
	if saved, err := LoadKeyring(file); err != nil || !slices.EqualFunc(saved, [][]byte{k1, k2}, bytes.Equal) {
		t.Errorf("saved %d keys, %v: want k1 then k2", len(saved), err)
	}
	// A change that cannot be saved is not made: the file must never lag
	// behind the ring, or a restart would lose a key peers use.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(file, 0o700); err != nil { // a directory cannot be renamed over
		t.Fatal(err)
	}
	if err := n.UseKey(k2); err == nil {
		t.Error("use with an unwritable keyring file succeeded")
	}
	if ring, _ := n.Keyring(); !bytes.Equal(ring.Primary(), k1) {
		t.Error("the primary changed although the keyring could not be saved")
	}

	p := start(t, "p1", "A")
	if _, err := p.Keyring(); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("keyring of a plaintext node: %v, want ErrNotEncrypted", err)
	}
	if err := p.InstallKey(k1); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("install on a plaintext node: %v, want ErrNotEncrypted", err)
	}
	if _, err := LoadKeyring(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}
