//go:build !unix

package devcluster

import (
	"os"
	"os/exec"
	"syscall"
)

// Without process groups and SIGTERM the agents can only be killed.
func setProcAttr(*exec.Cmd, syscall.Signal) {}

func terminate(p *os.Process) error { return p.Kill() }

func killGroup(p *os.Process) error { return p.Kill() }
