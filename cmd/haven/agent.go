package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/logging"
)

// newAgentCmd runs one agent until SIGINT or SIGTERM. Settings come from
// defaults, then --config, then HAVEN_* variables, then flags.
func newAgentCmd() *cobra.Command {
	var (
		file string
		flg  agent.Config
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the haven agent on this host",
		Long: `Run the haven agent on this host.

Settings are taken from the defaults, then the --config file (YAML), then
HAVEN_* environment variables, then flags; a later source wins.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := agent.Default()
			if file != "" {
				if err := cfg.LoadFile(file); err != nil {
					return err
				}
			}
			if err := cfg.LoadEnv(os.Getenv); err != nil {
				return err
			}
			overlayFlags(cmd.Flags(), &cfg, &flg)
			if err := cfg.Validate(); err != nil {
				return usagef(cmd, "invalid configuration: %v", err)
			}
			return runAgent(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "config file (YAML)")
	f.StringVar(&flg.Name, "name", "", "node name, unique in the cluster (default: hostname)")
	f.StringVar(&flg.Site, "site", "", "site (failure domain) of this node (default \"default\")")
	f.StringVar(&flg.DataDir, "data-dir", "", "directory for the Raft log and snapshots (default /var/lib/haven)")
	f.StringVar(&flg.BindAddr, "bind", "", "IP address to listen on (default 0.0.0.0)")
	f.StringVar(&flg.AdvertiseAddr, "advertise", "", "IP address other nodes use (default: bind address, or the first private IP)")
	f.IntVar(&flg.Ports.Gossip, "gossip-port", 0, "same-site gossip port (default 7946)")
	f.IntVar(&flg.Ports.GossipWAN, "gossip-wan-port", 0, "cluster-wide gossip port; -join addresses use it (default 7947)")
	f.IntVar(&flg.Ports.Raft, "raft-port", 0, "Raft port (default 7948)")
	f.IntVar(&flg.Ports.GRPC, "grpc-port", 0, "gRPC API port (default 7949)")
	f.IntVar(&flg.Ports.Metrics, "metrics-port", 0, "Prometheus /metrics port (default 7950)")
	f.StringSliceVar(&flg.Join, "join", nil, "gossip address (host:port of the cluster-wide pool) of any node; repeatable")
	f.IntVar(&flg.BootstrapExpect, "bootstrap-expect", 0, "form the first cluster once this many nodes started with the same value see each other (0: only join)")
	f.StringVar(&flg.Driver, "driver", "", "hypervisor driver: sim or qemu (default sim)")
	f.BoolVar(&flg.Witness, "witness", false, "vote in Raft but host no workload")
	f.IntVar(&flg.NodeWeight, "node-weight", 1, "1: may vote in Raft; 0: never votes (still hosts groups)")
	f.StringVar(&flg.LogLevel, "log-level", "", "trace, debug, info, warn or error (default info)")
	f.BoolVar(&flg.DrainOnShutdown, "drain-on-shutdown", false, "on SIGTERM or SIGINT, move this node's groups off (live where possible) before exiting; a second signal stops at once")
	f.DurationVar(&flg.DrainTimeout, "drain-timeout", 0, "how long a drain on shutdown may take (default 5m)")
	return cmd
}

// overlayFlags copies the flags the user set; unset flags leave the lower
// layers alone.
func overlayFlags(fs *pflag.FlagSet, cfg, flg *agent.Config) {
	set := func(name string, apply func()) {
		if fs.Changed(name) {
			apply()
		}
	}
	set("name", func() { cfg.Name = flg.Name })
	set("site", func() { cfg.Site = flg.Site })
	set("data-dir", func() { cfg.DataDir = flg.DataDir })
	set("bind", func() { cfg.BindAddr = flg.BindAddr })
	set("advertise", func() { cfg.AdvertiseAddr = flg.AdvertiseAddr })
	set("gossip-port", func() { cfg.Ports.Gossip = flg.Ports.Gossip })
	set("gossip-wan-port", func() { cfg.Ports.GossipWAN = flg.Ports.GossipWAN })
	set("raft-port", func() { cfg.Ports.Raft = flg.Ports.Raft })
	set("grpc-port", func() { cfg.Ports.GRPC = flg.Ports.GRPC })
	set("metrics-port", func() { cfg.Ports.Metrics = flg.Ports.Metrics })
	set("join", func() { cfg.Join = flg.Join })
	set("bootstrap-expect", func() { cfg.BootstrapExpect = flg.BootstrapExpect })
	set("driver", func() { cfg.Driver = flg.Driver })
	set("witness", func() { cfg.Witness = flg.Witness })
	set("node-weight", func() { cfg.NodeWeight = flg.NodeWeight })
	set("log-level", func() { cfg.LogLevel = flg.LogLevel })
	set("drain-on-shutdown", func() { cfg.DrainOnShutdown = flg.DrainOnShutdown })
	set("drain-timeout", func() { cfg.DrainTimeout = flg.DrainTimeout })
}

func runAgent(ctx context.Context, cfg agent.Config) error {
	level, err := logging.ParseLevel(cfg.LogLevel)
	if err != nil {
		return err
	}
	log := logging.New(os.Stderr, level).With("node", cfg.Name)
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	// The agent's loops run on ctx, not on the signals: a drain on
	// shutdown needs them after the first signal. A second one stops at
	// once.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	if err := a.Start(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	// SIGHUP reads the TLS files again at once, as Consul's reload does;
	// they are also read when they change.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if err := a.ReloadTLS(); err != nil {
				log.Warn("SIGHUP: TLS not reloaded", "error", err)
			}
		}
	}()
	select {
	case <-ctx.Done():
	case s := <-sig:
		log.Info("shutting down", "signal", s.String())
	case <-a.Halted():
		err := a.HaltError()
		log.Error("stopping: the Raft log is damaged", "error", err)
		a.Stop()
		return err
	}
	if cfg.DrainOnShutdown && ctx.Err() == nil {
		dctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sig:
				log.Warn("second signal: stopping without waiting for the drain")
				cancel()
			case <-dctx.Done():
			}
		}()
		a.DrainForShutdown(dctx)
		cancel()
	}
	a.Stop()
	return nil
}
