package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/haven-ha/haven/driver"
)

// The shared disk format. A sim disk is one file on shared storage:
//
//	bytes 0..4095  header: JSON {"magic":..,"epoch":..,"node":..,"wall":..}
//	               padded with spaces, byte 4095 a newline
//	then           one JSON record per line, appended by the guest every tick
//
// The header holds the highest epoch that has claimed the disk, the way a
// SCSI-3 persistent reservation holds the key of the current owner: a
// claim by a newer epoch makes every later write from an older one fail.
// Both the claim and each append take flock(LOCK_EX) on the file, so
// "check the header, then write" is atomic against a concurrent claim, also
// between processes (on NFS, Linux maps flock to NFS byte-range locks,
// which also serialize clients). Appends are not fsync'd (the header claim
// is): the records are evidence for tests, not data a guest must not lose.

// HeaderSize is the size of the fixed header at the start of every disk.
const HeaderSize = 4096

// Magic identifies a sim disk header.
const Magic = "haven-sim-disk/v1"

// Header is the claim stored at the start of a disk.
type Header struct {
	Magic string `json:"magic"`
	// Epoch is the highest epoch that has claimed the disk.
	Epoch uint64 `json:"epoch"`
	// Node claimed the disk at Epoch.
	Node string `json:"node"`
	// Wall is when the claim was written (wall clock of the claimer).
	Wall time.Time `json:"wall"`
}

// Record is one guest tick as written to a disk and to the execution log.
type Record struct {
	Node    string    `json:"node"`
	Group   string    `json:"group"`
	VM      string    `json:"vm"`
	Epoch   uint64    `json:"epoch"`
	Counter uint64    `json:"counter"`
	Wall    time.Time `json:"wall"`
}

// FencedError is the error of a write refused because a newer epoch has
// claimed the disk. It matches driver.ErrStaleEpoch under errors.Is.
type FencedError struct {
	Path string
	// Epoch is the epoch of the refused write, Claimed the disk's.
	Epoch, Claimed uint64
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("disk %s claimed by epoch %d, write has epoch %d", e.Path, e.Claimed, e.Epoch)
}

func (e *FencedError) Unwrap() error { return driver.ErrStaleEpoch }

// ClaimDisk records that epoch, on node, owns the disk at path, creating the
// file and its parent directories if missing. It refuses with a
// *FencedError (driver.ErrStaleEpoch) if a higher epoch has claimed the disk.
// Claiming again at the same epoch is allowed, so a restart on the same
// node at the same epoch works.
func ClaimDisk(path, node string, epoch uint64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := lock(f); err != nil {
		return err
	}
	defer unlock(f)
	h, err := readHeader(f, path)
	if err != nil {
		return err
	}
	if h.Epoch > epoch {
		return &FencedError{Path: path, Epoch: epoch, Claimed: h.Epoch}
	}
	buf, err := encodeHeader(Header{Magic: Magic, Epoch: epoch, Node: node, Wall: time.Now().UTC()})
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return err
	}
	// The claim is what fences the older epoch: it must survive a crash of
	// this node, or a reboot could let the old owner write again.
	return f.Sync()
}

// AppendRecord appends r to the disk at path unless a higher epoch than
// r.Epoch has claimed it, in which case it returns a *FencedError
// (driver.ErrStaleEpoch) and writes nothing. The disk must exist (be
// claimed).
func AppendRecord(path string, r Record) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return appendLine(f, path, r.Epoch, append(line, '\n'), make([]byte, HeaderSize))
}

// appendLine is AppendRecord on an open file (O_RDWR|O_APPEND) and an
// encoded record line, so a running guest neither reopens its disk nor
// encodes its record twice every tick. hdr is a HeaderSize scratch buffer,
// reused so a tick does not allocate a page of garbage per disk.
func appendLine(f *os.File, path string, epoch uint64, line, hdr []byte) error {
	if err := lock(f); err != nil {
		return err
	}
	defer unlock(f)
	// Re-read the header on every write: a claim by another node can land
	// between any two ticks, and this check under the lock is what makes
	// it take effect before the very next write.
	h, err := readHeaderInto(f, path, hdr)
	if err != nil {
		return err
	}
	if h.Magic == "" {
		return fmt.Errorf("disk %s: not claimed", path)
	}
	if epoch < h.Epoch {
		return &FencedError{Path: path, Epoch: epoch, Claimed: h.Epoch}
	}
	// One write of one line: with O_APPEND it lands whole at the end.
	_, err = f.Write(line)
	return err
}

// ReadDisk returns the header and every record of the disk at path. A last
// line without its newline (a write cut short by a crash) is ignored.
func ReadDisk(path string) (Header, []Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Header{}, nil, err
	}
	if len(data) < HeaderSize {
		return Header{}, nil, fmt.Errorf("disk %s: %d bytes, shorter than its header", path, len(data))
	}
	h, err := decodeHeader(data[:HeaderSize], path)
	if err != nil {
		return Header{}, nil, err
	}
	recs, err := parseRecords(data[HeaderSize:], path)
	return h, recs, err
}

// LastRecord returns the last complete record on the disk at path,
// whichever VM wrote it; ok is false if there is none (or no disk).
func LastRecord(path string) (Record, bool, error) {
	return lastRecord(path, func(Record) bool { return true })
}

// LastRecordOf returns the last complete record that VM id wrote on the
// disk at path; ok is false if there is none (or no disk). Records of other
// VMs are skipped: every VM of a group writes the group's disks, and a
// booting guest continues its own counter.
func LastRecordOf(path string, id driver.VMID) (Record, bool, error) {
	return lastRecord(path, func(r Record) bool { return r.Group == id.Group && r.VM == id.Resource })
}

// lastRecord reads the file from the end, a growing window at a time, so a
// boot on a long disk reads only its tail.
func lastRecord(path string, match func(Record) bool) (Record, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Record{}, false, err
	}
	size := fi.Size()
	for window := int64(64 << 10); ; window *= 2 {
		start := max(int64(HeaderSize), size-window)
		if start >= size {
			return Record{}, false, nil
		}
		buf := make([]byte, size-start)
		if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
			return Record{}, false, err
		}
		// Drop a torn last line; then walk the complete lines backwards.
		// The first line of the window may be cut at its start unless the
		// window reaches the header, so it only counts in that case.
		buf = buf[:bytes.LastIndexByte(buf, '\n')+1]
		for len(buf) > 0 {
			i := bytes.LastIndexByte(buf[:len(buf)-1], '\n')
			if i < 0 && start > HeaderSize {
				break
			}
			line := buf[i+1 : len(buf)-1]
			buf = buf[:i+1]
			var rec Record
			if err := json.Unmarshal(line, &rec); err != nil {
				return Record{}, false, fmt.Errorf("disk %s: record: %w", path, err)
			}
			if match(rec) {
				return rec, true, nil
			}
		}
		if start == HeaderSize {
			return Record{}, false, nil
		}
	}
}

// ExecLogPath is where a VM's execution log lives: one file per VM under
// sharedDir/.exec, appended by whichever node runs it. Unlike a disk it is
// not fenced, so it shows every tick a guest executed, including ticks
// whose disk write was refused; a checker compares it with the disks.
func ExecLogPath(sharedDir string, id driver.VMID) string {
	return filepath.Join(sharedDir, ".exec", id.Group, id.Resource+".log")
}

// ReadExecLog returns every record of the execution log at path, ignoring
// a last line cut short.
func ReadExecLog(path string) ([]Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseRecords(data, path)
}

func parseRecords(data []byte, path string) ([]Record, error) {
	var recs []Record
	for n := 1; ; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return recs, nil
		}
		var r Record
		if err := json.Unmarshal(data[:i], &r); err != nil {
			return recs, fmt.Errorf("%s: record %d: %w", path, n, err)
		}
		recs = append(recs, r)
		data = data[i+1:]
	}
}

// readHeader reads the header of an open disk. An empty file has no header
// yet (zero Header, epoch 0); anything else that is not a sim disk is an
// error, so a wrong path never gets its first 4 KiB overwritten.
func readHeader(f *os.File, path string) (Header, error) {
	return readHeaderInto(f, path, make([]byte, HeaderSize))
}

func readHeaderInto(f *os.File, path string, buf []byte) (Header, error) {
	n, err := f.ReadAt(buf[:HeaderSize], 0)
	if n == 0 && err == io.EOF {
		return Header{}, nil
	}
	if n < HeaderSize {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("disk %s: %d bytes, shorter than its header", path, n)
		}
		return Header{}, err
	}
	return decodeHeader(buf, path)
}

func decodeHeader(buf []byte, path string) (Header, error) {
	// The JSON ends at the last '}': json.Marshal writes no newline or
	// brace after it, only the padding.
	var h Header
	if err := json.Unmarshal(buf[:bytes.LastIndexByte(buf[:HeaderSize], '}')+1], &h); err != nil {
		return Header{}, fmt.Errorf("disk %s: bad header: %w", path, err)
	}
	if h.Magic != Magic {
		return Header{}, fmt.Errorf("disk %s: magic %q, want %q", path, h.Magic, Magic)
	}
	return h, nil
}

func encodeHeader(h Header) ([]byte, error) {
	js, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	if len(js) > HeaderSize-1 {
		return nil, fmt.Errorf("disk header of %d bytes does not fit in %d", len(js), HeaderSize)
	}
	buf := bytes.Repeat([]byte{' '}, HeaderSize)
	copy(buf, js)
	buf[HeaderSize-1] = '\n'
	return buf, nil
}

// lock takes the exclusive flock of a disk, retrying when a signal
// interrupts the wait.
func lock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			return err
		}
	}
}

func unlock(f *os.File) { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
