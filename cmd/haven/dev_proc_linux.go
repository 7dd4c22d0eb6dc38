//go:build linux

package main

import (
	"os"
	"os/exec"
	"syscall"
)

func setDevProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A Ctrl-C in the terminal reaches the foreground process group
		// only; with a group of their own the agents hear nothing until
		// dev stops them one by one.
		Setpgid: true,
		// If dev dies without stopping them (SIGKILL, a crash), the agents
		// are told to stop instead of lingering on the dev ports.
		Pdeathsig: syscall.SIGTERM,
	}
}

func terminateProcess(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

// killProcessGroup kills the agent and anything it started.
func killProcessGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
