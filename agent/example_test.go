package agent

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfig: examples/agent.yaml loads, and is refused only for its
// TLS files, which are not on this machine.
func TestExampleConfig(t *testing.T) {
	c := Default()
	if err := c.LoadFile(filepath.Join("..", "examples", "agent.yaml")); err != nil {
		t.Fatal(err)
	}
	if c.TLS.Plaintext || c.TLS.CAFile == "" {
		t.Fatalf("the example runs without TLS: %+v", c.TLS)
	}
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "tls.ca_file: stat /etc/haven/tls/ca.pem") {
		t.Fatalf("Validate() = %v, want the missing CA file named", err)
	}
}
