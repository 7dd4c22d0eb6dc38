package driver

import "testing"

func TestStrings(t *testing.T) {
	if got := (VMID{Group: "web", Resource: "vm"}).String(); got != "web/vm" {
		t.Errorf("VMID.String: %q", got)
	}
	for s, want := range map[State]string{
		StateUnknown: "unknown(0)", StateRunning: "running", StateFrozen: "frozen",
		StateStopped: "stopped", StateCrashed: "crashed", StatePaused: "paused",
		StateIncoming: "incoming", State(9): "unknown(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String: %q, want %q", int(s), got, want)
		}
	}
}
