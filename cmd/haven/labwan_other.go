//go:build !linux

package main

import "github.com/spf13/cobra"

// platformCmds are the commands only this platform has: none (haven dev's
// network lab, with its delay program lab-wan, is Linux's).
func platformCmds() []*cobra.Command { return nil }
