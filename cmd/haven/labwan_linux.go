//go:build linux

package main

import (
	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/driver/qemu/supervise"
	"github.com/haven-ha/haven/internal/netlab/wan"
)

// platformCmds are the commands only this platform has.
func platformCmds() []*cobra.Command { return []*cobra.Command{newLabWANCmd(), newSuperviseCmd()} }

// newSuperviseCmd runs the supervisor of one QEMU (supervise.Main): the
// qemu driver starts it as `haven qemu-supervise -socket ... -- qemu ...`
// so that the VM is frozen at its lease end even when the agent is not
// there to do it. Hidden: nobody runs it by hand.
func newSuperviseCmd() *cobra.Command {
	return &cobra.Command{
		Use:                agent.SuperviseCommand + " -socket PATH [flags] -- QEMU ARGS...",
		Short:              "Supervise one QEMU process under its lease (the qemu driver's; internal)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := supervise.Main(args); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
}

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
