//go:build !linux || !(amd64 || arm64)

package sim

import "errors"

// writeTracker needs Linux's userfaultfd (on amd64 and arm64, whose ioctl numbers
// writes_linux.go holds); elsewhere a pause hashes all of
// the memory (see keptSums).
type writeTracker struct{}

func trackWrites([]byte) (*writeTracker, error) { return nil, errors.ErrUnsupported }

func (*writeTracker) written(func(first, end int64)) error { return errors.ErrUnsupported }

func (*writeTracker) close() {}
