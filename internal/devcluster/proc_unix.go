//go:build unix && !linux

package devcluster

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcAttr: see proc_linux.go; there is no parent-death signal here.
func setProcAttr(cmd *exec.Cmd, _ syscall.Signal) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

func killGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
