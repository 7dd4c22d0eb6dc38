package lab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

const (
	havenwanPkg = "github.com/haven-ha/haven/integration/lab/cmd/havenwan"
	// binDirPrefix starts the name of the temporary directory (under
	// os.TempDir) that holds this process's havenwan build, followed by
	// the pid and start time of the process, so the reaper can tell a dead
	// run's directory from a live one's.
	binDirPrefix = "haven-lab-bin-"

	// delayerWait bounds havenwan's start (binding its queue) and its
	// stop (letting its packets go); either takes milliseconds.
	delayerWait = 10 * time.Second
)

// delayer is one running wan.Delayer, normally a havenwan process.
type delayer interface {
	// stop lets every held packet go, unbinds, and returns the delayer's
	// counters; an error says it failed, or had died before.
	stop() (counters string, err error)
}

// startDelayer starts a delayer for one link in the router namespace and
// returns once it has bound its queue: a havenwan process, or what
// Lab.newDelayer starts (a test runs the delayer inside the test binary
// that way, where the race detector sees it).
func (l *Lab) startDelayer(name string, k wan.Link) (delayer, error) {
	if l.newDelayer != nil {
		return l.newDelayer(name, k)
	}
	p, err := l.startHavenwan(k)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// havenwanBuild is the havenwan binary, built once per test binary.
var havenwanBuild struct {
	once      sync.Once
	dir, path string
	err       error
}

// havenwan builds the havenwan command (once per process) into a directory
// named after this process, and returns its path. The go command's cache
// makes a build after the first one on a machine take about a second.
func havenwan() (string, error) {
	b := &havenwanBuild
	b.once.Do(func() {
		var start uint64
		if start, b.err = startTime(os.Getpid()); b.err != nil {
			return
		}
		if b.dir, b.err = os.MkdirTemp("", fmt.Sprintf("%s%d-%d-", binDirPrefix, os.Getpid(), start)); b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "havenwan")
		if out, err := exec.Command("go", "build", "-o", b.path, havenwanPkg).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", havenwanPkg, err, out)
		}
	})
	return b.path, b.err
}

// removeHavenwan deletes the binary built by this process. A test binary
// that never calls it (one without a TestMain that does) leaves the
// directory to the reaper of the next lab.
func removeHavenwan() {
	if havenwanBuild.dir != "" {
		os.RemoveAll(havenwanBuild.dir)
	}
}

// havenwanProc is a running havenwan.
type havenwanProc struct {
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

func (l *Lab) startHavenwan(k wan.Link) (*havenwanProc, error) {
	bin, err := havenwan()
	if err != nil {
		return nil, err
	}
	p := &havenwanProc{ready: make(chan struct{}), exited: make(chan struct{})}
	// The process stays in the root namespace and binds its queue in the
	// router's; the reaper finds a leftover one by this --netns argument.
	p.cmd = exec.Command(bin, "--netns", l.router, "--link", k.String())
	// Dies with the test binary when cleanups never run (see
	// Host.Command for the one caveat of Pdeathsig in Go).
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
		return nil, fmt.Errorf("havenwan %s exited before it was ready: %v: %s", k, p.waitErr, strings.TrimSpace(p.stderr.String()))
	case <-time.After(delayerWait):
		p.cmd.Process.Kill()
		<-p.exited
		return nil, fmt.Errorf("havenwan %s not ready after %v: %s", k, delayerWait, strings.TrimSpace(p.stderr.String()))
	}
}

// stop sends SIGTERM, on which havenwan lets its packets go, and waits.
func (p *havenwanProc) stop() (string, error) {
	select {
	case <-p.exited:
		if p.killed {
			return "", nil
		}
		return p.output(), fmt.Errorf("havenwan died while in use: %v: %s", p.waitErr, strings.TrimSpace(p.stderr.String()))
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(delayerWait):
		p.cmd.Process.Kill()
		<-p.exited
		return p.output(), fmt.Errorf("havenwan still running %v after SIGTERM; killed", delayerWait)
	}
	if p.waitErr != nil {
		return p.output(), fmt.Errorf("havenwan: %v: %s", p.waitErr, strings.TrimSpace(p.stderr.String()))
	}
	return p.output(), nil
}

// kill SIGKILLs the process, as a crash would, and waits for it; stop then
// reports nothing.
func (p *havenwanProc) kill() error {
	p.killed = true
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-p.exited
	return nil
}

// output is havenwan's exit report, read once it has exited.
func (p *havenwanProc) output() string { return strings.Join(p.lines, "; ") }
