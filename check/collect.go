package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/sim"
)

// evidence is everything read from a shared directory.
type evidence struct {
	dir   string
	logs  []*execLog // sorted by group, then VM
	disks []*disk    // sorted by path
}

type execLog struct {
	id   driver.VMID // from the path, which is how the API names it
	path string      // relative to the shared directory
	recs []sim.Record
}

type disk struct {
	path string // relative to the shared directory
	hdr  sim.Header
	recs []sim.Record
}

// collect reads the execution logs first and the disks second. The order
// matters to the reboot rule of the run check: a tick that is missing from
// the disks read later was never written to them, since a guest writes its
// disks right after its execution log and a record never leaves a disk.
func collect(dir string) (*evidence, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("shared directory %s is not a directory", dir)
	}
	ev := &evidence{dir: dir}
	if ev.logs, err = readExecLogs(dir); err != nil {
		return nil, err
	}
	if ev.disks, err = readDisks(dir); err != nil {
		return nil, err
	}
	return ev, nil
}

// readExecLogs reads sharedDir/.exec/<group>/<vm>.log, the fixed layout of
// sim.ExecLogPath; anything else under .exec is not a log and is skipped.
func readExecLogs(dir string) ([]*execLog, error) {
	root := filepath.Join(dir, ".exec")
	groups, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // no VM has run yet
	}
	if err != nil {
		return nil, err
	}
	var logs []*execLog
	for _, g := range groups {
		if !g.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, g.Name()))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			vm, ok := strings.CutSuffix(f.Name(), ".log")
			if !ok || !f.Type().IsRegular() {
				continue
			}
			id := driver.VMID{Group: g.Name(), Resource: vm}
			p := sim.ExecLogPath(dir, id)
			recs, err := sim.ReadExecLog(p)
			if err != nil {
				return nil, fmt.Errorf("execution log: %w", err)
			}
			logs = append(logs, &execLog{id: id, path: rel(dir, p), recs: recs})
		}
	}
	// os.ReadDir sorts by name, so logs are in group, then VM order.
	return logs, nil
}

// readDisks finds every sim disk outside .exec: a regular file whose first
// HeaderSize bytes are a sim header. Other files (saved VM state, images of
// other drivers) are skipped without reading more than their first block.
func readDisks(dir string) ([]*disk, error) {
	execDir := filepath.Join(dir, ".exec")
	var disks []*disk
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == execDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		h, recs, ok, err := readDisk(p)
		if err != nil {
			return err
		}
		if ok {
			disks = append(disks, &disk{path: rel(dir, p), hdr: h, recs: recs})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(disks, func(a, b *disk) int { return strings.Compare(a.path, b.path) })
	return disks, nil
}

// readDisk reads the disk at p if it is one (ok). It holds a shared flock
// while reading: claims and appends take the exclusive one, so a check of a
// live cluster never sees a header half rewritten by a claim.
func readDisk(p string) (h sim.Header, recs []sim.Record, ok bool, err error) {
	f, err := os.Open(p)
	if err != nil {
		return h, nil, false, err
	}
	defer f.Close()
	buf := make([]byte, sim.HeaderSize)
	if _, err := io.ReadFull(f, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return h, nil, false, nil // too short to be a disk
		}
		return h, nil, false, err
	}
	if json.Unmarshal(bytes.TrimRight(buf, " \n"), &h) != nil || h.Magic != sim.Magic {
		return h, nil, false, nil
	}
	if err := lockShared(f); err != nil {
		return h, nil, false, fmt.Errorf("locking disk %s: %w", p, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	h, recs, err = sim.ReadDisk(p)
	if err != nil {
		return h, nil, false, err
	}
	return h, recs, true, nil
}

func lockShared(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH)
		if err != syscall.EINTR {
			return err
		}
	}
}

func rel(dir, p string) string {
	if r, err := filepath.Rel(dir, p); err == nil {
		return r
	}
	return p
}
