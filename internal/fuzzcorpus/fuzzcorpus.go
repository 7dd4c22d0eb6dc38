// Package fuzzcorpus keeps a fuzz target's seeds as files in the
// package's testdata/fuzz/<target>, the corpus `go test` runs as unit
// cases and `go test -fuzz` starts from, so the corpus is committed with
// the code and reviewed like it. Check fails a test whose seeds are not
// all there; `go test -run TestFuzzCorpus -update-corpus` writes them.
package fuzzcorpus

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update-corpus", false, "write the fuzz targets' seeds to testdata/fuzz")

// File is one corpus entry of a target taking a single []byte, in the
// format of Go's fuzzing engine.
func File(v []byte) []byte { return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", v) }

// Check compares testdata/fuzz/target with seeds: every seed must be
// there, under seed-<hash of its value>; with -update-corpus it writes
// those that are not. Entries the fuzzer found are left alone.
func Check(t *testing.T, target string, seeds [][]byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	var missing int
	for _, s := range seeds {
		h := sha256.Sum256(s)
		path := filepath.Join(dir, fmt.Sprintf("seed-%x", h[:8]))
		if _, err := os.Stat(path); err == nil {
			continue
		}
		if !*update {
			missing++
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, File(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if missing > 0 {
		t.Errorf("%s: %d of %d seeds are not in %s: run go test -run TestFuzzCorpus -update-corpus and commit them", target, missing, len(seeds), dir)
	}
}
