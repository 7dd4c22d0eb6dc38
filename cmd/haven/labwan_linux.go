//go:build linux

package main

import (
	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

// platformCmds are the commands only this platform has.
func platformCmds() []*cobra.Command { return []*cobra.Command{newLabWANCmd()} }

// newLabWANCmd is the WAN delay program of haven dev's network lab
// (wan.Command), carried by the haven binary so that an installed haven
// needs no Go toolchain to delay packets: haven dev starts it as
// `haven lab-wan --netns NS --link ...`. Hidden: nobody runs it by hand.
func newLabWANCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "lab-wan --netns NS --link queue=N,delay=D,jitter=J [--link ...]",
		Short:              "Delay the packets of NFQUEUE queues (haven dev's WAN; internal)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := wan.Command("haven lab-wan", args, cmd.OutOrStdout(), cmd.ErrOrStderr()); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
}
