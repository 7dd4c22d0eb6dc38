package agent

import (
	"fmt"
	"log/slog"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/sim"
	"github.com/haven-ha/haven/placement"
)

// newDriver opens the node's hypervisor driver. Simulated VMs live in
// this process: they die with it, so none can outlive the lease of an
// agent that was killed.
func newDriver(cfg Config, log *slog.Logger) (driver.Hypervisor, error) {
	switch cfg.Driver {
	case "sim":
		return sim.New(sim.Config{Node: cfg.Name, SharedDir: cfg.SharedDir, Logger: log, Guest: cfg.Sim.guest()}), nil
	}
	return nil, fmt.Errorf("driver: %q is not a known driver (sim)", cfg.Driver)
}

func balancerMode(m string) placement.Mode {
	switch m {
	case BalancerRecommend:
		return placement.ModeRecommend
	case BalancerAutomatic:
		return placement.ModeAutomatic
	}
	return placement.ModeOff
}
