//go:build !linux

package supervise

import (
	"errors"
	"syscall"
)

var errLinuxOnly = errors.New("the QEMU supervisor needs Linux (Pdeathsig, /proc)")

func childAttr() (*syscall.SysProcAttr, error) { return nil, errLinuxOnly }

func threadsStopped(int) (bool, error) { return false, errLinuxOnly }

func sleepUntil(int64) {}
