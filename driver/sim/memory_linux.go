package sim

import "syscall"

// noHugePages keeps guest memory in 4 KiB pages where transparent huge
// pages are "always" on: otherwise the first write to a page would commit
// the 2 MiB around it, and a VM with a small working set would cost far
// more than it touches. Failure only costs memory, so it is ignored.
func noHugePages(b []byte) { _ = syscall.Madvise(b, syscall.MADV_NOHUGEPAGE) }
