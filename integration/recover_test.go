package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/agent"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestDamagedRaftStateRebuilt: a minority node's Raft state is damaged
// between runs, three ways: its log cut short, its log's pages overwritten,
// its newest snapshot flipped. Started again, the node either refuses to
// run, naming the file and `haven recover`, or (a damaged snapshot with an
// intact older one) recovers on its own. After `haven recover` it rejoins
// under its name and catches up from the leader. No acknowledged write is
// lost, and none of its reads ever shows less than was acknowledged by the
// index it says it answers at. One cluster serves the three cases.
func TestDamagedRaftStateRebuilt(t *testing.T) {
	c := newCluster(t, func(cfg *agent.Config) {
		// Snapshots every few entries, so that the damaged node has some
		// and the rebuilt one is sent one.
		cfg.Raft.SnapshotThreshold = 16
		cfg.Raft.SnapshotInterval = 300 * time.Millisecond
	})
	c.startN(3)
	leader := c.leader(30 * time.Second)
	// acked: every group whose creation was acknowledged, and the log
	// index it was created at.
	acked := map[string]uint64{}
	create := func(name string, start bool) {
		t.Helper()
		via := c.leader(30 * time.Second)
		resp, err := via.api().CreateGroup(ctx(t), &havenv1.CreateGroupRequest{Spec: vmGroup(name)})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		acked[name] = resp.GetGroup().GetCreateIndex()
		if start {
			if _, err := via.api().StartGroup(ctx(t), &havenv1.StartGroupRequest{Name: name}); err != nil {
				t.Fatalf("start %s: %v", name, err)
			}
		}
	}
	running := []string{"g0", "g1", "g2"}
	for _, g := range running {
		create(g, true)
	}
	c.allOnline(leader, running, 30*time.Second, anyOwner)
	var followers []*node
	for _, n := range c.nodes {
		if n != leader {
			followers = append(followers, n)
		}
	}
	v, w := followers[0], followers[1]

	// servesAcked waits until n serves every acknowledged group, and
	// fails on any answer that lacks one acknowledged at or below the
	// index the answer was made at.
	servesAcked := func(n *node) {
		t.Helper()
		var reads int
		waitFor(t, 30*time.Second, n.name+" serves every acknowledged group", func() error {
			resp, err := n.api().ListGroups(ctx(t), &havenv1.ListGroupsRequest{})
			if err != nil {
				return err
			}
			reads++
			at := resp.GetMeta().GetIndex()
			have := map[string]bool{}
			for _, g := range resp.GetGroups() {
				name := g.GetSpec().GetName()
				if _, ok := acked[name]; !ok {
					t.Fatalf("%s serves group %q, which was never created", n.name, name)
				}
				have[name] = true
			}
			var missing []string
			for name, idx := range acked {
				if have[name] {
					continue
				}
				if idx <= at {
					t.Fatalf("%s answers at index %d without group %q, acknowledged at index %d", n.name, at, name, idx)
				}
				missing = append(missing, name)
			}
			if len(missing) > 0 {
				sort.Strings(missing)
				return fmt.Errorf("at index %d, not yet %v", at, missing)
			}
			return nil
		})
		t.Logf("%s serves all %d acknowledged groups (%d reads checked)", n.name, len(acked), reads)
	}
	// refuses starts n and wants it to exit, naming the damage and the
	// command that rebuilds it.
	refuses := func(n *node, what string) {
		t.Helper()
		n.start()
		select {
		case <-n.proc.Process().Done():
		case <-time.After(30 * time.Second):
			t.Fatalf("%s started with %s", n.name, what)
		}
		hint := "haven recover --data-dir " + n.cfg.DataDir
		if run := thisRun(n); !strings.Contains(run, "is damaged") || !strings.Contains(run, hint) {
			c.dumpLog(n)
			t.Fatalf("%s exited without saying its Raft state is damaged and %q", n.name, hint)
		}
		t.Logf("%s refused %s: %s", n.name, what, lastLine(n, "is damaged"))
	}
	recoverNode := func(n *node) {
		t.Helper()
		out, err := exec.Command(binary(t, "haven"), "recover", "--data-dir", n.cfg.DataDir).CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("damaged-")) {
			t.Fatalf("haven recover: %v\n%s", err, out)
		}
		t.Logf("haven recover: %s", strings.TrimSpace(string(out)))
		n.start()
		servesAcked(n)
	}
	raftDB := func(n *node) string { return filepath.Join(n.cfg.DataDir, "raft", "raft.db") }

	// 1. The log cut short, as a disk that lost its tail: all but its
	// first three pages (the two meta pages and one more). Half the file
	// is not enough: bbolt grows its file ahead of its data, and a small
	// log's live pages may all sit in the first half, leaving a log that
	// is not damaged at all.
	v.kill()
	if err := os.Truncate(raftDB(v), 3*int64(os.Getpagesize())); err != nil {
		t.Fatal(err)
	}
	create("while-truncated", false)
	refuses(v, "a truncated log")
	recoverNode(v)

	// 2. Garbage over every page header of the log after the two meta
	// pages (bit rot, a stray write), on the node just rebuilt.
	v.kill()
	b, err := os.ReadFile(raftDB(v))
	if err != nil {
		t.Fatal(err)
	}
	for off := 2 * os.Getpagesize(); off+16 <= len(b); off += os.Getpagesize() {
		copy(b[off:off+16], bytes.Repeat([]byte{0xa5}, 16))
	}
	if err := os.WriteFile(raftDB(v), b, 0o600); err != nil {
		t.Fatal(err)
	}
	create("while-corrupt", false)
	refuses(v, "a corrupt log")
	recoverNode(v)

	// 3. The other follower's newest snapshot, a byte flipped: Raft's CRC
	// finds it. With an older intact snapshot and the log after it the
	// node starts from those; otherwise it refuses as above.
	snaps := filepath.Join(w.cfg.DataDir, "raft", "snapshots")
	waitFor(t, 20*time.Second, w.name+" has a snapshot", func() error {
		if newestSnapshot(snaps) == "" {
			return errNotYet
		}
		return nil
	})
	w.kill()
	state := filepath.Join(snaps, newestSnapshot(snaps), "state.bin")
	sb, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	sb[len(sb)/2] ^= 0xff
	if err := os.WriteFile(state, sb, 0o600); err != nil {
		t.Fatal(err)
	}
	create("while-snapshot-damaged", false)
	w.start()
	waitFor(t, 30*time.Second, w.name+" to refuse or start", func() error {
		if !w.running() || strings.Contains(thisRun(w), "agent started") {
			return nil
		}
		return errNotYet
	})
	if !w.running() {
		t.Logf("%s refused its damaged snapshot: %s", w.name, lastLine(w, "is damaged"))
		if !strings.Contains(thisRun(w), "is damaged") {
			t.Fatalf("%s exited without saying its snapshot is damaged", w.name)
		}
		recoverNode(w)
	} else {
		if !strings.Contains(thisRun(w), "the newest snapshot is damaged; starting from an older one") {
			t.Fatalf("%s started on a damaged snapshot without a word", w.name)
		}
		t.Logf("%s started from an older snapshot and the log after it", w.name)
		servesAcked(w)
	}

	// Every node, the leader too, serves every acknowledged write, and
	// the groups that ran still run once each.
	for _, n := range c.nodes {
		servesAcked(n)
	}
	c.checkInvariants(running)
}

// newestSnapshot names the newest snapshot in dir ("" if none):
// FileSnapshotStore names them term-index-time, and a temporary one ends
// in ".tmp".
func newestSnapshot(dir string) string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return ""
	}
	// Raft's own order: by term, then index, then id.
	sort.Slice(names, func(i, j int) bool {
		var ti, ii, tj, ij uint64
		fmt.Sscanf(strings.ReplaceAll(names[i], "-", " "), "%d %d", &ti, &ii)
		fmt.Sscanf(strings.ReplaceAll(names[j], "-", " "), "%d %d", &tj, &ij)
		if ti != tj {
			return ti < tj
		}
		if ii != ij {
			return ii < ij
		}
		return names[i] < names[j]
	})
	return names[len(names)-1]
}

// lastLine is the last line of n's log that contains s.
func lastLine(n *node, s string) string {
	data, _ := os.ReadFile(n.proc.LogPath)
	lines := strings.Split(string(data), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

// thisRun is n's log since its last start.
func thisRun(n *node) string {
	data, _ := os.ReadFile(n.proc.LogPath)
	if i := bytes.LastIndex(data, []byte("==== start ")); i >= 0 {
		data = data[i:]
	}
	return string(data)
}
