package integration

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func gossipKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

// keyring runs `haven keyring args...` against n and returns its output.
func (n *node) keyring(args ...string) (string, error) {
	cmd := exec.Command(binary(n.c.t, "haven"), append([]string{"--addr", n.grpcAddr(), "keyring"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("haven keyring %v: %v\n%s", args, err, out)
	}
	return string(out), nil
}

// TestGossipKeyRotation: three agents with a gossip key and groups
// running rotate the key through the CLI (install, use, remove, each
// through a different node) while nothing else happens: no failover, no
// freeze, no lease expiry, no member reported failed. A node restarted
// afterwards rejoins with the keyring it kept, although its config still
// names the old key, and an agent that has only the old key never gets in.
func TestGossipKeyRotation(t *testing.T) {
	old, next := gossipKey(t), gossipKey(t)
	t0 := time.Now()
	phase := func(what string) { t.Logf("phase %s done at %s", what, time.Since(t0).Round(100*time.Millisecond)) }
	c := newCluster(t, withGossipKey(old))
	leader, names, before := c.runGroups(3, "k", 3)

	phase("groups running")
	var wg sync.WaitGroup
	defer wg.Wait() // a Fatal in watchSteady must not leave it logging after the test
	wg.Go(func() {
		// Gossip runs a while between the steps: each node's view is
		// probed across the change before the next one.
		for i, step := range [][]string{{"install", next}, {"use", next}, {"remove", old}} {
			time.Sleep(1500 * time.Millisecond)
			if out, err := c.nodes[i].keyring(step...); err != nil {
				t.Errorf("%v", err)
			} else {
				t.Logf("keyring %s through %s:\n%s", step[0], c.nodes[i].name, out)
			}
		}
	})
	w := c.watchSteady(leader, names, before, 6*time.Second)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, n := range c.nodes {
		if v, ok := metric(t, n, "haven_lease_expiries_total"); !ok || v != 0 {
			t.Errorf("%s: haven_lease_expiries_total %v (found %v), want 0", n.name, v, ok)
		}
	}
	out, err := c.nodes[1].keyring("list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Keys []struct {
			Key       string
			HeldBy    int
			PrimaryOn []string
		}
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(list.Keys) != 1 || list.Keys[0].Key != next || list.Keys[0].HeldBy != 3 || len(list.Keys[0].PrimaryOn) != 3 {
		t.Fatalf("keyring after the rotation:\n%s\nwant only the new key, on all 3 nodes", out)
	}
	t.Logf("rotation: false failovers %d, freezes %d, false deaths %d, leader %s term %d throughout", w.moved, w.froze, w.deaths, w.leader, w.term)

	// A restart after the rotation: the config still says the old key,
	// the kept keyring wins.
	phase("rotation")
	back := c.follower(leader)
	back.stop()
	back.start()
	waitFor(t, 20*time.Second, back.name+" back in gossip on every node", func() error {
		for _, n := range c.nodes {
			if err := sees(n, back.name, havenv1.NodeStatus_NODE_STATUS_ALIVE); err != nil {
				return err
			}
		}
		return nil
	})
	if !logContains(back, "gossip.encrypt is not the primary key of the keyring kept in data_dir") {
		t.Errorf("%s did not say it used its kept keyring over gossip.encrypt", back.name)
	}

	phase("restart")
	// An agent with only the old key tries and is never let in.
	stale := c.add(0)
	stale.reconfigure(func(cfg *agent.Config) { cfg.BootstrapExpect = 0 })
	stale.start()
	waitFor(t, 20*time.Second, stale.name+" trying to join", func() error {
		if !logContains(stale, "join failed, will retry") {
			return errNotYet
		}
		return nil
	})
	// It keeps trying for a while (one second apart at most): no node
	// may list it meanwhile.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		for _, n := range c.nodes[:3] {
			if err := sees(n, stale.name, havenv1.NodeStatus_NODE_STATUS_UNSPECIFIED); err != nil {
				t.Fatalf("the node with the old key got in: %v", err)
			}
		}
	}
	if logContains(stale, "joined cluster") {
		t.Errorf("%s, with only the old key, joined gossip", stale.name)
	}
	phase("old key refused")
}

// sees checks that n lists node with status want; UNSPECIFIED means
// that n does not list it at all.
func sees(n *node, node string, want havenv1.NodeStatus) error {
	resp, err := n.api().ListNodes(ctx(n.c.t), &havenv1.ListNodesRequest{})
	if err != nil {
		return err
	}
	got := havenv1.NodeStatus_NODE_STATUS_UNSPECIFIED
	for _, ni := range resp.GetNodes() {
		if ni.GetNode().GetName() == node {
			got = ni.GetNode().GetStatus()
		}
	}
	if got != want {
		return fmt.Errorf("%s lists %s as %v, want %v", n.name, node, got, want)
	}
	return nil
}
