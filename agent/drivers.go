package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu"
	"github.com/haven-ha/haven/driver/sim"
	"github.com/haven-ha/haven/internal/tlsutil"
	"github.com/haven-ha/haven/placement"
)

// newDriver opens the node's hypervisor driver. Simulated VMs live in
// this process: they die with it, so none can outlive the lease of an
// agent that was killed. QEMU's live in processes of their own, each
// under a supervisor that freezes it at its lease end (this binary's
// hidden qemu-supervise command), and outlive the agent for a restarted
// one to take back.
func newDriver(cfg Config, log *slog.Logger) (driver.Hypervisor, error) {
	switch cfg.Driver {
	case "sim":
		return sim.New(sim.Config{Node: cfg.Name, SharedDir: cfg.SharedDir, Logger: log, Guest: cfg.Sim.guest()}), nil
	case "qemu":
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("driver qemu: the supervisor is this binary: %w", err)
		}
		q := cfg.Qemu
		// A move's target QEMU listens on the node's own address, the one
		// other nodes reach it at (never a wildcard: it is also what the
		// source is told to dial).
		addr := cfg.AdvertiseAddr
		if addr == "" {
			addr = cfg.BindAddr
		}
		// A QEMU that does not run (not installed, the wrong path) stops
		// the agent here, with the command that failed: a node that could
		// run nothing would vote, but hosting is what it is for, and an
		// agent that exits is what an operator's service manager shows
		// (running and refusing every group would only show in placement
		// explanations). What a working QEMU cannot run (a machine type,
		// a file missing on this node) the node reports per group
		// instead (executor/checks.go).
		tlsDir, err := qemuTLSDir(cfg)
		if err != nil {
			return nil, fmt.Errorf("driver qemu: %w", err)
		}
		d, err := qemu.New(context.Background(), qemu.Config{
			MigrationAddr: addr, TLSDir: tlsDir, TLSHostname: tlsutil.NodeName,
			Node: cfg.Name, SharedDir: cfg.SharedDir, RunDir: filepath.Join(cfg.DataDir, "qemu"),
			Binary: q.Binary, Accel: q.Accel, CPU: q.CPU, Machine: q.Machine, StopTimeout: q.StopTimeout,
			KillFrozenAfter: cfg.killFrozenAfter(),
			Supervisor:      []string{exe, SuperviseCommand}, Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("driver qemu: %w", err)
		}
		return d, nil
	}
	return nil, fmt.Errorf("driver: %q is not a known driver (sim, qemu)", cfg.Driver)
}

// qemuTLSDir gives QEMU the node's TLS files for the stream of a live
// move, under the names QEMU's tls-creds-x509 wants, as links to the
// configured files: QEMU reads them at each move, so a certificate or CA
// rotated in place (a new file renamed over the old) is the one used.
// The node's certificate serves both ends, as it does for gRPC. Without
// TLS there is no directory, and moves are plaintext.
func qemuTLSDir(cfg Config) (string, error) {
	if cfg.TLS.Plaintext {
		return "", nil
	}
	dir := filepath.Join(cfg.DataDir, "qemu-tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	for name, target := range map[string]string{
		"ca-cert.pem": cfg.TLS.CAFile, "server-cert.pem": cfg.TLS.CertFile, "server-key.pem": cfg.TLS.KeyFile,
		"client-cert.pem": cfg.TLS.CertFile, "client-key.pem": cfg.TLS.KeyFile,
	} {
		abs, err := filepath.Abs(target)
		if err != nil {
			return "", err
		}
		link := filepath.Join(dir, name)
		if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
			return "", err
		}
		if err := os.Symlink(abs, link); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// SuperviseCommand is the haven binary's hidden subcommand that runs a
// QEMU supervisor (supervise.Main).
const SuperviseCommand = "qemu-supervise"

func balancerMode(m string) placement.Mode {
	switch m {
	case BalancerRecommend:
		return placement.ModeRecommend
	case BalancerAutomatic:
		return placement.ModeAutomatic
	}
	return placement.ModeOff
}
