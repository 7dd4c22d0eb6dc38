package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// Validate says what is wrong with a spec before any driver acts on it:
// the checks every driver needs, because a VM's id names files and a
// disk's path must stay inside the shared storage. A driver adds its own
// (a minimum memory size, a machine type it can run) after these.
func (s VMSpec) Validate() error {
	switch {
	case !validName(s.ID.Group) || !validName(s.ID.Resource):
		return fmt.Errorf("id %q: group and resource must be non-empty names without path separators", s.ID)
	case s.Epoch == 0:
		return errors.New("epoch: must be at least 1 (0 is an unclaimed disk)")
	case s.VCPUs < 0:
		return fmt.Errorf("vcpus: %d is negative", s.VCPUs)
	case s.MemoryBytes <= 0:
		return fmt.Errorf("memory_bytes: %d, must be positive", s.MemoryBytes)
	}
	seen := map[string]bool{}
	for i, dk := range s.Disks {
		if !filepath.IsLocal(dk.Path) {
			return fmt.Errorf("disks[%d].path %q: must be relative and inside the shared directory", i, dk.Path)
		}
		// Two entries for one file: two writers of one disk.
		p := filepath.Clean(dk.Path)
		if seen[p] {
			return fmt.Errorf("disks[%d].path %q: listed twice", i, dk.Path)
		}
		seen[p] = true
		if dk.Format != "" && dk.Format != "raw" && dk.Format != "qcow2" {
			return fmt.Errorf("disks[%d].format %q: must be raw or qcow2", i, dk.Format)
		}
	}
	for _, f := range []struct{ name, path string }{{"kernel", s.Boot.Kernel}, {"initrd", s.Boot.Initrd}} {
		if f.path != "" && (!filepath.IsAbs(f.path) || filepath.Clean(f.path) != f.path) {
			return fmt.Errorf("boot.%s %q: must be a clean absolute path", f.name, f.path)
		}
	}
	if s.Boot.Kernel == "" && (s.Boot.Initrd != "" || s.Boot.Cmdline != "") {
		return errors.New("boot: an initrd or a command line needs a kernel")
	}
	return nil
}

func validName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\\\x00")
}
