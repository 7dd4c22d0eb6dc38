package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// haven recover needs a data directory, refuses one without Raft state,
// refuses a log an agent holds, and otherwise moves the state aside.
func TestRecover(t *testing.T) {
	if _, err := runHaven(t, "recover"); err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("no data dir: %v", err)
	}
	dir := t.TempDir()
	if _, err := runHaven(t, "recover", "--data-dir", dir); err == nil || !strings.Contains(err.Error(), "holds no Raft state") {
		t.Fatalf("empty data dir: %v", err)
	}
	raftDir := filepath.Join(dir, "raft")
	if err := os.MkdirAll(filepath.Join(raftDir, "snapshots"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(raftDir, "raft.db"), []byte("not a bolt file"), 0o600); err != nil {
		t.Fatal(err)
	}
	// An agent holds the log: bbolt's exclusive lock.
	f, err := os.Open(filepath.Join(raftDir, "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := runHaven(t, "recover", "--data-dir", dir); err == nil || !strings.Contains(err.Error(), "stop the agent first") {
		t.Fatalf("log in use: %v", err)
	}
	f.Close()
	out, err := runHaven(t, "recover", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := filepath.Glob(filepath.Join(raftDir, "damaged-*", "raft.db"))
	if len(ents) != 1 || !strings.Contains(out, "damaged-") {
		t.Fatalf("after recover: %v\n%s", ents, out)
	}
	if _, err := os.Stat(filepath.Join(raftDir, "raft.db")); !os.IsNotExist(err) {
		t.Fatalf("the damaged log is still in place: %v", err)
	}
}
