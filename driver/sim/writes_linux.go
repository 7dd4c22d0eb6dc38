//go:build linux && (amd64 || arm64)

package sim

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's own record of which guest pages were written, independent
// of the dirty log: userfaultfd write-protection in asynchronous mode
// (Linux 6.7), read and re-armed by the PAGEMAP_SCAN ioctl, as CRIU tracks
// a process's writes. A write to a protected page takes a minor fault that
// the kernel resolves itself, marking the page written; a scan reports the
// written pages and protects them again atomically, so a write is never
// lost between two scans. Unprivileged processes may use it for faults of
// their own code (UFFD_USER_MODE_ONLY), which is all a guest's writes are.
//
// The constants and structures are linux/userfaultfd.h's and
// linux/fs.h's (the ioctl numbers as amd64 and arm64 encode them);
// golang.org/x/sys does not carry them.

const (
	uffdUserModeOnly      = 1
	uffdAPI               = 0xaa
	uffdFeatureWPUnpopul  = 1 << 13 // a page never touched counts as protected
	uffdFeatureWPAsync    = 1 << 15
	uffdRegisterModeWP    = 1 << 1
	uffdWriteprotectModeW = 1 << 0
	ioctlUffdAPI          = 0xc018aa3f // _IOWR(0xaa, 0x3f, struct uffdio_api)
	ioctlUffdRegister     = 0xc020aa00 // _IOWR(0xaa, 0x00, struct uffdio_register)
	ioctlUffdWriteprotect = 0xc018aa06 // _IOWR(0xaa, 0x06, struct uffdio_writeprotect)
	ioctlUffdUnregister   = 0x8010aa01 // _IOR(0xaa, 0x01, struct uffdio_range)
	ioctlPagemapScan      = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)
	pmScanWPMatching      = 1 << 0
	pmScanCheckWPAsync    = 1 << 1
	pageIsWritten         = 1 << 1
)

type uffdRange struct{ start, len uint64 }

type uffdioAPI struct{ api, features, ioctls uint64 }

type uffdioRegister struct {
	rng          uffdRange
	mode, ioctls uint64
}

type uffdioWriteprotect struct {
	rng  uffdRange
	mode uint64
}

type pmScanArg struct {
	size, flags, start, end, walkEnd, vec, vecLen, maxPages       uint64
	categoryInverted, categoryMask, categoryAnyofMask, returnMask uint64
}

type pageRegion struct{ start, end, categories uint64 }

// writeTracker tracks the writes to one memory.
type writeTracker struct {
	uffd     int
	pagemap  *os.File
	base     uint64
	end      uint64
	regions  []pageRegion
	pageSize uint64
}

// trackWrites protects all of b and starts tracking writes to it. b must
// stay mapped until close.
func trackWrites(b []byte) (*writeTracker, error) {
	if len(b) == 0 || os.Getpagesize() != PageSize {
		return nil, errors.ErrUnsupported
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, syscall.O_CLOEXEC|syscall.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	if errno != 0 {
		return nil, fmt.Errorf("userfaultfd: %w", errno)
	}
	t := &writeTracker{uffd: int(fd), base: uint64(uintptr(unsafe.Pointer(&b[0]))), pageSize: PageSize}
	t.end = t.base + uint64(len(b))
	ok := false
	defer func() {
		if !ok {
			t.close()
		}
	}()
	api := uffdioAPI{api: uffdAPI, features: uffdFeatureWPAsync | uffdFeatureWPUnpopul}
	if err := ioctl(t.uffd, ioctlUffdAPI, unsafe.Pointer(&api)); err != nil {
		return nil, fmt.Errorf("userfaultfd asynchronous write-protection: %w", err)
	}
	rng := uffdRange{t.base, t.end - t.base}
	reg := uffdioRegister{rng: rng, mode: uffdRegisterModeWP}
	if err := ioctl(t.uffd, ioctlUffdRegister, unsafe.Pointer(&reg)); err != nil {
		return nil, fmt.Errorf("userfaultfd register: %w", err)
	}
	wp := uffdioWriteprotect{rng: rng, mode: uffdWriteprotectModeW}
	if err := ioctl(t.uffd, ioctlUffdWriteprotect, unsafe.Pointer(&wp)); err != nil {
		return nil, fmt.Errorf("userfaultfd write-protect: %w", err)
	}
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return nil, err
	}
	t.pagemap = f
	t.regions = make([]pageRegion, 512)
	// A first scan proves the kernel has PAGEMAP_SCAN (6.7) before anyone
	// relies on it; it finds nothing, as nothing ran since the protection.
	if err := t.written(func(int64, int64) {}); err != nil {
		return nil, err
	}
	ok = true
	return t, nil
}

// written calls f(first, end) for each run of pages written since the
// last call (or since trackWrites), page numbers from the start of the
// memory, end excluded, and protects them again.
func (t *writeTracker) written(f func(first, end int64)) error {
	for start := t.base; start < t.end; {
		arg := pmScanArg{
			size: uint64(unsafe.Sizeof(pmScanArg{})), flags: pmScanWPMatching | pmScanCheckWPAsync,
			start: start, end: t.end,
			vec: uint64(uintptr(unsafe.Pointer(&t.regions[0]))), vecLen: uint64(len(t.regions)),
			categoryMask: pageIsWritten, returnMask: pageIsWritten,
		}
		n, _, errno := syscall.Syscall(syscall.SYS_IOCTL, t.pagemap.Fd(), ioctlPagemapScan, uintptr(unsafe.Pointer(&arg)))
		if errno != 0 {
			return fmt.Errorf("PAGEMAP_SCAN: %w", errno)
		}
		for _, r := range t.regions[:n] {
			f(int64((r.start-t.base)/t.pageSize), int64((r.end-t.base)/t.pageSize))
		}
		if arg.walkEnd <= start {
			return fmt.Errorf("PAGEMAP_SCAN made no progress at %#x", start)
		}
		start = arg.walkEnd
	}
	return nil
}

// close ends the tracking; the memory stays as it is, writable.
//
// Closing the userfaultfd alone lifts the protection of the whole memory
// in one walk with the process's memory map locked for writing, and every
// thread that faults a page meanwhile waits: 60-80 ms for 512 MiB here,
// a guest gap of 346 ms once on a loaded machine (a move cancelled in
// its pre-copy, whose guest runs on). Unregistering a chunk at a time
// holds the lock for one chunk's walk at a time (BenchmarkTrackingLift).
func (t *writeTracker) close() {
	if t.pagemap != nil {
		_ = t.pagemap.Close()
	}
	const chunk = 8 << 20
	for start := t.base; start < t.end && t.end > 0; start += chunk {
		rng := uffdRange{start, min(chunk, t.end-start)}
		if ioctl(t.uffd, ioctlUffdUnregister, unsafe.Pointer(&rng)) != nil {
			break // the close below lifts what is left
		}
	}
	_ = syscall.Close(t.uffd)
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}
