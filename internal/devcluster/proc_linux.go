//go:build linux

package devcluster

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcAttr gives the agent a process group of its own and, when
// parentDeath is set, the signal it gets if its parent dies first. It keeps
// what cmd set already (the lab's command sets its own parent-death signal).
func setProcAttr(cmd *exec.Cmd, parentDeath syscall.Signal) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A Ctrl-C in the terminal reaches the foreground process group only;
	// with a group of their own the agents hear nothing until the caller
	// stops them one by one.
	cmd.SysProcAttr.Setpgid = true
	if parentDeath != 0 {
		// If the caller dies without stopping them (SIGKILL, a crash), the
		// agents are told to stop instead of lingering on their ports.
		cmd.SysProcAttr.Pdeathsig = parentDeath
	}
}

func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

// killGroup kills the agent and anything it started.
func killGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
