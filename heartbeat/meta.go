package heartbeat

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/memberlist"
)

// Meta is what every node advertises to the others. It travels in
// memberlist's node metadata, which is capped at 512 bytes (MetaMaxSize), so
// it is JSON with one-letter keys: still readable in a packet capture and
// still extensible (unknown keys are ignored by older agents), with room to
// spare for the worst realistic values (see TestMetaWorstCaseFits).
type Meta struct {
	Site    string `json:"s,omitempty"`
	Witness bool   `json:"w,omitempty"`
	// NoVote: the node's weight is 0, it never votes in Raft.
	NoVote   bool   `json:"nv,omitempty"`
	RaftAddr string `json:"r,omitempty"` // host:port
	GRPCAddr string `json:"g,omitempty"` // host:port
	LANAddr  string `json:"l,omitempty"` // host:port of the LAN gossip pool, filled in by this package
	Version  string `json:"v,omitempty"`
	Expect   int    `json:"e,omitempty"` // the node's -bootstrap-expect value
	// RaftState: the node holds Raft state, so it belongs to a cluster.
	// A fresh node that would bootstrap reads it here for the nodes started
	// without expect instead of asking each of them.
	RaftState   bool  `json:"rs,omitempty"`
	CPUMillis   int64 `json:"c,omitempty"`
	MemoryBytes int64 `json:"m,omitempty"`
	// Labels are the node's placement labels in their canonical form,
	// sorted "k=v" pairs joined by commas: a string keeps Meta comparable.
	Labels string `json:"b,omitempty"`
	// Live and Quick: the node's driver can live-migrate, and save and
	// restore, a running VM.
	Live  bool `json:"lm,omitempty"`
	Quick bool `json:"qm,omitempty"`
	// HotPlug: the node's driver can add disks to a running VM and take
	// them away.
	HotPlug bool `json:"hp,omitempty"`
	// Postcopy: the node's driver can end a live move in post-copy.
	Postcopy bool `json:"pc,omitempty"`
}

// wireMeta adds what only this package needs to the advertised Meta.
type wireMeta struct {
	Meta
	// Leaving is set just before a graceful leave. memberlist v0.6.0 does
	// not tell an EventDelegate whether a node left or died (Node.State is
	// never set; see isLeft), so the node says so itself, first.
	Leaving bool `json:"x,omitempty"`
}

func encodeMeta(m Meta, leaving bool) ([]byte, error) {
	b, err := json.Marshal(wireMeta{Meta: m, Leaving: leaving})
	if err != nil {
		return nil, fmt.Errorf("heartbeat: encode meta: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		// memberlist panics on oversize metadata; refuse it here instead.
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMetaTooLarge, len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (Meta, bool, error) {
	var w wireMeta
	if len(b) == 0 {
		return w.Meta, false, nil
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return Meta{}, false, fmt.Errorf("heartbeat: decode meta: %w", err)
	}
	return w.Meta, w.Leaving, nil
}

// FormatLabels encodes node labels for Meta.Labels: sorted "k=v" pairs
// joined by commas (the agent's configuration bounds them well inside the
// 512 bytes of gossip metadata).
func FormatLabels(labels map[string]string) string {
	pairs := make([]string, 0, len(labels))
	for k, v := range labels {
		pairs = append(pairs, k+"="+v)
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}

// ParseLabels reads what FormatLabels wrote; nil for none.
func ParseLabels(s string) map[string]string {
	if s == "" {
		return nil
	}
	out := map[string]string{}
	for _, p := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(p, "="); ok {
			out[k] = v
		}
	}
	return out
}
