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
		if err := dk.validateFile(); err != nil {
			return fmt.Errorf("disks[%d].%w", i, err)
		}
		// Two entries for one file: two writers of one disk.
		p := filepath.Clean(dk.Path)
		if seen[p] {
			return fmt.Errorf("disks[%d].path %q: listed twice", i, dk.Path)
		}
		seen[p] = true
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

// Validate says what is wrong with a disk given on its own, as to a
// hot-plug (DiskHotPlugger.AttachDisk): it needs a name, which is how a
// later DetachDisk names it, and the checks VMSpec.Validate makes of
// every disk: a path inside the shared storage, a known format.
func (d DiskSpec) Validate() error {
	if !validName(d.Name) {
		return fmt.Errorf("name %q: must be a non-empty name without path separators", d.Name)
	}
	return d.validateFile()
}

// SameFile reports whether d and o name the same file.
func (d DiskSpec) SameFile(o DiskSpec) bool { return filepath.Clean(d.Path) == filepath.Clean(o.Path) }

func (d DiskSpec) validateFile() error {
	if !filepath.IsLocal(d.Path) {
		return fmt.Errorf("path %q: must be relative and inside the shared directory", d.Path)
	}
	if d.Format != "" && d.Format != "raw" && d.Format != "qcow2" {
		return fmt.Errorf("format %q: must be raw or qcow2", d.Format)
	}
	return nil
}
