package sim

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
)

func rec(epoch, counter uint64) Record {
	return Record{Node: "n1", Group: "web", VM: "vm", Epoch: epoch, Counter: counter, Wall: time.Date(2030, 1, 1, 0, 0, 0, int(counter), time.UTC)}
}

func TestClaimDiskCreatesFileWithFixedHeader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "d.img")
	if err := ClaimDisk(path, "n1", 3); err != nil {
		t.Fatalf("ClaimDisk: %v", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != HeaderSize || data[HeaderSize-1] != '\n' {
		t.Fatalf("fresh disk: %d bytes ending %q, want a %d-byte header ending in a newline", len(data), data[len(data)-1], HeaderSize)
	}
	h, recs := readDisk(t, path)
	if h.Magic != Magic || h.Epoch != 3 || h.Node != "n1" || len(recs) != 0 {
		t.Errorf("ReadDisk: %+v, %d records", h, len(recs))
	}
}

// The SCSI-3-PR-like fence: the highest claim wins, and appends below it
// are refused with nothing written.
func TestClaimAndAppendFence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	steps := []struct {
		name  string
		do    func() error
		stale bool
	}{
		{"claim 1", func() error { return ClaimDisk(path, "n1", 1) }, false},
		{"append 1", func() error { return AppendRecord(path, rec(1, 1)) }, false},
		{"reclaim 1 (restart, same epoch)", func() error { return ClaimDisk(path, "n1", 1) }, false},
		{"append 1 again", func() error { return AppendRecord(path, rec(1, 2)) }, false},
		{"claim 2 by n2", func() error { return ClaimDisk(path, "n2", 2) }, false},
		{"append 1 after claim 2", func() error { return AppendRecord(path, rec(1, 3)) }, true},
		{"claim 1 after claim 2", func() error { return ClaimDisk(path, "n1", 1) }, true},
		{"append 2", func() error { return AppendRecord(path, rec(2, 3)) }, false},
		{"append 3 without a claim", func() error { return AppendRecord(path, rec(3, 4)) }, false},
	}
	for _, s := range steps {
		err := s.do()
		if s.stale {
			var fe *FencedError
			if !errors.Is(err, driver.ErrStaleEpoch) || !errors.As(err, &fe) || fe.Claimed != 2 || fe.Epoch != 1 {
				t.Errorf("%s: %v, want a FencedError (epoch 1, claimed 2)", s.name, err)
			}
		} else if err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
	h, recs := readDisk(t, path)
	if h.Epoch != 2 || h.Node != "n2" {
		t.Errorf("header %+v, want epoch 2 by n2", h)
	}
	var got []uint64
	for _, r := range recs {
		got = append(got, r.Epoch*100+r.Counter)
	}
	want := []uint64{101, 102, 203, 304}
	if len(got) != len(want) {
		t.Fatalf("records (epoch*100+counter) %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("records (epoch*100+counter) %v, want %v", got, want)
		}
	}
	if recs[0] != rec(1, 1) {
		t.Errorf("round trip: %+v, want %+v", recs[0], rec(1, 1))
	}
	last, ok, err := LastRecord(path)
	if err != nil || !ok || last.Counter != 4 {
		t.Errorf("LastRecord: %+v %v %v, want counter 4", last, ok, err)
	}
}

func TestClaimDiskRefusesForeignFile(t *testing.T) {
	for name, content := range map[string]string{
		"short":     "hello",
		"not json":  string(make([]byte, HeaderSize+10)),
		"bad magic": `{"magic":"x"}` + string(make([]byte, HeaderSize)),
	} {
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := ClaimDisk(path, "n1", 1); err == nil {
			t.Errorf("%s: ClaimDisk succeeded on a file that is not a sim disk", name)
		}
		if data, _ := os.ReadFile(path); string(data) != content {
			t.Errorf("%s: ClaimDisk modified a foreign file", name)
		}
	}
}

func TestAppendRecordNeedsDisk(t *testing.T) {
	dir := t.TempDir()
	if err := AppendRecord(filepath.Join(dir, "missing"), rec(1, 1)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("append to a missing disk: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := AppendRecord(empty, rec(1, 1)); err == nil {
		t.Error("append to an unclaimed disk succeeded")
	}
}

// A record cut short by a crash mid-write is not a record.
func TestReadDiskIgnoresTornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	if err := ClaimDisk(path, "n1", 1); err != nil {
		t.Fatal(err)
	}
	for c := uint64(1); c <= 3; c++ {
		if err := AppendRecord(path, rec(1, c)); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"node":"n1","counter":4`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, recs := readDisk(t, path); len(recs) != 3 {
		t.Errorf("%d records, want 3", len(recs))
	}
	if last, ok, err := LastRecord(path); err != nil || !ok || last.Counter != 3 {
		t.Errorf("LastRecord: %+v %v %v, want counter 3", last, ok, err)
	}
}

func TestLastRecordEmpty(t *testing.T) {
	dir := t.TempDir()
	if _, ok, err := LastRecord(filepath.Join(dir, "missing")); ok || err != nil {
		t.Errorf("missing disk: ok %v err %v", ok, err)
	}
	path := filepath.Join(dir, "d.img")
	if err := ClaimDisk(path, "n1", 1); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := LastRecord(path); ok || err != nil {
		t.Errorf("fresh disk: ok %v err %v", ok, err)
	}
}

// LastRecord reads only a tail window; it must still find the last record
// of a long disk.
func TestLastRecordLongDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	if err := ClaimDisk(path, "n1", 1); err != nil {
		t.Fatal(err)
	}
	for c := uint64(1); c <= 2000; c++ { // ~250 KiB, beyond the window
		if err := AppendRecord(path, rec(1, c)); err != nil {
			t.Fatal(err)
		}
	}
	if last, ok, err := LastRecord(path); err != nil || !ok || last.Counter != 2000 {
		t.Errorf("LastRecord: %+v %v %v, want counter 2000", last, ok, err)
	}
}

func TestExecLogPath(t *testing.T) {
	got := ExecLogPath("/shared", driver.VMID{Group: "web", Resource: "vm"})
	if want := filepath.FromSlash("/shared/.exec/web/vm.log"); got != want {
		t.Errorf("ExecLogPath: %q, want %q", got, want)
	}
}

// Every VM of a group writes the group's disks; a booting VM continues
// from its own last record, even one far back behind the other VM's.
func TestLastRecordOfOneVM(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	if err := ClaimDisk(path, "n1", 1); err != nil {
		t.Fatal(err)
	}
	db := driver.VMID{Group: "web", Resource: "db"}
	other := func(c uint64) Record { r := rec(1, c); r.VM = db.Resource; return r }
	if err := AppendRecord(path, rec(1, 7)); err != nil {
		t.Fatal(err)
	}
	for c := uint64(1); c <= 2000; c++ { // pushes web/vm's record out of the first window
		if err := AppendRecord(path, other(c)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		id   driver.VMID
		want uint64
		ok   bool
	}{
		{web, 7, true},
		{db, 2000, true},
		{driver.VMID{Group: "web", Resource: "none"}, 0, false},
	} {
		r, ok, err := LastRecordOf(path, tc.id)
		if err != nil || ok != tc.ok || r.Counter != tc.want || (ok && r.VM != tc.id.Resource) {
			t.Errorf("LastRecordOf(%s): %+v %v %v, want counter %d ok %v", tc.id, r, ok, err, tc.want, tc.ok)
		}
	}
	if r, ok, err := LastRecord(path); err != nil || !ok || r.VM != db.Resource || r.Counter != 2000 {
		t.Errorf("LastRecord: %+v %v %v, want db's counter 2000", r, ok, err)
	}
}
