package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newKeyringCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keyring",
		Short: "Manage the keys that encrypt gossip, on every live node",
		Long: `Gossip (membership and failure detection) is encrypted with the primary key
of each node's keyring; every key on the ring is tried on what a node receives.
Each command goes to one agent, which asks every live node and reports what
each answered. Each node keeps its keyring in data_dir/gossip/keyring and loads
it when it starts.

Rotate a key without downtime:

  haven keyring generate            # prints NEW
  haven keyring install NEW         # every node reads NEW too
  haven keyring use NEW             # every node writes with NEW
  haven keyring remove OLD          # OLD no longer opens the cluster

A node that was down during the rotation cannot rejoin with the old key
alone: start it with gossip.encrypt set to the new key and its old keyring
file removed.`,
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "list",
			Short: "List the keys on the live nodes: how many hold each, and which nodes encrypt with it",
			Args:  argsExactly(0, "no arguments"),
			RunE: func(cmd *cobra.Command, _ []string) error {
				return callService(cmd.Context(), g, havenv1.NewKeyringServiceClient, func(ctx context.Context, c havenv1.KeyringServiceClient) error {
					resp, err := c.ListKeys(ctx, &havenv1.ListKeysRequest{})
					if err != nil {
						return err
					}
					return g.keyringResult(cmd.OutOrStdout(), resp, resp.GetFailed(), func(w io.Writer) error { return writeKeysTable(w, resp) })
				})
			},
		},
		keyChangeCmd(g, "install KEY", "Add a key to every live node's keyring; nodes keep writing with their primary key",
			func(ctx context.Context, c havenv1.KeyringServiceClient, key string) (keyringChange, error) {
				return c.InstallKey(ctx, &havenv1.InstallKeyRequest{Key: key})
			}),
		keyChangeCmd(g, "use KEY", "Make an installed key the primary key of every live node (refused unless every live node holds it)",
			func(ctx context.Context, c havenv1.KeyringServiceClient, key string) (keyringChange, error) {
				return c.UseKey(ctx, &havenv1.UseKeyRequest{Key: key})
			}),
		keyChangeCmd(g, "remove KEY", "Remove a key from every live node's keyring (refused while a node uses it as its primary)",
			func(ctx context.Context, c havenv1.KeyringServiceClient, key string) (keyringChange, error) {
				return c.RemoveKey(ctx, &havenv1.RemoveKeyRequest{Key: key})
			}),
		&cobra.Command{
			Use:   "generate",
			Short: "Print a new random gossip key (base64 of 32 bytes), for gossip.encrypt or 'keyring install'",
			Args:  argsExactly(0, "no arguments"),
			RunE: func(cmd *cobra.Command, _ []string) error {
				k, err := generateKey()
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), k)
				return err
			},
		},
	)
	return cmd
}

// generateKey is 32 random bytes (AES-256), as consul keygen.
func generateKey() (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(k), nil
}

// keyringChange is what InstallKey, UseKey and RemoveKey answer.
type keyringChange interface {
	proto.Message
	GetNodes() []*havenv1.KeyringNodeResult
	GetFailed() uint32
}

func keyChangeCmd(g *globalOptions, use, short string, call func(context.Context, havenv1.KeyringServiceClient, string) (keyringChange, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  argsExactly(1, "a key (base64)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callService(cmd.Context(), g, havenv1.NewKeyringServiceClient, func(ctx context.Context, c havenv1.KeyringServiceClient) error {
				resp, err := call(ctx, c, strings.TrimSpace(args[0]))
				if err != nil {
					return err
				}
				return g.keyringResult(cmd.OutOrStdout(), resp, resp.GetFailed(), func(w io.Writer) error { return writeKeyringNodes(w, resp.GetNodes()) })
			})
		},
	}
}

// keyringResult prints a fanned-out answer; some node that failed makes
// the command fail, after it has said which.
func (g *globalOptions) keyringResult(w io.Writer, m proto.Message, failed uint32, table func(io.Writer) error) error {
	if err := g.render(w, m, table); err != nil {
		return err
	}
	if failed > 0 {
		return exitCode(exitError)
	}
	return nil
}

func writeKeysTable(w io.Writer, resp *havenv1.ListKeysResponse) error {
	answered := uint32(len(resp.GetNodes())) - resp.GetFailed()
	tw := newTable(w)
	fmt.Fprintln(tw, "KEY\tNODES\tPRIMARY ON")
	for _, k := range resp.GetKeys() {
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\n", k.GetKey(), k.GetHeldBy(), answered, dash(strings.Join(k.GetPrimaryOn(), ",")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range resp.GetNodes() {
		if n.GetError() != "" {
			fmt.Fprintf(w, "%s did not answer: %s\n", n.GetNode(), n.GetError())
		}
	}
	return nil
}

func writeKeyringNodes(w io.Writer, nodes []*havenv1.KeyringNodeResult) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NODE\tRESULT")
	for _, n := range nodes {
		result := "ok"
		if n.GetError() != "" {
			result = "failed: " + n.GetError()
		}
		fmt.Fprintf(tw, "%s\t%s\n", n.GetNode(), result)
	}
	return tw.Flush()
}
