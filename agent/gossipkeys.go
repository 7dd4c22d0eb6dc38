package agent

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"unicode"

	"github.com/haven-ha/haven/heartbeat"
)

// keyringFile is where the agent keeps its gossip keyring, primary first.
func (c *Config) keyringFile() string { return filepath.Join(c.DataDir, "gossip", "keyring") }

// validateKeys checks what the file says of gossip encryption; whether
// the agent has a key at all depends on its data_dir (gossipKeys).
func (g GossipConfig) validateKeys() error {
	if g.Plaintext && g.Encrypt != "" {
		return errors.New("gossip.encrypt: set together with gossip.plaintext; choose one")
	}
	if g.Encrypt != "" {
		if _, err := decodeGossipKey(g.Encrypt); err != nil {
			return fmt.Errorf("gossip.encrypt: %w", err)
		}
	}
	if len(g.Label) > heartbeat.MaxLabel {
		return fmt.Errorf("gossip.label: %d bytes, the limit is %d", len(g.Label), heartbeat.MaxLabel)
	}
	for _, r := range g.Label {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("gossip.label: %q has a character that is not printable", g.Label)
		}
	}
	return nil
}

func decodeGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not base64: %v", err)
	}
	if err := heartbeat.ValidateKey(k); err != nil {
		return nil, err
	}
	return k, nil
}

// gossipKeys is the keyring the agent starts with, primary first: the one
// it kept in data_dir, else gossip.encrypt alone. Nil means plaintext.
// Secure by default: with neither, and without gossip.plaintext, the
// agent does not start.
func (c *Config) gossipKeys(log *slog.Logger) ([][]byte, error) {
	saved, err := heartbeat.LoadKeyring(c.keyringFile())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	have := err == nil
	switch {
	case c.Gossip.Plaintext && have:
		// Plaintext nodes cannot talk to encrypted ones: a node that
		// quietly dropped its keys would just never join again.
		return nil, fmt.Errorf("gossip.plaintext: this node has a gossip keyring (%s); remove it to gossip in plaintext", c.keyringFile())
	case c.Gossip.Plaintext:
		log.Warn("gossip is not encrypted (gossip.plaintext: true): anyone who reaches the gossip ports can join the cluster")
		return nil, nil
	case have:
		if c.Gossip.Encrypt != "" {
			k, _ := decodeGossipKey(c.Gossip.Encrypt) // validated
			if !bytes.Equal(k, saved[0]) {
				log.Info("gossip.encrypt is not the primary key of the keyring kept in data_dir, which wins: it holds the keys the cluster rotated to",
					"keyring", c.keyringFile(), "keys", len(saved))
			}
		}
		return saved, nil
	case c.Gossip.Encrypt != "":
		k, _ := decodeGossipKey(c.Gossip.Encrypt)
		return [][]byte{k}, nil
	}
	return nil, errors.New("gossip.encrypt: no gossip key: set one (`haven keyring generate` makes one; every node the same), or gossip.plaintext: true to gossip unencrypted")
}
