package heartbeat

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/hashicorp/memberlist"
)

// Gossip encryption. Both pools share one memberlist.Keyring: the primary
// key encrypts what this node sends, every key on the ring is tried on
// what it receives. That is what makes a rotation free of downtime, as in
// Consul: install the new key on every node (each can now read it), use it
// (each now writes with it; nodes still on the old one are still read),
// then remove the old one.

var (
	// ErrNotEncrypted is returned by the keyring calls of a membership
	// that gossips in plaintext.
	ErrNotEncrypted = errors.New("heartbeat: gossip encryption is off on this node")
	// ErrKeyNotInstalled means UseKey was given a key the ring lacks.
	ErrKeyNotInstalled = errors.New("heartbeat: key is not installed")
	// ErrRemovePrimary means RemoveKey was given the key in use.
	ErrRemovePrimary = errors.New("heartbeat: the primary key cannot be removed")
	// ErrInvalidKey means a key is not 16, 24 or 32 bytes (AES-128/192/256).
	ErrInvalidKey = errors.New("heartbeat: a gossip key must be 16, 24 or 32 bytes")
)

// ValidateKey returns ErrInvalidKey unless key is an AES key size.
func ValidateKey(key []byte) error {
	if memberlist.ValidateKey(key) != nil {
		return fmt.Errorf("%w, got %d", ErrInvalidKey, len(key))
	}
	return nil
}

// KeyringState is a node's keyring: every key, the primary first.
type KeyringState struct {
	Keys [][]byte
}

// Primary is the key this node encrypts with.
func (k KeyringState) Primary() []byte {
	if len(k.Keys) == 0 {
		return nil
	}
	return k.Keys[0]
}

// Keyring returns this node's keys, the primary first.
func (m *Membership) Keyring() (KeyringState, error) {
	if m.keyring == nil {
		return KeyringState{}, ErrNotEncrypted
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	return KeyringState{Keys: cloneKeys(m.keyring.GetKeys())}, nil
}

// InstallKey adds key to the ring, so that messages encrypted with it are
// read; what this node sends is unchanged. Installing a key twice is a no-op.
func (m *Membership) InstallKey(key []byte) error {
	return m.changeKeys(key, func(keys [][]byte) ([][]byte, error) {
		if slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) }) {
			return keys, nil
		}
		return append(keys, key), nil
	})
}

// UseKey makes an installed key the primary: this node encrypts with it
// from now on. Every peer must have it installed first, or they stop
// reading this node.
func (m *Membership) UseKey(key []byte) error {
	return m.changeKeys(key, func(keys [][]byte) ([][]byte, error) {
		i := slices.IndexFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) })
		if i < 0 {
			return nil, ErrKeyNotInstalled
		}
		return append([][]byte{key}, slices.Delete(keys, i, i+1)...), nil
	})
}

// RemoveKey drops a key that is not the primary; removing a key that is
// not on the ring is a no-op.
func (m *Membership) RemoveKey(key []byte) error {
	return m.changeKeys(key, func(keys [][]byte) ([][]byte, error) {
		if bytes.Equal(keys[0], key) {
			return nil, ErrRemovePrimary
		}
		return slices.DeleteFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) }), nil
	})
}

// changeKeys computes the new ring from a copy of the current one, writes
// it to the keyring file, and only then installs it: a node whose file lags
// behind its memory could restart without a key its peers already use,
// and could not join them again.
func (m *Membership) changeKeys(key []byte, change func([][]byte) ([][]byte, error)) error {
	if m.keyring == nil {
		return ErrNotEncrypted
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := m.usable(); err != nil {
		return err
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	old := cloneKeys(m.keyring.GetKeys())
	keys, err := change(cloneKeys(old))
	if err != nil {
		return err
	}
	if m.keyringFile != "" {
		if err := SaveKeyring(m.keyringFile, keys); err != nil {
			return err
		}
	}
	// The ring's own calls keep the order: add what is new, switch the
	// primary, then drop what is gone.
	for _, k := range keys {
		if err := m.keyring.AddKey(k); err != nil {
			return err // validated above
		}
	}
	if !bytes.Equal(keys[0], old[0]) {
		if err := m.keyring.UseKey(keys[0]); err != nil {
			return err
		}
	}
	for _, k := range old {
		if !slices.ContainsFunc(keys, func(n []byte) bool { return bytes.Equal(n, k) }) {
			if err := m.keyring.RemoveKey(k); err != nil {
				return err
			}
		}
	}
	m.log.Info("gossip keyring changed", "keys", len(keys), "primary", KeyID(keys[0]))
	return nil
}

// KeyID names a key in logs without giving it away: a prefix of the
// key's own encoding would leak key material, a prefix of its hash does not.
func KeyID(key []byte) string {
	h := sha256.Sum256(key)
	return hex.EncodeToString(h[:4])
}

func cloneKeys(keys [][]byte) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = slices.Clone(k)
	}
	return out
}

// LoadKeyring reads a keyring file written by SaveKeyring: a JSON array of
// base64 keys, primary first, as Consul's local.keyring. A missing file is
// an error that satisfies errors.Is(err, fs.ErrNotExist).
func LoadKeyring(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var encoded []string
	if err := json.Unmarshal(b, &encoded); err != nil {
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	if len(encoded) == 0 {
		return nil, fmt.Errorf("keyring %s: no keys", path)
	}
	keys := make([][]byte, len(encoded))
	for i, e := range encoded {
		k, err := base64.StdEncoding.DecodeString(e)
		if err != nil {
			return nil, fmt.Errorf("keyring %s: key %d: %w", path, i+1, err)
		}
		if err := ValidateKey(k); err != nil {
			return nil, fmt.Errorf("keyring %s: key %d: %w", path, i+1, err)
		}
		keys[i] = k
	}
	return keys, nil
}

// SaveKeyring writes keys, primary first, to path (mode 0600, its
// directory 0700) so that a crash leaves the old file or the new one,
// never a torn one.
func SaveKeyring(path string, keys [][]byte) error {
	encoded := make([]string, len(keys))
	for i, k := range keys {
		encoded[i] = base64.StdEncoding.EncodeToString(k)
	}
	b, err := json.Marshal(encoded)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".keyring-*")
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	// CreateTemp makes the file 0600 already; say so for the reader.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	return nil
}
