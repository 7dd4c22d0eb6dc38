package agent

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// setNice gives every thread of this process the nice value n. On Linux a
// nice value belongs to a thread, not to the process; threads the Go
// runtime starts later inherit it from the thread that starts them, which
// by then has it too.
func setNice(n int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && err != unix.ESRCH {
			return fmt.Errorf("nice %d: %w (lowering it below 0 needs root or CAP_SYS_NICE)", n, err)
		}
	}
	return nil
}
