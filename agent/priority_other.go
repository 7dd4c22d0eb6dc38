//go:build !linux

package agent

import "fmt"

// setNice is Linux only.
func setNice(n int) error {
	return fmt.Errorf("nice %d: only supported on Linux", n)
}
