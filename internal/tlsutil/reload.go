package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/haven-ha/haven/internal/logging"
)

// Files are a node's (or a client's) TLS files.
type Files struct {
	// CA holds the CA certificates peers are verified against: one, or
	// during a CA rotation the old and the new one.
	CA string
	// Cert and Key are this end's certificate and key; a client may have
	// none (then it can only reach agents that do not ask for one).
	Cert, Key string
}

// CheckInterval is how often at most a handshake looks at the files'
// modification times.
const CheckInterval = time.Second

// Reloader holds a node's current certificate and CA pool, and replaces
// them when the files change: every handshake checks the files' modification
// times, at most once per CheckInterval, and Reload (SIGHUP) re-reads them
// at once. A file that does not load (half written, a key that does not
// match) is logged and the material in use is kept, so a mistake during a
// rotation never takes a node off the network.
type Reloader struct {
	files Files
	log   *slog.Logger
	// Interval overrides CheckInterval (tests).
	Interval time.Duration

	mu      sync.Mutex
	cur     *material
	stamp   stamp // of the files cur was read from
	failed  stamp // of the files the last failed load read
	checked time.Time
}

type material struct {
	cert *tls.Certificate // nil: none
	pool *x509.CertPool
}

// stamp identifies a version of the files.
type stamp [3]struct {
	mod  time.Time
	size int64
	err  bool
}

// NewReloader reads the files; its error names the file that failed.
func NewReloader(f Files, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = logging.Discard()
	}
	if f.CA == "" {
		return nil, errors.New("tls: no CA file")
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("tls: a certificate file needs its key file, and a key file its certificate file")
	}
	r := &Reloader{files: f, log: log, Interval: CheckInterval}
	st := r.stat()
	m, err := load(f)
	if err != nil {
		return nil, err
	}
	r.cur, r.stamp, r.checked = m, st, time.Now()
	return r, nil
}

// Reload re-reads the files now. On an error the material in use is kept;
// the error says which file is wrong.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = time.Now()
	return r.reloadLocked(r.stat())
}

func (r *Reloader) reloadLocked(st stamp) error {
	m, err := load(r.files)
	if err != nil {
		r.failed = st
		r.log.Error("tls: new files do not load; keeping the certificates in use", "error", err)
		return err
	}
	r.cur, r.stamp, r.failed = m, st, stamp{}
	attrs := []any{"ca_file", r.files.CA}
	if m.cert != nil && m.cert.Leaf != nil {
		attrs = append(attrs, "cert_file", r.files.Cert, "serial", m.cert.Leaf.SerialNumber.Text(16), "expires", m.cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	r.log.Info("tls: certificates reloaded", attrs...)
	return nil
}

// Check reloads the files if they changed since they were last read and
// CheckInterval has passed. Handshakes check on their own; an agent also
// calls it on a timer, so that a bad file is reported when it is written
// rather than at the next connection.
func (r *Reloader) Check() { r.current() }

// current is the material to use for a handshake, reloaded first when
// the files changed since they were last read.
func (r *Reloader) current() *material {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= r.Interval {
		r.checked = now
		// A version that failed once is not read again until it
		// changes, so a bad file is logged once, not every second.
		if st := r.stat(); st != r.stamp && st != r.failed {
			_ = r.reloadLocked(st)
		}
	}
	return r.cur
}

func (r *Reloader) stat() stamp {
	var st stamp
	for i, p := range []string{r.files.CA, r.files.Cert, r.files.Key} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			st[i].err = true
			continue
		}
		st[i].mod, st[i].size = fi.ModTime(), fi.Size()
	}
	return st
}

func load(f Files) (*material, error) {
	certs, err := readCerts(f.CA)
	if err != nil {
		return nil, fmt.Errorf("tls ca_file: %w", err)
	}
	m := &material{pool: x509.NewCertPool()}
	for _, c := range certs {
		m.pool.AddCert(c)
	}
	if f.Cert == "" {
		return m, nil
	}
	if _, err := readCerts(f.Cert); err != nil {
		return nil, fmt.Errorf("tls cert_file: %w", err)
	}
	if _, err := os.Stat(f.Key); err != nil {
		return nil, fmt.Errorf("tls key_file: %w", err)
	}
	kp, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("tls cert_file %s, key_file %s: %w", f.Cert, f.Key, err)
	}
	// A certificate the CA in use did not sign would fail every
	// handshake with the peers: refuse it here, where the error names it.
	opts := x509.VerifyOptions{Roots: m.pool, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	for _, c := range kp.Certificate[1:] {
		if ic, err := x509.ParseCertificate(c); err == nil {
			opts.Intermediates.AddCert(ic)
		}
	}
	if _, err := kp.Leaf.Verify(opts); err != nil {
		return nil, fmt.Errorf("tls cert_file %s: not signed by a CA in ca_file %s: %w", f.Cert, f.CA, err)
	}
	m.cert = &kp
	return m, nil
}

// ServerConfig is the configuration of a listener: TLS 1.3, the current
// certificate, and a client certificate signed by the current CA
// required.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := r.current()
			if m.cert == nil {
				return nil, errors.New("tls: no certificate to serve")
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*m.cert},
				ClientCAs:    m.pool,
				ClientAuth:   tls.RequireAndVerifyClientCert,
			}, nil
		},
	}
}

// ClientConfig is the configuration of a dialer: TLS 1.3, the current
// certificate, and a server verified against the current CA as NodeName.
func (r *Reloader) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: NodeName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if m := r.current(); m.cert != nil {
				return m.cert, nil
			}
			return &tls.Certificate{}, nil
		},
		// crypto/tls verifies a server against a fixed RootCAs;
		// VerifyConnection does the same verification against the CA
		// pool of the moment, which a reload may have replaced.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs, r.current().pool)
		},
	}
}

func verifyServer(cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server sent no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		DNSName:       NodeName,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("tls: server certificate: %w", err)
	}
	return nil
}
