//go:build !unix

package main

import (
	"os"
	"os/exec"
)

// Without process groups and SIGTERM the agents can only be killed.
func setDevProcAttr(*exec.Cmd) {}

func terminateProcess(p *os.Process) error { return p.Kill() }

func killProcessGroup(p *os.Process) error { return p.Kill() }
