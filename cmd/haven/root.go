package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/internal/rpcclient"
	"github.com/haven-ha/haven/internal/tlsutil"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

const defaultAddr = "127.0.0.1:7949"

// Exit codes: 1 for anything that went wrong at run time (including every
// gRPC error), 2 when the command line itself was wrong, as with Go's flag
// package, so a script can tell "retry" from "fix the call".
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func realMain() int {
	root := newRootCmd(os.Getenv)
	root.SetArgs(os.Args[1:])
	err := root.ExecuteContext(context.Background())
	if err == nil {
		return exitOK
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec)
	}
	fmt.Fprintln(os.Stderr, formatError(err))
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", ue.cmdPath)
		return exitUsage
	}
	return exitError
}

// exitCode ends the program with that status and no message: the command
// has said what went wrong itself.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError marks a mistake in the command line rather than in what the
// cluster said.
type usageError struct {
	cmdPath string
	err     error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmdPath: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
}

// formatError gives every failure one shape on stderr. A gRPC status is
// shown as its code and message exactly as the agent wrote them (an
// Unavailable from a follower carries the leader's address), so that what
// the operator reads is what the API said.
func formatError(err error) string {
	return "error: " + describeError(err)
}

// describeError is formatError without the "error: " prefix, for places
// that report a failure and carry on.
func describeError(err error) string {
	if st, ok := status.FromError(err); ok && st != nil {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message()) + tlsHint(st)
	}
	return err.Error()
}

// tlsHints name what a connection's failure says about TLS on the two
// ends: gRPC reports a mismatch only in the transport's own words.
var tlsHints = []struct{ in, hint string }{
	{"error reading server preface", "the agent may require TLS: give the CLI the cluster's CA and a client certificate (--ca-file, --cert-file, --key-file or HAVEN_CACERT, HAVEN_CLIENT_CERT, HAVEN_CLIENT_KEY)"},
	{"does not look like a TLS handshake", "the agent runs without TLS (tls.plaintext): drop --ca-file (HAVEN_CACERT)"},
}

func tlsHint(st *status.Status) string {
	if st.Code() != codes.Unavailable {
		return ""
	}
	for _, h := range tlsHints {
		if strings.Contains(st.Message(), h.in) {
			return " (" + h.hint + ")"
		}
	}
	return ""
}

// globalOptions are the root command's persistent flags.
type globalOptions struct {
	addr    string
	output  string
	timeout time.Duration
	// tls are the CLI's TLS files: with a CA it dials with TLS,
	// presenting the certificate when one is given.
	tls tlsutil.Files
	// token and tokenFile are the flags; getenv supplies HAVEN_TOKEN and
	// HAVEN_TOKEN_FILE behind them (read when dialing, so that a secret
	// never shows as a flag's default in --help).
	token, tokenFile string
	getenv           func(string) string
}

func newRootCmd(getenv func(string) string) *cobra.Command {
	g := &globalOptions{getenv: getenv}
	addr := getenv("HAVEN_ADDR")
	if addr == "" {
		addr = defaultAddr
	}
	root := &cobra.Command{
		Use:   "haven",
		Short: "High-availability cluster agent for hypervisor hosts",
		Long: `haven keeps virtual machines running when hypervisor hosts fail.

Every host runs 'haven agent'; the other commands talk to any agent's gRPC API
(--addr, or HAVEN_ADDR). 'haven dev' starts a local cluster to try it out.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch g.output {
			case "table", "json":
			default:
				return usagef(cmd, "--output %q: must be table or json", g.output)
			}
			if g.timeout <= 0 {
				return usagef(cmd, "--timeout %s: must be positive", g.timeout)
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.addr, "addr", addr, "gRPC address of any agent (env HAVEN_ADDR)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&g.timeout, "timeout", 10*time.Second, "how long to wait for the agent to answer")
	pf.StringVar(&g.tls.CA, "ca-file", getenv("HAVEN_CACERT"), "CA certificate to verify agents with; TLS is used when set (env HAVEN_CACERT)")
	pf.StringVar(&g.tls.Cert, "cert-file", getenv("HAVEN_CLIENT_CERT"), "client certificate, from 'haven tls cert create --client' (env HAVEN_CLIENT_CERT)")
	pf.StringVar(&g.tls.Key, "key-file", getenv("HAVEN_CLIENT_KEY"), "client certificate's key (env HAVEN_CLIENT_KEY)")
	pf.StringVar(&g.token, "token", "", "ACL token's secret (env HAVEN_TOKEN; prefer a file: a flag shows in ps)")
	pf.StringVar(&g.tokenFile, "token-file", "", "file holding the ACL token's secret (env HAVEN_TOKEN_FILE)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cmdPath: cmd.CommandPath(), err: err}
	})
	root.CompletionOptions.HiddenDefaultCmd = true

	root.AddCommand(
		newAgentCmd(),
		newDevCmd(),
		newMembersCmd(g),
		newStatusCmd(g),
		newGroupCmd(g),
		newReserveCmd(g),
		newPlaceCmd(g),
		newBalanceCmd(g),
		newCheckCmd(g),
		newDrainCmd(g),
		newResumeCmd(g),
		newEventsCmd(g),
		newMoveCmd(g),
		newOpsCmd(g),
		newDiskCmd(g),
		newKeyringCmd(g),
		newTLSCmd(),
		newACLCmd(g),
	)
	root.AddCommand(platformCmds()...)
	root.AddCommand(newRecoverCmd())
	return root
}

// argsExactly is cobra.ExactArgs with the argument named in the message and
// the mistake marked as a usage error.
func argsExactly(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef(cmd, "%s takes %s, got %d argument(s)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}

// call dials the agent, runs fn with the --timeout deadline and closes the
// connection. Dialing is lazy in gRPC, so an unreachable agent shows up as
// the Unavailable status of fn's call, which names the address.
func (g *globalOptions) call(ctx context.Context, fn func(context.Context, havenv1.ClusterServiceClient) error) error {
	return callService(ctx, g, havenv1.NewClusterServiceClient, fn)
}

// callService is call for any of the API's services, whose client
// newClient makes.
func callService[C any](ctx context.Context, g *globalOptions, newClient func(grpc.ClientConnInterface) C, fn func(context.Context, C) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	return fn(ctx, newClient(conn))
}

// requestIDUsage is the help of every write's --request-id.
const requestIDUsage = "idempotency key: a retry with the same id is applied once (default: a new id, kept across this command's own retries)"

// dial opens the CLI's connection to an agent: with TLS when a CA is
// given, else plaintext, and with the token when one is given. A call that meets no leader (an election, a
// leader change) is retried within --timeout, a write with the same
// request id every time, so it is applied once.
func (g *globalOptions) dial() (*grpc.ClientConn, error) {
	secret, err := g.secret()
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if g.tls.CA != "" {
		if g.tls.Cert == "" || g.tls.Key == "" {
			// Agents require a client certificate; without one the
			// handshake fails in words that depend on timing.
			return nil, errors.New("--ca-file needs --cert-file and --key-file (HAVEN_CLIENT_CERT, HAVEN_CLIENT_KEY): agents accept only clients with a certificate of their CA")
		}
		r, err := tlsutil.NewReloader(g.tls, nil)
		if err != nil {
			return nil, err
		}
		tlsCfg = r.ClientConfig()
	} else if g.tls.Cert != "" || g.tls.Key != "" {
		return nil, errors.New("--cert-file and --key-file need --ca-file (HAVEN_CACERT) to verify the agent with")
	}
	return rpcclient.Dial(g.addr, rpcclient.Credentials(tlsCfg), rpcclient.WithRetry(), rpcclient.WithToken(secret))
}

// secret is the ACL token: --token, else HAVEN_TOKEN, else the file in
// --token-file, else the one in HAVEN_TOKEN_FILE; none is no token.
func (g *globalOptions) secret() (string, error) {
	if g.token != "" {
		return g.token, nil
	}
	if v := g.getenv("HAVEN_TOKEN"); v != "" {
		return v, nil
	}
	path := g.tokenFile
	if path == "" {
		path = g.getenv("HAVEN_TOKEN_FILE")
	}
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	secret := strings.TrimSpace(string(b))
	if secret == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return secret, nil
}

// render prints m as JSON with -o json, or through table otherwise.
func (g *globalOptions) render(w io.Writer, m proto.Message, table func(io.Writer) error) error {
	if g.output == "json" {
		return writeJSON(w, m)
	}
	return table(w)
}
