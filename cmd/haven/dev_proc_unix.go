//go:build unix && !linux

package main

import (
	"os"
	"os/exec"
	"syscall"
)

func setDevProcAttr(cmd *exec.Cmd) {
	// See dev_proc_linux.go; there is no parent-death signal here.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func terminateProcess(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

func killProcessGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
