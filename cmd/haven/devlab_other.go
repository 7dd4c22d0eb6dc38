//go:build !linux

package main

import (
	"context"
	"errors"
)

// devNetwork is Linux's (devlab_linux.go): network namespaces.
type devNetwork struct{}

func (*devNetwork) hints() string { return "" }

func (c *devCluster) buildLab(context.Context, devOptions) error {
	return errors.New("haven dev --sites needs Linux: it runs each agent in a network namespace of its own")
}

func (c *devCluster) closeLab() {}
