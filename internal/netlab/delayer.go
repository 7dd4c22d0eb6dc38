//go:build linux

package netlab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

// delayerWait bounds the delay program's start (binding its queue) and its
// stop (letting its packets go); either takes milliseconds.
const delayerWait = 10 * time.Second

// delayer is one running wan.Delayer, normally a delay program's process.
type delayer interface {
	// stop lets every held packet go, unbinds, and returns the delayer's
	// counters; an error says it failed, or had died before.
	stop() (counters string, err error)
}

// startDelayer starts a delayer for one link in the router namespace and
// returns once it has bound its queue: a process of Options.Delayer, or
// what Lab.newDelayer starts (a test runs the delayer inside the test
// binary that way, where the race detector sees it). Called with l.mu held.
func (l *Lab) startDelayer(name string, k wan.Link) (delayer, error) {
	if l.newDelayer != nil {
		return l.newDelayer(name, k)
	}
	p, err := l.startDelayerProc(k)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// delayerProc is a running delay program.
type delayerProc struct {
	name   string // for messages: "havenwan", "haven lab-wan"
	cmd    *exec.Cmd
	stderr bytes.Buffer
	ready  chan struct{}
	exited chan struct{}
	// Set before exited is closed.
	lines   []string // stdout after "ready": the counters
	waitErr error
	// killed says a test killed it on purpose (see kill).
	killed bool
}

func (l *Lab) startDelayerProc(k wan.Link) (*delayerProc, error) {
	argv := l.opts.Delayer
	if len(argv) == 0 {
		return nil, errors.New("no delay program (Options.Delayer) to start")
	}
	p := &delayerProc{name: delayerName(argv), ready: make(chan struct{}), exited: make(chan struct{})}
	// The process stays in the root namespace and binds its queue in the
	// router's; the reaper finds a leftover one by this --netns argument.
	p.cmd = exec.Command(argv[0], append(argv[1:len(argv):len(argv)], "--netns", l.router, "--link", k.String())...)
	// Dies with its starter when that never cleans up (see Host.Command
	// for the one caveat of Pdeathsig in Go).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.Stderr = &p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" && p.lines == nil {
				p.lines = []string{}
				close(p.ready)
				continue
			}
			p.lines = append(p.lines, sc.Text())
		}
		// Wait only once stdout is drained, as os/exec requires.
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case <-p.ready:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s %s exited before it was ready: %v: %s", p.name, k, p.waitErr, strings.TrimSpace(p.stderr.String()))
	case <-time.After(delayerWait):
		p.cmd.Process.Kill()
		<-p.exited
		return nil, fmt.Errorf("%s %s not ready after %v: %s", p.name, k, delayerWait, strings.TrimSpace(p.stderr.String()))
	}
}

// delayerName names a delay program in messages: its file name, and its
// first argument when that is a subcommand (haven lab-wan).
func delayerName(argv []string) string {
	name := filepath.Base(argv[0])
	if len(argv) > 1 && !strings.HasPrefix(argv[1], "-") {
		name += " " + argv[1]
	}
	return name
}

// pid is the delay program's process id.
func (p *delayerProc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM, on which the program lets its packets go, and waits.
func (p *delayerProc) stop() (string, error) {
	select {
	case <-p.exited:
		if p.killed {
			return "", nil
		}
		return p.output(), fmt.Errorf("%s died while in use: %v: %s", p.name, p.waitErr, strings.TrimSpace(p.stderr.String()))
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(delayerWait):
		p.cmd.Process.Kill()
		<-p.exited
		return p.output(), fmt.Errorf("%s still running %v after SIGTERM; killed", p.name, delayerWait)
	}
	if p.waitErr != nil {
		return p.output(), fmt.Errorf("%s: %v: %s", p.name, p.waitErr, strings.TrimSpace(p.stderr.String()))
	}
	return p.output(), nil
}

// kill SIGKILLs the process, as a crash would, and waits for it; stop then
// reports nothing.
func (p *delayerProc) kill() error {
	p.killed = true
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-p.exited
	return nil
}

// output is the program's exit report, read once it has exited.
func (p *delayerProc) output() string { return strings.Join(p.lines, "; ") }

// DelayerPids lists the process ids of the delay programs running now, for
// an operator's view and for tests.
func (l *Lab) DelayerPids() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var pids []int
	for d := range l.delayers {
		if p, ok := d.(*delayerProc); ok {
			pids = append(pids, p.pid())
		}
	}
	slices.Sort(pids)
	return pids
}

// DelayerCPU is the CPU time (user and system) the delay programs running
// now have used since they started: what the WAN costs.
func (l *Lab) DelayerCPU() (time.Duration, error) {
	var total time.Duration
	for _, pid := range l.DelayerPids() {
		// utime and stime, fields 14 and 15, count clock ticks of
		// USER_HZ, which Linux fixes at 100 for user space.
		f, err := statFields(pid, 15)
		if err != nil {
			return 0, err
		}
		for _, v := range f[14:16] {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/stat: %v", pid, err)
			}
			total += time.Duration(n) * 10 * time.Millisecond
		}
	}
	return total, nil
}
