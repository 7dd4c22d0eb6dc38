//go:build !linux

package main

import (
	"fmt"
	"os"
)

// The guest runs only as the test guest's Linux userland; this keeps the
// module building (go vet ./...) elsewhere.
func main() {
	fmt.Fprintln(os.Stderr, "haven-guest runs only inside the Linux test guest")
	os.Exit(1)
}
