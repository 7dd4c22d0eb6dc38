package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haven-ha/haven/integration/lab"
	"github.com/haven-ha/haven/internal/logging/logtest"
	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var labPrefixRE = regexp.MustCompile(`(?m)^network lab (` + lab.GlobalPrefix + `[a-z0-9]{5}): `)

// TestDevSites runs `haven dev --sites a:1,b:1 --witness --wan 20ms±5ms,1%`
// as an operator would, waits for a cluster of three agents in three sites
// with a leader (asked through dev's forwarder on loopback), partitions a
// from b and heals it with `haven dev net`, then stops it with SIGINT and
// checks that nothing of its lab is left: no namespace, no delay program,
// no control socket, no owner record.
func TestDevSites(t *testing.T) {
	lab.RequireRoot(t)
	bin := binary(t, "haven")
	dir := t.TempDir()
	// Below Linux's ephemeral range (32768 and up): a port in it may be
	// the local end of any test's outgoing connection, which made dev
	// find a forwarded port taken (CI, "bind: address already in use").
	base := 20000 + 10*rand.IntN(1200)
	dev := exec.Command(bin, "dev", "--sites", "a:1,b:1", "--witness", "--wan", "20ms±5ms,1%",
		"--data", filepath.Join(dir, "dev"), "--base-port", strconv.Itoa(base))
	var out logtest.Buffer
	dev.Stdout, dev.Stderr = &out, &out
	// Should the test binary die, dev gets SIGINT and cleans up as on a
	// Ctrl-C.
	dev.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGINT}
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- dev.Wait() }()
	stopped := false
	var prefix string
	t.Cleanup(func() {
		if !stopped {
			// The test failed midway: stop dev as Ctrl-C would, and
			// kill it if that hangs (the next lab's reaper then
			// removes what it left).
			dev.Process.Signal(syscall.SIGINT)
			select {
			case <-exited:
			case <-time.After(60 * time.Second):
				dev.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			t.Logf("haven dev's output:\n%s", out.String())
			if prefix != "" {
				for _, n := range []string{"a-1", "b-1", "w-1"} {
					if b, err := os.ReadFile(filepath.Join(dir, "dev", n, "agent.log")); err == nil {
						t.Logf("---- %s log ----\n%s", n, tail(string(b), 40))
					}
				}
			}
		}
	})

	waitFor(t, 120*time.Second, "haven dev ready", func() error {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("haven dev exited: %v", err)
		default:
		}
		if m := labPrefixRE.FindStringSubmatch(out.String()); m != nil {
			prefix = m[1]
		}
		if !strings.Contains(out.String(), "Press Ctrl-C to stop the cluster.") {
			return errNotYet
		}
		return nil
	})
	if prefix == "" {
		t.Fatalf("haven dev printed no lab prefix")
	}
	if n := len(delayPrograms(t, prefix)); n != 3 {
		t.Errorf("%d delay programs run for lab %s, want 3 (a|b, a|w, b|w)", n, prefix)
	}

	// The forwarder of a-1's API on loopback, as the printed hints use it.
	conn, err := rpcclient.Dial(fmt.Sprintf("127.0.0.1:%d", base+13))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := havenv1.NewClusterServiceClient(conn)
	waitFor(t, 60*time.Second, "3 members alive in 3 sites and a leader", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		nodes, err := api.ListNodes(ctx, &havenv1.ListNodesRequest{})
		if err != nil {
			return err
		}
		sites := map[string]bool{}
		for _, n := range nodes.GetNodes() {
			if n.GetNode().GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE {
				sites[n.GetNode().GetSite()] = true
			}
		}
		if len(nodes.GetNodes()) != 3 || len(sites) != 3 {
			return fmt.Errorf("%d members, alive in sites %v", len(nodes.GetNodes()), sites)
		}
		st, err := api.GetStatus(ctx, &havenv1.GetStatusRequest{})
		if err != nil {
			return err
		}
		if st.GetLeader() == "" {
			return fmt.Errorf("no leader")
		}
		return nil
	})

	net := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, bin, append([]string{"dev", "net", "--lab", prefix}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("haven dev net %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	if got := net("partition", "a", "b"); !strings.Contains(got, "cuts: a-1|b-1") {
		t.Errorf("partition a b said %q", got)
	}
	if got := net("show"); !strings.Contains(got, "cuts: a-1|b-1\n") || !strings.Contains(got, "a|b 20ms±5ms,1%") {
		t.Errorf("show after the partition:\n%s", got)
	}
	net("heal")
	if got := net("show"); !strings.Contains(got, "cuts: none") {
		t.Errorf("show after heal:\n%s", got)
	}

	if err := dev.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("haven dev after SIGINT: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("haven dev still running 60s after SIGINT")
	}
	if !strings.Contains(out.String(), "removing network lab "+prefix) {
		t.Errorf("haven dev did not say it removed its lab")
	}
	nss, err := filepath.Glob("/run/netns/" + prefix + "-*")
	if err != nil || len(nss) != 0 {
		t.Errorf("namespaces left: %v %v", nss, err)
	}
	if pids := delayPrograms(t, prefix); len(pids) != 0 {
		t.Errorf("delay programs left: %v", pids)
	}
	for _, p := range []string{"/run/haven-dev/" + prefix + ".sock", "/run/haven-lab/" + prefix} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
}

// delayPrograms lists the pids of `haven lab-wan` processes bound in lab
// prefix's router namespace.
func delayPrograms(t *testing.T, prefix string) []int {
	t.Helper()
	procs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if len(argv) > 3 && argv[1] == "lab-wan" && strings.Contains(string(b), "\x00"+prefix+"-r\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
