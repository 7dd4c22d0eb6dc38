// Package devcluster supervises the agent processes of a cluster on one
// machine: `haven dev` and the integration tests both use it.
//
// It owns what the two do alike: where a node's config and log live,
// writing the config, starting `haven agent --config` as a child process
// with its output in the log, watching it exit, stopping it (SIGTERM, then
// SIGKILL to its process group), and asking the agents over their API
// which of them leads. What a caller's nodes look like (names, addresses,
// timings), what it prints, and what it does when something goes wrong are
// the caller's.
package devcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"

	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Node is one agent of a local cluster: its files, its process while it
// runs, and a client connection to its API that lasts across restarts.
type Node struct {
	Name string
	// Dir is the node's directory: it holds ConfigPath and LogPath, and
	// the agent runs in it.
	Dir        string
	ConfigPath string
	LogPath    string
	// Addr is the agent's gRPC address.
	Addr string

	conn   *grpc.ClientConn
	client havenv1.ClusterServiceClient

	mu   sync.Mutex
	proc *Process
}

// NewNode describes node name of a cluster kept in dir: its files are
// dir/name/haven.yaml and dir/name/agent.log. The connection to addr is
// dialed through rpcclient.Dial with opts; gRPC connects on first use.
func NewNode(dir, name, addr string, opts ...grpc.DialOption) (*Node, error) {
	nd := filepath.Join(dir, name)
	conn, err := rpcclient.Dial(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Node{
		Name:       name,
		Dir:        nd,
		ConfigPath: filepath.Join(nd, "haven.yaml"),
		LogPath:    filepath.Join(nd, "agent.log"),
		Addr:       addr,
		conn:       conn,
		client:     havenv1.NewClusterServiceClient(conn),
	}, nil
}

// Conn is the connection to the node's API.
func (n *Node) Conn() *grpc.ClientConn { return n.conn }

// Client is the node's ClusterService.
func (n *Node) Client() havenv1.ClusterServiceClient { return n.client }

// Close closes the connection; stop the process first.
func (n *Node) Close() error { return n.conn.Close() }

// WriteConfig writes cfg, the node's agent.Config, to ConfigPath as YAML,
// after comment as a first line when it is not empty, creating the node's
// directory; `haven agent --config` reads it back as exactly cfg. (cfg is
// not typed: only cmd/haven and the tests may import agent/, see
// agent/imports_test.go.)
func (n *Node) WriteConfig(cfg any, comment string) error {
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return err
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("%s: encoding config: %w", n.Name, err)
	}
	if comment != "" {
		b = append([]byte("# "+comment+"\n"), b...)
	}
	return os.WriteFile(n.ConfigPath, b, 0o644)
}

// StartOptions say how Start runs the agent.
type StartOptions struct {
	// Banner is written to the log before the agent starts, to tell one
	// run from the next.
	Banner string
	// ParentDeath is the signal the agent gets when this process dies
	// without stopping it (SIGKILL, a crash): SIGTERM lets it stop
	// cleanly, SIGKILL makes it die with a test binary. Linux only; 0 for
	// none.
	ParentDeath syscall.Signal
	// Command builds the command for a binary and its arguments;
	// exec.Command when nil. The integration tests' network lab passes
	// one that runs the agent inside a network namespace.
	Command func(name string, arg ...string) *exec.Cmd
}

// ErrRunning is Start's error for a node whose agent runs already.
var ErrRunning = errors.New("agent is running")

// Start runs `binary agent --config ConfigPath` in Dir, with its output
// appended to LogPath and without the caller's HAVEN_* variables. The agent
// gets a process group of its own: a Ctrl-C in the terminal reaches the
// caller alone, which then stops the agents in order.
func (n *Node) Start(binary string, o StartOptions) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil && !n.proc.Exited() {
		return fmt.Errorf("starting %s: %w (pid %d)", n.Name, ErrRunning, n.proc.Pid())
	}
	logf, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// The child has its own descriptor once started; ours is not needed.
	defer logf.Close()
	if o.Banner != "" {
		fmt.Fprintln(logf, o.Banner)
	}
	command := o.Command
	if command == nil {
		command = exec.Command
	}
	cmd := command(binary, "agent", "--config", n.ConfigPath)
	cmd.Dir = n.Dir
	cmd.Env = agentEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logf, logf
	setProcAttr(cmd, o.ParentDeath)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", n.Name, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	n.proc = p
	return nil
}

// Process is the agent's current or last process; nil before the first
// Start.
func (n *Node) Process() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// Running reports whether the agent was started and has not exited.
func (n *Node) Running() bool {
	p := n.Process()
	return p != nil && !p.Exited()
}

// agentEnv drops HAVEN_* variables from env: the agent reads them over its
// config file, and a HAVEN_NAME left in the shell would give every node one
// name.
func agentEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, e := range env {
		if !strings.HasPrefix(e, "HAVEN_") {
			out = append(out, e)
		}
	}
	return out
}

// Process is one run of an agent.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // Wait's result, valid once done is closed
}

// Pid is the agent's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err waits for the process to exit and says how it ended, as exec.Cmd.Wait
// does: nil for exit status 0.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Signal sends sig to the agent alone (SIGKILL, SIGSTOP, SIGCONT,
// SIGQUIT...), not to what it started.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Terminate asks the agent to stop: SIGTERM to the agent alone, so that it
// stops what it started itself. Where there is no SIGTERM it kills it.
func (p *Process) Terminate() error { return terminate(p.cmd.Process) }

// Kill kills the agent and everything in its process group at once. Once
// the agent has exited its group id may be reused, so Kill leaves it be.
func (p *Process) Kill() error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	return killGroup(p.cmd.Process)
}
