package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportBoundaries keeps the layering of DESIGN.md: nothing but the
// main package imports agent/, and the pure packages import no network,
// process, file-system or randomness packages and read no clock.
func TestImportBoundaries(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{join .Imports " "}}`, "github.com/haven-ha/haven/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/haven-ha/haven/"
	pure := map[string]bool{mod + "fsm": true, mod + "quorum": true, mod + "placement": true}
	banned := []string{"net", "net/http", "os", "os/exec", "math/rand", "math/rand/v2", "crypto/rand", mod + "agent", mod + "heartbeat"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, "|")
		for _, imp := range strings.Fields(imports) {
			if imp == mod+"agent" && pkg != mod+"cmd/haven" && !strings.HasPrefix(pkg, mod+"integration") {
				t.Errorf("%s imports agent: only cmd/haven may", pkg)
			}
			if pure[pkg] {
				for _, b := range banned {
					if imp == b {
						t.Errorf("pure package %s imports %s", pkg, imp)
					}
				}
			}
		}
	}
	root := filepath.Join("..")
	for p := range pure {
		dir := filepath.Join(root, strings.TrimPrefix(p, mod))
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), "time.Now(") {
				t.Errorf("%s reads the clock: pure packages take time as a parameter", f)
			}
		}
	}
}
