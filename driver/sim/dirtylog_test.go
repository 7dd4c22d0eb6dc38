package sim

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/logging/logtest"
)

func TestBitmap(t *testing.T) {
	for _, pages := range []int64{1, 63, 64, 65, 200} {
		b := newBitmap(pages)
		if b.next(0) != -1 || b.count() != 0 {
			t.Errorf("%d pages: a new bitmap has bits", pages)
		}
		b.setAll(pages)
		var got []int64
		for i := b.next(0); i >= 0; i = b.next(i + 1) {
			got = append(got, i)
		}
		if int64(len(got)) != pages || got[len(got)-1] != pages-1 || b.count() != pages {
			t.Errorf("%d pages: setAll then next gives %d pages, the last %d", pages, len(got), got[len(got)-1])
		}
		b.unset(0)
		want := int64(1)
		if pages == 1 {
			want = -1
		}
		if b.has(0) || b.next(0) != want {
			t.Errorf("%d pages: unset 0, next(0) = %d, want %d", pages, b.next(0), want)
		}
	}
	a, c := newBitmap(130), newBitmap(130)
	a.set(3)
	c.set(129)
	a.or(c)
	if a.count() != 2 || !a.has(3) || !a.has(129) || a.next(4) != 129 {
		t.Errorf("or: %v", a)
	}
}

// Every guest write sets its page's bit while the log runs, and only
// then; taking the log hands over exactly the pages written since the
// last take.
func TestDirtyLog(t *testing.T) {
	m := newTestMemory(t, 64*PageSize)
	d := newDirtier(1, m, 1<<30, 32*PageSize, int64(time.Millisecond))
	d.tick(m, 1)
	m.putUint64At(0, 1)
	if m.dirty != nil {
		t.Fatal("writes started a log")
	}
	m.logDirty()
	if m.dirty.count() != 0 {
		t.Fatal("starting the log marked pages")
	}
	before := slices.Clone(m.buf)
	d.tick(m, 2)
	m.putUint64At(0, 2)
	got := m.takeDirty(newBitmap(m.pages()))
	for i := range m.pages() {
		changed := !slices.Equal(m.page(i), before[i*PageSize:(i+1)*PageSize])
		if changed && !got.has(i) {
			t.Errorf("page %d changed but is not in the log", i)
		}
	}
	if !got.has(0) || got.count() > 33 {
		t.Errorf("log has %d pages (page 0: %v), want the counter's and at most the working set", got.count(), got.has(0))
	}
	if m.dirty.count() != 0 {
		t.Error("taking the log left bits in the new one")
	}
	m.putUint64At(8*PageSize, 3)
	if again := m.takeDirty(newBitmap(m.pages())); again.count() != 1 || !again.has(8) {
		t.Errorf("second take: %d pages, want page 8 alone", again.count())
	}
	m.stopDirtyLog()
	m.putUint64At(0, 4) // no log, no panic
}

// A move logs its switchover and its end either way at Info, with the
// checksum and the guest's count, so an operator can match both sides.
func TestMigrationLogs(t *testing.T) {
	var buf logtest.Buffer
	dir, clk := t.TempDir(), newClock()
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	n1 := New(Config{Node: "n1", SharedDir: dir, Now: clk.Now, Guest: busyGuest, Logger: logger.With("node", "n1")})
	n2 := New(Config{Node: "n2", SharedDir: dir, Now: clk.Now, Guest: busyGuest, Logger: logger.With("node", "n2")})
	defer n1.Close()
	defer n2.Close()
	lease := clk.Now().Add(time.Minute)
	start(t, n1, bigSpec(web, 1), lease)
	waitCounter(t, n1, web, 3)
	for epoch := uint64(2); epoch <= 3; epoch++ {
		a, b := net.Pipe()
		mig := migrate(context.Background(), t, n1, n2, 1, bigSpec(web, epoch), a, b, driver.MigrateOptions{}, nil)
		if mig.outErr != nil || mig.inErr != nil {
			t.Fatalf("move to epoch %d: %v / %v", epoch, mig.outErr, mig.inErr)
		}
		if epoch == 2 { // rolled back
			if err := n2.Kill(web, 2); err != nil {
				t.Fatal(err)
			}
			if err := n1.Resume(web, 1, lease); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := n2.Activate(web, 3, lease); err != nil {
		t.Fatal(err)
	}
	var got []string
	for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		msg := rec["msg"].(string)
		switch msg {
		case "vm paused for switchover", "vm activated", "vm resumed", "vm incoming complete":
			got = append(got, rec["node"].(string)+" "+msg)
			if rec["level"] != "INFO" || rec["counter"] == nil || msg != "vm resumed" && rec["checksum"] == nil {
				t.Errorf("%s", line)
			}
		}
	}
	want := []string{
		"n1 vm paused for switchover", "n2 vm incoming complete", "n1 vm resumed",
		"n1 vm paused for switchover", "n2 vm incoming complete", "n2 vm activated",
	}
	if !slices.Equal(got, want) {
		t.Errorf("log lines %q, want %q", got, want)
	}
}
