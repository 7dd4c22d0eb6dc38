package consensus

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// What a damaged log or snapshot does to hashicorp/raft and raft-boltdb,
// and so why Open checks them first:
//
//   - bbolt checksums only its two meta pages. A flipped byte elsewhere
//     is found when a page is read, and bbolt then panics ("invalid page
//     type", "pgid above high water mark"), or returns an entry whose
//     msgpack no longer decodes; a file cut short is mapped past its end,
//     and touching those pages is a SIGBUS, which kills the process.
//     Raft reads its log from its own goroutines, where neither can be
//     recovered from, so Open reads every entry once, in a goroutine that
//     turns both into errors (debug.SetPanicOnFault), before Raft starts.
//   - A snapshot carries a CRC in its meta.json that
//     FileSnapshotStore.Open checks. Raft tries its snapshots newest
//     first and takes the first that opens; with none it refuses to start
//     ("failed to load any existing snapshots"). An older snapshot is only
//     as good as the log after it, which compaction may have dropped, so
//     Open lets Raft fall back only when the log still reaches back to it.
//
// A damage that leaves the bytes decodable (a bit flipped inside a name)
// is not found: neither file checksums its entries. The FSM halts on an
// entry that does not decode (fsm.HaltError).

// DamageError is a Raft log or snapshot this node cannot trust. Nothing
// was started; the node's files were not changed.
type DamageError struct {
	// Path is the damaged file or snapshot directory.
	Path string
	Err  error
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("raft state %s is damaged: %v", e.Path, e.Err)
}

func (e *DamageError) Unwrap() error { return e.Err }

// logFile is the Raft log in a node's Raft directory; snapshotDir its
// snapshots (FileSnapshotStore's own name).
const (
	logFile     = "raft.db"
	snapshotDir = "snapshots"
)

// guarded runs f in a goroutine of its own where a bad memory access is a
// panic rather than a crash, and returns a panic as an error.
func guarded(f func() error) (err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		debug.SetPanicOnFault(true)
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("cannot be read (%v)", p)
			}
		}()
		err = f()
	}()
	<-done
	return err
}

// CheckState reads the Raft log and the snapshots in dir as Raft will
// when it starts, and returns a *DamageError for what it cannot read. A
// damaged newest snapshot is only logged when an older one is intact and
// the log still holds every entry after it: Raft falls back on it.
func CheckState(dir string, log *slog.Logger) error {
	// Not a damage: bbolt would wait for the lock, the check would time
	// out and call it one.
	if err := notInUse(filepath.Join(dir, logFile)); err != nil {
		return fmt.Errorf("%w: is another agent running on this data directory?", err)
	}
	first, last, err := checkLog(filepath.Join(dir, logFile))
	if err != nil {
		return &DamageError{Path: filepath.Join(dir, logFile), Err: err}
	}
	return checkSnapshots(dir, first, last, log)
}

// checkLog opens the log read-only and reads every entry in it, and the
// term and vote. It returns the log's first and last index (0, 0 when it
// is empty or there is none).
func checkLog(path string) (first, last uint64, err error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	err = guarded(func() error {
		s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{ReadOnly: true, Timeout: time.Second}})
		if err != nil {
			return err
		}
		defer s.Close()
		for _, k := range []string{"CurrentTerm", "LastVoteTerm"} {
			if _, err := s.GetUint64([]byte(k)); err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
				return fmt.Errorf("%s: %w", k, err)
			}
		}
		if first, err = s.FirstIndex(); err != nil {
			return err
		}
		if last, err = s.LastIndex(); err != nil {
			return err
		}
		var l raft.Log
		for i := first; i <= last && last > 0; i++ {
			if err := s.GetLog(i, &l); err != nil {
				return fmt.Errorf("entry %d of %d..%d: %w", i, first, last, err)
			}
			if l.Index != i {
				return fmt.Errorf("entry %d reads as index %d", i, l.Index)
			}
			if l.Type == raft.LogCommand {
				if err := proto.Unmarshal(l.Data, &havenv1.Command{}); err != nil {
					return fmt.Errorf("entry %d: command does not decode: %w", i, err)
				}
			}
		}
		return nil
	})
	return first, last, err
}

// checkSnapshots opens every snapshot (which checks its CRC) and reads it
// through.
func checkSnapshots(dir string, first, last uint64, log *slog.Logger) error {
	store, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, nil)
	if err != nil {
		return &DamageError{Path: filepath.Join(dir, snapshotDir), Err: err}
	}
	metas, err := store.List()
	if err != nil {
		return &DamageError{Path: filepath.Join(dir, snapshotDir), Err: err}
	}
	var newest error
	for i, m := range metas {
		path := filepath.Join(dir, snapshotDir, m.ID)
		err := guarded(func() error {
			_, rc, err := store.Open(m.ID)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			return err
		})
		if err == nil {
			if newest == nil {
				return nil
			}
			// Raft restores this one and replays the log after it, so
			// the log must still hold index m.Index+1 on.
			if last > 0 && first <= m.Index+1 {
				if log != nil {
					log.Warn("the newest snapshot is damaged; starting from an older one and the log after it", "damaged", newest, "from", path)
				}
				return nil
			}
			return &DamageError{Path: filepath.Join(dir, snapshotDir, metas[0].ID), Err: fmt.Errorf("%w; the older snapshot %s is intact, but the log (%d..%d) no longer holds the entries after it", newest, m.ID, first, last)}
		}
		if i == 0 {
			newest = err
		}
	}
	if newest != nil {
		return &DamageError{Path: filepath.Join(dir, snapshotDir, metas[0].ID), Err: fmt.Errorf("%w, and no older snapshot is intact", newest)}
	}
	return nil
}

// SetAside moves a node's Raft state (the log and the snapshots in dir)
// into a new directory dir/damaged-<time>, and returns its path, so the
// node starts as a new member with its old name and is sent the leader's
// snapshot. Nothing is deleted. The node's term and vote, where the old
// log still yields them, are carried into a new log: a node that forgot
// its vote could vote twice in one term. Run it with the agent stopped.
func SetAside(dir string, now time.Time) (string, error) {
	old := filepath.Join(dir, logFile)
	var keep []string
	for _, name := range []string{logFile, snapshotDir} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			keep = append(keep, name)
		}
	}
	if len(keep) == 0 {
		return "", fmt.Errorf("%s holds no Raft state (no %s, no %s)", dir, logFile, snapshotDir)
	}
	if err := notInUse(old); err != nil {
		return "", fmt.Errorf("%w: stop the agent first", err)
	}
	// The term and vote first, while the file is where it was; any
	// failure to read them leaves them out.
	stable := map[string][]byte{}
	_ = guarded(func() error {
		s, err := raftboltdb.New(raftboltdb.Options{Path: old, BoltOptions: &bbolt.Options{ReadOnly: true, Timeout: time.Second}})
		if err != nil {
			return err
		}
		defer s.Close()
		for _, k := range []string{"CurrentTerm", "LastVoteTerm", "LastVoteCand"} {
			if v, err := s.Get([]byte(k)); err == nil && len(v) > 0 {
				stable[k] = append([]byte(nil), v...)
			}
		}
		return nil
	})
	aside := filepath.Join(dir, "damaged-"+now.UTC().Format("20060102T150405Z"))
	for i := 2; ; i++ {
		err := os.Mkdir(aside, 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || i > 100 {
			return "", err
		}
		aside = filepath.Join(dir, fmt.Sprintf("damaged-%s-%d", now.UTC().Format("20060102T150405Z"), i))
	}
	for _, name := range keep {
		if err := os.Rename(filepath.Join(dir, name), filepath.Join(aside, name)); err != nil {
			return aside, err
		}
	}
	if len(stable) == 0 {
		return aside, nil
	}
	s, err := raftboltdb.New(raftboltdb.Options{Path: old})
	if err != nil {
		return aside, err
	}
	defer s.Close()
	for k, v := range stable {
		if err := s.Set([]byte(k), v); err != nil {
			return aside, err
		}
	}
	return aside, nil
}

// notInUse fails when a process holds the log open: bbolt takes an
// exclusive flock on a log it writes, as the agent's is.
func notInUse(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("%s is held by another process (%v)", path, err)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
