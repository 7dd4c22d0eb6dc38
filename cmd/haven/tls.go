package main

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"time"

	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/internal/tlsutil"
)

// newTLSCmd makes the cluster's CA and its certificates, as consul tls
// does: files in a directory, keys 0600, never overwritten.
func newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Create the cluster's CA and its node and client certificates",
		Long: `Create the cluster's CA and its node and client certificates.

Every port of an agent but gossip's speaks mutual TLS: each end presents a
certificate of the cluster's CA. A node certificate names node.haven, which
every dialer checks, so addresses need not be in certificates; a client
certificate (for the CLI, scripts) does not, so it cannot pose as a node.`,
		Args: cobra.NoArgs,
	}
	ca := &cobra.Command{Use: "ca", Short: "The cluster's certificate authority", Args: cobra.NoArgs}
	ca.AddCommand(newTLSCACreateCmd())
	cert := &cobra.Command{Use: "cert", Short: "Node and client certificates", Args: cobra.NoArgs}
	cert.AddCommand(newTLSCertCreateCmd())
	cmd.AddCommand(ca, cert)
	return cmd
}

func newTLSCACreateCmd() *cobra.Command {
	var (
		dir  string
		days int
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a CA: ca.pem and ca-key.pem (ECDSA P-256)",
		Long: `Create a CA: ca.pem and ca-key.pem (ECDSA P-256, mode 0600 for the key).

Give ca.pem to every node (tls.ca_file) and client (--ca-file); keep
ca-key.pem where certificates are made, off the nodes if you can.`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days < 1 {
				return usagef(cmd, "--days %d: must be at least 1", days)
			}
			ca, err := tlsutil.NewCA(fmt.Sprintf("haven CA %s", time.Now().UTC().Format("2006-01-02T15:04:05Z")), time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			if err := ca.Write(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "==> CA %s\n    %s\n    %s (keep it secret)\n", ca.Cert.Subject.CommonName,
				filepath.Join(dir, tlsutil.CAFile), filepath.Join(dir, tlsutil.CAKeyFile))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".", "directory to write the files into")
	cmd.Flags().IntVar(&days, "days", 3650, "validity in days")
	return cmd
}

func newTLSCertCreateCmd() *cobra.Command {
	var (
		node, client, dir, caFile, caKey string
		ips, dns                         []string
		days                             int
	)
	cmd := &cobra.Command{
		Use:   "create (--node NAME | --client NAME)",
		Short: "Create a node or client certificate signed by the CA: NAME.pem and NAME-key.pem",
		Long: `Create a node or client certificate signed by the CA: NAME.pem and
NAME-key.pem (ECDSA P-256, mode 0600 for the key).

--node NAME: for an agent (tls.cert_file, tls.key_file): server and client
auth, DNS names NAME, node.haven and localhost, IP 127.0.0.1, plus --dns
and --ip. --client NAME: for the CLI or a script (--cert-file,
--key-file): client auth only.`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (node == "") == (client == "") {
				return usagef(cmd, "give one of --node NAME and --client NAME")
			}
			if days < 1 {
				return usagef(cmd, "--days %d: must be at least 1", days)
			}
			req := tlsutil.CertRequest{Name: node, Node: true, DNS: dns, Validity: time.Duration(days) * 24 * time.Hour}
			if client != "" {
				req.Name, req.Node = client, false
			}
			if !certNameRE.MatchString(req.Name) {
				return usagef(cmd, "name %q: must be lowercase letters, digits and '-' (it names the files)", req.Name)
			}
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return usagef(cmd, "--ip %q: not an IP address", s)
				}
				req.IPs = append(req.IPs, ip)
			}
			if caFile == "" {
				caFile = filepath.Join(dir, tlsutil.CAFile)
			}
			if caKey == "" {
				caKey = filepath.Join(dir, tlsutil.CAKeyFile)
			}
			ca, err := tlsutil.LoadCA(caFile, caKey)
			if err != nil {
				return fmt.Errorf("CA: %w", err)
			}
			certPEM, keyPEM, err := ca.Issue(req)
			if err != nil {
				return err
			}
			cf, kf, err := tlsutil.WriteCert(dir, req.Name, certPEM, keyPEM)
			if err != nil {
				return err
			}
			kind := "client"
			if req.Node {
				kind = "node"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "==> %s certificate %s, signed by %s\n    %s\n    %s\n", kind, req.Name, ca.Cert.Subject.CommonName, cf, kf)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&node, "node", "", "make a node certificate for the agent NAME")
	f.StringVar(&client, "client", "", "make a client certificate NAME")
	f.StringVar(&dir, "dir", ".", "directory to write the files into, and to find the CA in")
	f.StringVar(&caFile, "ca", "", "CA certificate (default DIR/ca.pem)")
	f.StringVar(&caKey, "ca-key", "", "CA key (default DIR/ca-key.pem)")
	f.StringSliceVar(&ips, "ip", nil, "extra IP address SAN; repeatable")
	f.StringSliceVar(&dns, "dns", nil, "extra DNS name SAN; repeatable")
	f.IntVar(&days, "days", 365, "validity in days (at most the CA's)")
	return cmd
}

// certNameRE is the agent's rule for node names: a certificate's name is
// a node's name, and the name of its files.
var certNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
