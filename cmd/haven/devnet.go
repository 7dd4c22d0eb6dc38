package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// 'haven dev net' acts on the network of a running 'haven dev --sites' from
// another terminal. It is a client only: the dev process owns the lab (its
// rules, its delay programs, its agents) and does what it is asked through
// a Unix socket, devNetDir/PREFIX.sock, PREFIX being the lab's. So whatever
// the commands change, the Ctrl-C of haven dev still removes it all.

const (
	// devNetDir holds the control sockets of running stretch dev
	// clusters; root's alone, as the labs are.
	devNetDir = "/run/haven-dev"
	// devNetTimeout bounds one net command, a WAN change's new delay
	// program included.
	devNetTimeout = 30 * time.Second
)

// devNetRequest is one net command: the arguments of 'haven dev net'.
type devNetRequest struct {
	Args []string `json:"args"`
}

// devNetReply is what the dev process says back.
type devNetReply struct {
	Output string `json:"output"`
	Error  string `json:"error,omitempty"`
}

func newDevNetCmd() *cobra.Command {
	var lab string
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Partition, heal, slow down or kill the sites of a running 'haven dev --sites'",
		Long: `Act on the network of a running 'haven dev --sites' (as root, from another
terminal). NAME is a site (all its nodes) or a node. With more than one such dev
cluster running, --lab names one by the prefix it printed at start.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef(cmd, "unknown command %q for %s", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.PersistentFlags().StringVar(&lab, "lab", "", "the lab's prefix (hv + 5 characters), when several run")
	sub := func(use, short string, n int, names string) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  argsExactly(n, names),
			RunE: func(cmd *cobra.Command, args []string) error {
				return devNetCall(cmd, lab, append([]string{cmd.Name()}, args...))
			},
		}
	}
	heal := sub("heal [NAME NAME]", "Heal every cut, or the cut between two sites or nodes (the WAN stays)", 0, "")
	heal.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) != 0 && len(args) != 2 {
			return usagef(cmd, "%s takes no arguments or two sites or nodes, got %d argument(s)", cmd.CommandPath(), len(args))
		}
		return nil
	}
	cmd.AddCommand(
		sub("show", "Show the sites, nodes, addresses, pids, the WAN and the cuts", 0, "no arguments"),
		sub("partition NAME NAME", "Cut two sites or nodes off from each other (both still reach the rest)", 2, "two sites or nodes"),
		sub("isolate NAME", "Cut a node, or a site, off from every other node", 1, "a node or a site"),
		heal,
		sub("wan SITE SITE DELAY[±JITTER][,LOSS%]", "Set the WAN between two sites (e.g. 50ms±5ms,1%; 'off' for none)", 3, "two sites and a WAN"),
		sub("kill-site SITE", "SIGKILL every agent of a site: the site is lost", 1, "a site"),
		sub("kill NAME", "SIGKILL the agent of a node, or every agent of a site", 1, "a node or a site"),
		sub("start NAME", "Start the agents of a node or a site that are not running", 1, "a node or a site"),
	)
	return cmd
}

// devNetCall sends args to the running dev cluster and prints its answer.
func devNetCall(cmd *cobra.Command, lab string, args []string) error {
	sock, err := devNetSocket(lab)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return fmt.Errorf("the haven dev of %s does not answer: %w", sock, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(devNetTimeout))
	if err := json.NewEncoder(conn).Encode(devNetRequest{Args: args}); err != nil {
		return err
	}
	var reply devNetReply
	if err := json.NewDecoder(conn).Decode(&reply); err != nil {
		return fmt.Errorf("no answer from the haven dev of %s: %w", sock, err)
	}
	if reply.Output != "" {
		fmt.Fprintln(cmd.OutOrStdout(), reply.Output)
	}
	if reply.Error != "" {
		return errors.New(reply.Error)
	}
	return nil
}

// devNetSocket finds the control socket: lab's, or the one of the only
// stretch dev cluster that answers.
func devNetSocket(lab string) (string, error) {
	if lab != "" {
		p := filepath.Join(devNetDir, lab+".sock")
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("no haven dev --sites with lab %s: %w", lab, err)
		}
		return p, nil
	}
	socks, err := filepath.Glob(filepath.Join(devNetDir, "*.sock"))
	if err != nil {
		return "", err
	}
	var live []string
	for _, p := range socks {
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
			live = append(live, p)
		} else if errors.Is(err, fs.ErrPermission) {
			return "", fmt.Errorf("%s: %w (haven dev net needs root, as haven dev --sites does)", p, err)
		}
	}
	switch len(live) {
	case 0:
		if euid := os.Geteuid(); euid != 0 {
			return "", fmt.Errorf("haven dev net needs root, as haven dev --sites does (euid %d)", euid)
		}
		return "", errors.New("no haven dev --sites is running (no control socket in " + devNetDir + ")")
	case 1:
		return live[0], nil
	}
	var labs []string
	for _, p := range live {
		labs = append(labs, strings.TrimSuffix(filepath.Base(p), ".sock"))
	}
	return "", fmt.Errorf("%d haven dev --sites run (labs %s): choose one with --lab", len(live), strings.Join(labs, ", "))
}
