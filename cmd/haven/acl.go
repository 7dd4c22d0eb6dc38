package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/agent/acl"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newACLCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "acl",
		Short: "Access control: bootstrap it and manage tokens",
		Long: `Access control: every API call needs a token whose role allows it.

Roles: read (status, lists, events), operate (start, stop, move, drain,
resume, disks, balance), admin (create and delete groups, tokens). A token
goes with --token, HAVEN_TOKEN, --token-file or HAVEN_TOKEN_FILE.

'haven acl bootstrap' makes the first admin token, once in the cluster's life.`,
	}
	token := &cobra.Command{Use: "token", Short: "Create, list and revoke tokens (admin)"}
	token.AddCommand(newACLTokenCreateCmd(g), newACLTokenListCmd(g), newACLTokenRevokeCmd(g))
	cmd.AddCommand(newACLBootstrapCmd(g), token)
	return cmd
}

// writeSecret shows a new token's secret, the one time it can be seen.
func writeSecret(w io.Writer, tok *havenv1.AclToken, secret string) error {
	_, err := fmt.Fprintf(w, "token %s (role %s, accessor %s)\nsecret: %s\n\nThe secret is shown only now: keep it (e.g. in a file for --token-file).\n",
		tok.GetName(), acl.RoleName(tok.GetRole()), tok.GetAccessorId(), secret)
	return err
}

func newACLBootstrapCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Make the first admin token (works once)",
		Args:  argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return callService(cmd.Context(), g, havenv1.NewAclServiceClient, func(ctx context.Context, c havenv1.AclServiceClient) error {
				resp, err := c.Bootstrap(ctx, &havenv1.BootstrapRequest{RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeSecret(w, resp.GetToken(), resp.GetSecret()) })
			})
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

func newACLTokenCreateCmd(g *globalOptions) *cobra.Command {
	var name, role, requestID string
	cmd := &cobra.Command{
		Use:   "create --name NAME --role read|operate|admin",
		Short: "Make a token; its secret is shown once",
		Args:  argsExactly(0, "no arguments (--name, --role)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usagef(cmd, "--name: must be set")
			}
			r, err := acl.ParseRole(role)
			if err != nil {
				return usagef(cmd, "--role: %v", err)
			}
			return callService(cmd.Context(), g, havenv1.NewAclServiceClient, func(ctx context.Context, c havenv1.AclServiceClient) error {
				resp, err := c.CreateToken(ctx, &havenv1.CreateTokenRequest{Name: name, Role: r, RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeSecret(w, resp.GetToken(), resp.GetSecret()) })
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the token's name (lowercase letters, digits, '-')")
	cmd.Flags().StringVar(&role, "role", "", "read, operate or admin")
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

func newACLTokenListCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the tokens (never their secrets)",
		Args:  argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return callService(cmd.Context(), g, havenv1.NewAclServiceClient, func(ctx context.Context, c havenv1.AclServiceClient) error {
				resp, err := c.ListTokens(ctx, &havenv1.ListTokensRequest{})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					tw := newTable(w)
					fmt.Fprintln(tw, "NAME\tROLE\tACCESSOR\tCREATED")
					for _, t := range resp.GetTokens() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.GetName(), acl.RoleName(t.GetRole()), t.GetAccessorId(),
							t.GetCreateTime().AsTime().Local().Format(time.DateTime))
					}
					return tw.Flush()
				})
			})
		},
	}
}

func newACLTokenRevokeCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:   "revoke ACCESSOR|NAME",
		Short: "Revoke a token: calls with its secret are refused from now on",
		Args:  argsExactly(1, "ACCESSOR|NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callService(cmd.Context(), g, havenv1.NewAclServiceClient, func(ctx context.Context, c havenv1.AclServiceClient) error {
				resp, err := c.RevokeToken(ctx, &havenv1.RevokeTokenRequest{Token: args[0], RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "token %s (%s) revoked\n", resp.GetToken().GetName(), resp.GetToken().GetAccessorId())
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}
