package devcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent"
	"github.com/haven-ha/haven/internal/waitfor"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fakeAgentEnv makes the test binary play an agent: Start runs it as
// `BINARY agent --config PATH`, and TestMain acts the part it names.
const fakeAgentEnv = "DEVCLUSTER_FAKE_AGENT"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeAgentEnv); mode != "" {
		os.Exit(fakeAgent(mode))
	}
	os.Exit(m.Run())
}

// fakeAgent writes what it was given to stdout (the log), says "ready", and
// then: "clean" exits 0 on SIGTERM, "stubborn" ignores SIGTERM, "fail"
// exits 3 at once.
func fakeAgent(mode string) int {
	wd, _ := os.Getwd()
	fmt.Printf("args=%q wd=%s haven_name=%q\n", os.Args[1:], wd, os.Getenv("HAVEN_NAME"))
	switch mode {
	case "fail":
		return 3
	case "stubborn":
		// Not signal.Notify: it would undo Ignore.
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		time.Sleep(time.Hour)
		return 0
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	fmt.Println("ready")
	<-term
	fmt.Println("stopping on SIGTERM")
	return 0
}

func newTestNode(t *testing.T, mode string) *Node {
	t.Helper()
	t.Setenv(fakeAgentEnv, mode)
	n, err := NewNode(t.TempDir(), "n1", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

func start(t *testing.T, n *Node) *Process {
	t.Helper()
	if err := n.Start(os.Args[0], StartOptions{Banner: "--- start ---", ParentDeath: syscall.SIGKILL}); err != nil {
		t.Fatal(err)
	}
	p := n.Process()
	t.Cleanup(func() {
		_ = p.Kill() // a no-op once it has exited
		<-p.Done()
	})
	return p
}

// waitLog waits until the node's log holds s.
func waitLog(t *testing.T, n *Node, s string) {
	t.Helper()
	var b []byte
	defer func() {
		if t.Failed() {
			t.Logf("the log:\n%s", b)
		}
	}()
	waitfor.Cond(t, 10*time.Second, fmt.Sprintf("the log to show %q", s), func() bool {
		b, _ = os.ReadFile(n.LogPath)
		return bytes.Contains(b, []byte(s))
	})
}

func TestStartAndStop(t *testing.T) {
	n := newTestNode(t, "clean")
	t.Setenv("HAVEN_NAME", "everyone")
	p := start(t, n)
	if !n.Running() {
		t.Error("not running after Start")
	}
	if err := n.Start(os.Args[0], StartOptions{}); !errors.Is(err, ErrRunning) {
		t.Errorf("second Start: %v, want ErrRunning", err)
	}
	waitLog(t, n, "ready")

	var stopped []string
	Stop(context.Background(), []*Node{n}, StopHooks{
		Killing: func(n *Node, why error) { t.Errorf("killing %s: %v", n.Name, why) },
		Stopped: func(n *Node) { stopped = append(stopped, n.Name) },
	})
	if err := p.Err(); err != nil {
		t.Errorf("exit: %v, want status 0", err)
	}
	if n.Running() || !reflect.DeepEqual(stopped, []string{"n1"}) {
		t.Errorf("running %v, stopped %v", n.Running(), stopped)
	}
	b, _ := os.ReadFile(n.LogPath)
	log := string(b)
	for _, want := range []string{
		"--- start ---\n",
		fmt.Sprintf("args=%q", []string{"agent", "--config", n.ConfigPath}),
		"wd=" + n.Dir,
		`haven_name=""`, // HAVEN_* stay with the caller
		"stopping on SIGTERM",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}

	// A restart appends to the same log.
	start(t, n)
	waitLog(t, n, "stopping on SIGTERM\n--- start ---\n")
}

func TestStopKillsAfterGrace(t *testing.T) {
	n := newTestNode(t, "stubborn")
	p := start(t, n)
	waitLog(t, n, "ready")
	grace := errors.New("still running after the grace")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 200*time.Millisecond, grace)
	defer cancel()
	var why error
	Stop(ctx, []*Node{n}, StopHooks{Killing: func(_ *Node, err error) { why = err }})
	if why != grace {
		t.Errorf("killed because %v, want %v", why, grace)
	}
	var ee *exec.ExitError
	if err := p.Err(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("exit: %v, want killed", err)
	}
}

func TestStopNow(t *testing.T) {
	nodes := []*Node{newTestNode(t, "stubborn"), newTestNode(t, "stubborn")}
	for _, n := range nodes {
		start(t, n)
		waitLog(t, n, "ready")
	}
	now := errors.New("asked twice")
	ctx, cancel := context.WithCancelCause(context.Background())
	var killed []string
	time.AfterFunc(100*time.Millisecond, func() { cancel(now) })
	began := time.Now()
	Stop(ctx, nodes, StopHooks{Killing: func(n *Node, why error) {
		if why != now {
			t.Errorf("killing %s: %v", n.Name, why)
		}
		killed = append(killed, n.Name)
	}})
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("stop took %s", took)
	}
	if len(killed) != 2 {
		t.Errorf("killed %v, want both", killed)
	}
}

func TestProcessExit(t *testing.T) {
	n := newTestNode(t, "fail")
	p := start(t, n)
	<-p.Done()
	if !p.Exited() || n.Running() {
		t.Error("still running")
	}
	if err := p.Err(); err == nil || err.Error() != "exit status 3" {
		t.Errorf("Err = %v, want exit status 3", err)
	}
	// Stop leaves an exited agent alone.
	Stop(context.Background(), []*Node{n}, StopHooks{Stopped: func(*Node) { t.Error("stopped an exited agent") }})
}

func TestWriteConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	n, err := NewNode(dir, "n2", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	cfg := agent.Default().Tightened()
	cfg.Name, cfg.Site, cfg.DataDir = "n2", "lab", filepath.Join(n.Dir, "data")
	cfg.Join = []string{"127.0.0.1:7946"}
	if err := n.WriteConfig(cfg, "Written by a test."); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(n.ConfigPath)
	if !strings.HasPrefix(string(b), "# Written by a test.\nname: n2\n") {
		t.Errorf("config file starts %q", b[:min(len(b), 40)])
	}
	got := agent.Default()
	got.Name = "someone-else" // must be overwritten
	if err := got.LoadFile(n.ConfigPath); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, cfg) {
		t.Errorf("config read back differs:\n%+v\nwant\n%+v", got, cfg)
	}
}

func TestAgentEnvDropsHaven(t *testing.T) {
	got := agentEnv([]string{"PATH=/bin", "HAVEN_NAME=x", "HAVEN_ADDR=y", "HOME=/root", "XHAVEN_=ok"})
	if want := []string{"PATH=/bin", "HOME=/root", "XHAVEN_=ok"}; !reflect.DeepEqual(got, want) {
		t.Errorf("agentEnv = %v, want %v", got, want)
	}
}

func TestLeader(t *testing.T) {
	n1, n2, n3 := &Node{Name: "n1"}, &Node{Name: "n2"}, &Node{Name: "n3"}
	says := func(n *Node, leader string) Answer {
		return Answer{Node: n, Status: &havenv1.GetStatusResponse{Leader: leader}}
	}
	down := Answer{Node: n3, Err: status.Error(codes.Unavailable, "connection refused")}
	tests := []struct {
		name    string
		answers []Answer
		want    *Node
		err     string
	}{
		{"all agree", []Answer{says(n1, "n2"), says(n2, "n2"), says(n3, "n2")}, n2, ""},
		{"one agent", []Answer{says(n1, "n1")}, n1, ""},
		{"one down", []Answer{says(n1, "n2"), says(n2, "n2"), down}, nil, "n3: rpc error: code = Unavailable"},
		{"no leader yet", []Answer{says(n1, ""), says(n2, "n2")}, nil, "n1 sees no leader"},
		{"disagree", []Answer{says(n1, "n1"), says(n2, "n2")}, nil, "n2 sees leader n2, n1 sees n1"},
		{"leader not asked", []Answer{says(n1, "n3"), says(n2, "n3")}, nil, `leader "n3" is none of the agents asked`},
		{"nobody", nil, nil, "no agent"},
	}
	for _, tt := range tests {
		got, err := Leader(tt.answers)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s: Leader = %v, %v; want %v, %q", tt.name, got, err, tt.want, tt.err)
		}
	}
}

type statusServer struct {
	havenv1.UnimplementedClusterServiceServer
	name, leader string
}

func (s *statusServer) GetStatus(context.Context, *havenv1.GetStatusRequest) (*havenv1.GetStatusResponse, error) {
	return &havenv1.GetStatusResponse{Node: s.name, Leader: s.leader}, nil
}

// TestPoll asks agents on loopback: two answer, one address is closed.
func TestPoll(t *testing.T) {
	dir := t.TempDir()
	var nodes []*Node
	for _, name := range []string{"n1", "n2", "n3"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if name == "n3" {
			lis.Close()
		} else {
			srv := grpc.NewServer()
			havenv1.RegisterClusterServiceServer(srv, &statusServer{name: name, leader: "n2"})
			go srv.Serve(lis)
			t.Cleanup(srv.Stop)
		}
		n, err := NewNode(dir, name, lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
	}
	answers := Poll(context.Background(), nodes)
	for i, a := range answers[:2] {
		if a.Node != nodes[i] || a.Err != nil || a.Status.GetNode() != nodes[i].Name {
			t.Errorf("answer %d: %+v", i, a)
		}
	}
	if status.Code(answers[2].Err) != codes.Unavailable {
		t.Errorf("closed port: %v", answers[2].Err)
	}
	if l, err := Leader(answers[:2]); l != nodes[1] || err != nil {
		t.Errorf("Leader = %v, %v", l, err)
	}
	if _, err := Leader(answers); err == nil || !strings.HasPrefix(err.Error(), "n3: ") {
		t.Errorf("with n3 down: %v", err)
	}
}
