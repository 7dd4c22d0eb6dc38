package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/agent"
)

// newRecoverCmd rebuilds a node whose Raft log or snapshot is damaged: it
// sets the node's Raft state aside, so that the agent, started again,
// rejoins under its name and is sent the leader's snapshot.
func newRecoverCmd() *cobra.Command {
	var file, dataDir string
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Set a stopped node's damaged Raft state aside, to rebuild it from its peers",
		Long: `Set a stopped node's damaged Raft state aside, to rebuild it from its peers.

An agent whose Raft log or snapshot is damaged refuses to start and names the
file. With the agent stopped, this moves DATA_DIR/raft/raft.db and
DATA_DIR/raft/snapshots into DATA_DIR/raft/damaged-<time>/ (nothing is
deleted) and keeps the node's Raft term and vote where they can still be read.
Start the agent again with the same name and configuration: it rejoins the
cluster as a member with an empty log, and the leader sends it a snapshot and
the log after it. The rest of the cluster must have a quorum and a leader.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := agent.Default()
			if file != "" {
				if err := cfg.LoadFile(file); err != nil {
					return err
				}
			}
			if dataDir != "" {
				cfg.DataDir = dataDir
			}
			if file == "" && dataDir == "" {
				return usagef(cmd, "give --data-dir or --config")
			}
			aside, err := agent.Recover(cfg.DataDir, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "moved the Raft state of %s to %s\nstart the agent again: it rejoins and receives the leader's snapshot\n", cfg.DataDir, aside)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "the agent's config file (YAML), for its data_dir")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the agent's data directory (overrides the config file's)")
	return cmd
}
