// Package tlsutil is haven's mutual TLS: it makes the cluster's CA and its
// node and client certificates (haven tls), builds the TLS configurations
// of every port but gossip from a node's ca_file, cert_file and key_file,
// reloads them when the files change, and tells a gRPC handler whether its
// caller is a node.
//
// Every dialer verifies the server's certificate against the CA with the
// name NodeName, as Consul's verify_server_hostname does, so that addresses
// need not be in certificates and a client certificate cannot pose as a
// node.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// NodeName is the DNS SAN every node certificate carries and every dialer
// verifies: a caller whose certificate has it is a node.
const NodeName = "node.haven"

// File names in a directory of haven tls.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// CertFiles are the certificate and key files of name in dir.
func CertFiles(dir, name string) (cert, key string) {
	return filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
}

// CA is a certificate authority that can sign.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is Cert encoded.
	PEM []byte
}

// CAValidity is how long a new CA is valid: rotating a CA is an
// operation (see the README), so it should be rare.
const CAValidity = 10 * 365 * 24 * time.Hour

// NewCA makes a self-signed CA with an ECDSA P-256 key, valid for
// validity from now. name goes into its subject, so that two CAs are told
// apart in logs.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"haven"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pemBlock("CERTIFICATE", der)}, nil
}

// Write puts the CA into dir as ca.pem and ca-key.pem (0600), refusing to
// overwrite either: a new CA over an old one would orphan every
// certificate it signed.
func (ca *CA) Write(dir string) error {
	key, err := keyPEM(ca.Key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(dir, CAFile), ca.PEM, 0o644); err != nil {
		return err
	}
	return writeNew(filepath.Join(dir, CAKeyFile), key, 0o600)
}

// LoadCA reads a CA and its key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certs, err := readCerts(certFile)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%s: no PEM key", keyFile)
	}
	key, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	// A bundle (old and new CA during a rotation) signs with the CA
	// that matches the key.
	for _, c := range certs {
		if pub, ok := c.PublicKey.(*ecdsa.PublicKey); ok && pub.Equal(&key.PublicKey) {
			if !c.IsCA {
				return nil, fmt.Errorf("%s: not a CA certificate", certFile)
			}
			return &CA{Cert: c, Key: key, PEM: pemBlock("CERTIFICATE", c.Raw)}, nil
		}
	}
	return nil, fmt.Errorf("%s: no certificate matches the key in %s", certFile, keyFile)
}

// CertRequest is what Issue signs.
type CertRequest struct {
	// Name is the node's name, or the client's: the certificate's common
	// name, and a DNS SAN of a node.
	Name string
	// Node makes a node certificate: server and client auth, with the
	// DNS SANs Name, NodeName and localhost and the IP 127.0.0.1. A
	// client certificate has client auth only and no SAN a dialer would
	// accept from a server.
	Node     bool
	IPs      []net.IP
	DNS      []string
	Validity time.Duration
}

// CertValidity is a certificate's default validity.
const CertValidity = 365 * 24 * time.Hour

// Issue makes a key and a certificate for r, signed by ca, and returns
// both as PEM.
func (ca *CA) Issue(r CertRequest) (certOut, keyOut []byte, err error) {
	if r.Name == "" {
		return nil, nil, errors.New("a certificate needs a name")
	}
	if r.Validity <= 0 {
		r.Validity = CertValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(r.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: r.Name, Organization: []string{"haven"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses:  r.IPs,
		DNSNames:     r.DNS,
	}
	if r.Node {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = append([]string{r.Name, NodeName, "localhost"}, r.DNS...)
		tmpl.IPAddresses = append([]net.IP{net.IPv4(127, 0, 0, 1)}, r.IPs...)
	} else if slices.Contains(r.DNS, NodeName) {
		return nil, nil, fmt.Errorf("a client certificate cannot name %s: that makes it a node's", NodeName)
	}
	tmpl.DNSNames = slices.Compact(tmpl.DNSNames)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	k, err := keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), k, nil
}

// WriteCert puts a certificate and its key into dir as NAME.pem and
// NAME-key.pem (0600), refusing to overwrite either.
func WriteCert(dir, name string, certPEM, keyPEM []byte) (certFile, keyFile string, err error) {
	certFile, keyFile = CertFiles(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	for _, p := range []string{certFile, keyFile} {
		if _, err := os.Stat(p); err == nil {
			return "", "", fmt.Errorf("%s: exists; remove it first to replace it", p)
		}
	}
	if err := writeNew(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, writeNew(keyFile, keyPEM, 0o600)
}

func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pemBlock("EC PRIVATE KEY", der), nil
}

// readCerts parses every certificate in a PEM file.
func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return certs, nil
}
