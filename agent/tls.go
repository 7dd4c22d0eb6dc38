package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/internal/tlsutil"
)

// TLSConfig is the node's mutual TLS, on every port but gossip's (the
// gRPC API, agent-to-agent calls and migration streams, Raft). Files are
// made by `haven tls ca create` and `haven tls cert create --node NAME`;
// they are read again when they change, or on SIGHUP, without a restart.
type TLSConfig struct {
	// CAFile holds the cluster's CA certificate (during a CA rotation,
	// the old and the new one): peers and clients are verified against
	// it.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are this node's certificate (made with
	// --node, so that it names node.haven) and key.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Plaintext turns TLS off: anyone who reaches the ports can command
	// the cluster. Only for a test or a laptop (haven dev sets it).
	Plaintext bool `yaml:"plaintext"`
}

// validate refuses a node with neither TLS files nor an explicit
// plaintext, naming the setting or the file that is missing.
func (t TLSConfig) validate() error {
	files := []struct{ key, path string }{{"tls.ca_file", t.CAFile}, {"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile}}
	if t.Plaintext {
		for _, f := range files {
			if f.path != "" {
				return fmt.Errorf("%s: set while tls.plaintext is true; remove one or the other", f.key)
			}
		}
		return nil
	}
	for _, f := range files {
		if f.path == "" {
			return fmt.Errorf("%s: must be set (see haven tls), or tls.plaintext: true to run without TLS, which anyone on the network can command", f.key)
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.key, err)
		}
	}
	return nil
}

// newTLS is nil with plaintext, else the node's TLS files loaded (the
// error names the file that is wrong).
func newTLS(cfg Config, log *slog.Logger) (*tlsutil.Reloader, error) {
	if cfg.TLS.Plaintext {
		return nil, nil
	}
	r, err := tlsutil.NewReloader(tlsutil.Files{CA: cfg.TLS.CAFile, Cert: cfg.TLS.CertFile, Key: cfg.TLS.KeyFile}, log)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// serverTLS, clientTLS and raftTLS are nil with plaintext.
func (a *Agent) serverTLS() *tls.Config {
	if a.tls == nil {
		return nil
	}
	return a.tls.ServerConfig()
}

func (a *Agent) clientTLS() *tls.Config {
	if a.tls == nil {
		return nil
	}
	return a.tls.ClientConfig()
}

func (a *Agent) raftTLS() *consensus.TLS {
	if a.tls == nil {
		return nil
	}
	return &consensus.TLS{Server: a.tls.ServerConfig(), Client: a.tls.ClientConfig()}
}

// errPlaintext is ReloadTLS's answer on a node without TLS.
var errPlaintext = errors.New("tls: this node runs plaintext (tls.plaintext: true); nothing to reload")

// ReloadTLS reads the TLS files again now (SIGHUP). On an error the
// certificates in use are kept.
func (a *Agent) ReloadTLS() error {
	if a.tls == nil {
		return errPlaintext
	}
	return a.tls.Reload()
}

// watchTLS looks at the TLS files every CheckInterval, so that a new
// certificate is taken, or a bad one reported, when it is written rather
// than at the next handshake.
func (a *Agent) watchTLS(ctx context.Context) {
	if a.tls == nil {
		a.log.Warn("TLS is off (tls.plaintext): anyone who reaches this node's gRPC and Raft ports can command the cluster, and agent-to-agent calls cannot be authenticated")
		return
	}
	t := time.NewTicker(tlsutil.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.tls.Check()
		}
	}
}
