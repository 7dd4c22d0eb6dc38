package server

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"
)

// AuditEntry is one audited call: who (the token's name), what (the
// method and the names in its request), and how it ended.
type AuditEntry struct {
	Time     time.Time `json:"time"`
	Method   string    `json:"method"`
	Token    string    `json:"token,omitempty"`
	Accessor string    `json:"accessor,omitempty"`
	Peer     string    `json:"peer"`
	// Node: a node called without a token (an agent draining itself).
	Node bool `json:"node,omitempty"`
	// Subject is what the request names: group, node, target, ...
	Subject map[string]string `json:"subject,omitempty"`
	// Code is the gRPC status code the call ended with (OK, or why not).
	Code  string `json:"code"`
	Error string `json:"error,omitempty"`
	// ForwardedBy names the agent that forwarded the call here: the
	// call is then recorded on both.
	ForwardedBy string `json:"forwarded_by,omitempty"`
}

// Audit writes the audit log: every entry to the logger named "audit",
// and as a JSON line to a file when one is set.
type Audit struct {
	log  *slog.Logger
	mu   sync.Mutex
	file *os.File
}

// NewAudit returns an audit log on log, appending to path unless it is
// empty. The file is opened once and kept open; it is only appended to.
func NewAudit(log *slog.Logger, path string) (*Audit, error) {
	a := &Audit{log: log}
	if path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("acl.audit_file: %w", err)
		}
		a.file = f
	}
	return a, nil
}

// Record writes e.
func (a *Audit) Record(e AuditEntry) {
	attrs := []any{"method", e.Method, "token", e.Token, "accessor", e.Accessor, "peer", e.Peer, "code", e.Code}
	for _, k := range slices.Sorted(maps.Keys(e.Subject)) {
		attrs = append(attrs, k, e.Subject[k])
	}
	if e.Error != "" {
		attrs = append(attrs, "error", e.Error)
	}
	if e.Node {
		attrs = append(attrs, "node", true)
	}
	if e.ForwardedBy != "" {
		attrs = append(attrs, "forwarded_by", e.ForwardedBy)
	}
	a.log.Info("call", attrs...)
	if a.file == nil {
		return
	}
	line, err := json.Marshal(e)
	if err != nil {
		a.log.Error("audit entry not written", "error", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.file.Write(append(line, '\n')); err != nil {
		a.log.Error("audit file write failed", "error", err)
	}
}

// Close closes the file.
func (a *Audit) Close() error {
	if a == nil || a.file == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.file.Close()
}
