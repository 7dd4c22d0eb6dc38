package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestWriterInfersMemberlistLevels(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, slog.LevelInfo)
	std := Hclog(l).Named("gossip").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	std.Printf("[DEBUG] memberlist: stream connection from=1.2.3.4")
	std.Printf("[WARN] memberlist: refuting a suspect message")
	std.Printf("[ERR] memberlist: failed to send")
	out := buf.String()
	if strings.Contains(out, "stream connection") {
		t.Errorf("a debug line passed an info logger:\n%s", out)
	}
	for _, want := range []string{`level=WARN msg="memberlist: refuting a suspect message" sub=gossip`, `level=ERROR msg="memberlist: failed to send"`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

func TestHclogBridgeLevelsAndNames(t *testing.T) {
	var buf bytes.Buffer
	lv := new(slog.LevelVar)
	lv.Set(LevelTrace)
	h := Hclog(New(&buf, lv)).Named("raft").Named("net")
	h.Trace("heartbeat", "peer", "n2")
	h.With("term", 3).Error("election lost")
	h.Info("initial configuration", "servers", hclog.Fmt("%+v", []string{"n1", "n2"}))
	out := buf.String()
	for _, want := range []string{`level=TRACE msg=heartbeat sub=raft.net peer=n2`, `level=ERROR msg="election lost"`, `term=3`, `servers="[n1 n2]"`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if h.Name() != "raft.net" || !h.IsTrace() {
		t.Errorf("name %q, trace %v", h.Name(), h.IsTrace())
	}
	lv.Set(slog.LevelWarn)
	if h.IsInfo() || h.GetLevel() != hclog.Warn {
		t.Errorf("level not followed: info %v, level %v", h.IsInfo(), h.GetLevel())
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"trace": LevelTrace, "debug": slog.LevelDebug, "INFO": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("loud accepted")
	}
}
