//go:build !linux

package sim

func noHugePages([]byte) {}
