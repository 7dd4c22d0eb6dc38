package testguest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tick is one "haven-tick <n> <dirtied_mib>" line of the guest.
type Tick struct {
	// N is 1 for the first tick after boot and one more for each tick
	// after it. It lives in guest memory, so it carries on across a
	// migration and starts again from 1 only if the guest reboots.
	N uint64
	// DirtiedMiB is how much memory the guest wrote at its dirty rate
	// since boot (the fill at boot not counted).
	DirtiedMiB uint64
	// Seen is when Poll read the line: after the guest printed it, by up
	// to the time between polls. So "no tick after time X" is: Poll at X,
	// and later Last().Seen is still not after X.
	Seen time.Time
}

// Message is any other line of the guest's: "haven-ready ...",
// "haven-cmd hang", "haven-disks sda", "haven-error ...", "haven-exit 1".
type Message struct {
	Text string
	// AfterTick is the N of the last tick before the message in the
	// log, 0 if none: "no tick after haven-cmd hang" is Last().N ==
	// AfterTick of that message.
	AfterTick uint64
	Seen      time.Time
}

// Serial reads the log of the guest's console (QEMU's -serial file:PATH)
// as it grows. Lines that are not the guest's, the kernel's among them,
// are skipped. It is not safe for concurrent use.
type Serial struct {
	path    string
	f       *os.File
	partial []byte // the start of a line not yet ended

	first, last Tick
	count       int
	backwards   error // the first tick whose counter did not increase
	msgs        []Message
}

// NewSerial reads the log at path, which need not exist yet.
func NewSerial(path string) *Serial {
	return &Serial{path: path}
}

// Path is the log's file.
func (s *Serial) Path() string { return s.path }

// Poll reads the lines added to the log since the last Poll.
func (s *Serial) Poll() error {
	if s.f == nil {
		f, err := os.Open(s.path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // QEMU has not created it yet
		}
		if err != nil {
			return err
		}
		s.f = f
	}
	data, err := io.ReadAll(s.f)
	if err != nil {
		return err
	}
	now := time.Now()
	data = append(s.partial, data...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		s.line(strings.TrimRight(string(data[:i]), "\r"), now)
		data = data[i+1:]
	}
	s.partial = append([]byte(nil), data...)
	return nil
}

// Close closes the log file.
func (s *Serial) Close() error {
	if s.f == nil {
		return nil
	}
	return s.f.Close()
}

// line takes in one line of the log; the kernel's lines, and tick lines
// that its output cut into, are skipped.
func (s *Serial) line(l string, now time.Time) {
	switch {
	case strings.HasPrefix(l, "haven-tick"):
		if t, ok := parseTick(l); ok {
			t.Seen = now
			s.tick(t)
		}
	case strings.HasPrefix(l, "haven-"):
		s.msgs = append(s.msgs, Message{Text: l, AfterTick: s.last.N, Seen: now})
	}
}

func (s *Serial) tick(t Tick) {
	if s.count == 0 {
		s.first = t
	} else if t.N <= s.last.N && s.backwards == nil {
		s.backwards = fmt.Errorf("tick %d after tick %d: the guest restarted?", t.N, s.last.N)
	}
	s.last = t
	s.count++
}

// parseTick parses a whole tick line.
func parseTick(l string) (Tick, bool) {
	f := strings.Fields(l)
	if len(f) != 3 || f[0] != "haven-tick" {
		return Tick{}, false
	}
	n, err1 := strconv.ParseUint(f[1], 10, 64)
	d, err2 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return Tick{}, false
	}
	return Tick{N: n, DirtiedMiB: d}, true
}

// Ticks is how many ticks were read.
func (s *Serial) Ticks() int { return s.count }

// First is the first tick read; N is 0 if there was none.
func (s *Serial) First() Tick { return s.first }

// Last is the last tick read; N is 0 if there was none.
func (s *Serial) Last() Tick { return s.last }

// Increasing is nil if every tick's counter was greater than the one
// before, which a reboot of the guest would break.
func (s *Serial) Increasing() error { return s.backwards }

// Messages are the messages read that start with prefix, oldest first.
func (s *Serial) Messages(prefix string) []Message {
	var out []Message
	for _, m := range s.msgs {
		if strings.HasPrefix(m.Text, prefix) {
			out = append(out, m)
		}
	}
	return out
}

// LastMessage is the newest message that starts with prefix.
func (s *Serial) LastMessage(prefix string) (Message, bool) {
	for i := len(s.msgs) - 1; i >= 0; i-- {
		if strings.HasPrefix(s.msgs[i].Text, prefix) {
			return s.msgs[i], true
		}
	}
	return Message{}, false
}

// SerialPoll is how often Wait reads the log: the guest ticks every 100
// ms by default, and reading a file is cheap but not free.
const SerialPoll = 20 * time.Millisecond

// Wait polls the log until cond holds and fails t if it does not within
// timeout; what names the condition in the failure. cond runs on t's
// goroutine, so it may call t.Fatal itself (on QEMU's exit, say).
func (s *Serial) Wait(t testing.TB, timeout time.Duration, what string, cond func(*Serial) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if err := s.Poll(); err != nil {
			t.Fatalf("read serial log: %v", err)
		}
		if cond(s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last tick %d (of %d read), %d messages, log %s",
				timeout, what, s.last.N, s.count, len(s.msgs), s.path)
		}
		time.Sleep(SerialPoll)
	}
}
