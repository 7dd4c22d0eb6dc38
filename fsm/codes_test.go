package fsm

import (
	"bytes"
	"io"
	"os"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Code was a Go iota stored as uint32 before it was a protobuf enum.
// Snapshots hold these numbers, so they may never change.
var storedCodes = []struct {
	code Code
	num  uint32
}{
	{CodeOK, 0},
	{CodeInvalidArgument, 1},
	{CodeNotFound, 2},
	{CodeAlreadyExists, 3},
	{CodeFailedPrecondition, 4},
}

func TestErrorCodeNumbersArePinned(t *testing.T) {
	for _, c := range storedCodes {
		if uint32(c.code) != c.num {
			t.Errorf("%v is %d, snapshots store it as %d", c.code, c.code, c.num)
		}
		// What the uint32 field wrote, byte for byte.
		var old []byte
		if c.num != 0 {
			old = protowire.AppendTag(old, 4, protowire.VarintType)
			old = protowire.AppendVarint(old, uint64(c.num))
		}
		got, err := proto.MarshalOptions{Deterministic: true}.Marshal(&havenv1.AppliedRequest{ErrorCode: c.code})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, old) {
			t.Errorf("%v encodes as %x, the uint32 field wrote %x", c.code, got, old)
		}
		var back havenv1.AppliedRequest
		if err := proto.Unmarshal(old, &back); err != nil || back.GetErrorCode() != c.code {
			t.Errorf("uint32 %d decodes as %v (%v), want %v", c.num, back.GetErrorCode(), err, c.code)
		}
	}
}

// TestRestoreSnapshotFromUint32Codes restores a snapshot that Persist wrote
// before the enum existed (at 2c7414b: one request applied and one refused
// with each code) and checks that a retry of each request gets the outcome
// it got then. Never regenerate the file: it is the old format.
func TestRestoreSnapshotFromUint32Codes(t *testing.T) {
	data, err := os.ReadFile("testdata/snapshot-uint32-error-codes.bin")
	if err != nil {
		t.Fatal(err)
	}
	f := New()
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		id    string
		index uint64
		code  Code
		msg   string
	}{
		{"ok", 1, CodeOK, ""},
		{"invalid", 2, CodeInvalidArgument, "group: name is empty"},
		{"notfound", 3, CodeNotFound, `group "db" not found`},
		{"exists", 4, CodeAlreadyExists, `group "web" already exists`},
		{"precondition", 5, CodeFailedPrecondition, "unknown command type <nil>"},
	} {
		a := &applier{t: t, f: f, index: f.Index()}
		r := a.apply(t0, &havenv1.Command{RequestId: tt.id})
		if !r.Duplicate || r.Index != tt.index {
			t.Errorf("%s: %+v, want a duplicate of index %d", tt.id, r, tt.index)
			continue
		}
		var code Code
		var msg string
		if r.Err != nil {
			code, msg = r.Err.Code, r.Err.Msg
		}
		if code != tt.code || msg != tt.msg {
			t.Errorf("%s: refused with %v %q, want %v %q", tt.id, code, msg, tt.code, tt.msg)
		}
	}
}
