package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// childAttr makes the child die with the supervisor: SIGKILL when the
// thread that forked it exits, which startChild keeps from happening
// before the supervisor dies or the child is reaped (see there). The
// child stays in the supervisor's session, so a signal to the agent's
// process group reaches neither.
func childAttr() (*syscall.SysProcAttr, error) {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}, nil
}

// threadsStopped reports whether no thread of process pid can execute:
// each is stopped or dead, as /proc/PID/task/*/stat shows. One thread's
// state says nothing of the others' (a SIGSTOP stops each thread as it
// next leaves the kernel), and a QEMU's vCPUs are threads of their own.
// A process that is gone counts as stopped, with fs.ErrNotExist.
func threadsStopped(pid int) (bool, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist), err
	}
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			return false, err
		}
		switch statState(b) {
		case 'T', 't', 'Z', 'X':
		default:
			return false, nil
		}
	}
	return true, nil
}

// statState is the state letter of a /proc stat line, "pid (comm) S ...";
// comm may hold spaces and parentheses, so it is found after the last ')'.
func statState(stat []byte) byte {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return '?'
	}
	return stat[i+2]
}

// sleepUntil blocks its thread until CLOCK_MONOTONIC reads end, to within
// the kernel's timer slack (50 µs by default), where the Go runtime's
// timers wait in epoll_wait with millisecond granularity and can fire
// almost a millisecond late. The sleep is absolute, so a signal that
// interrupts it (the runtime's preemption) is simply retried.
func sleepUntil(end int64) {
	ts := unix.NsecToTimespec(end)
	for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil) == unix.EINTR {
	}
}
