package layering

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const mod = "github.com/haven-ha/haven/"

// pkg is one package of the module as its non-test files declare it.
type pkg struct {
	path    string // import path
	imports map[string]bool
	files   []*ast.File
	fset    *token.FileSet
}

// load parses every non-test Go file of the module, by package.
func load(t *testing.T) map[string]*pkg {
	t.Helper()
	root := filepath.Join("..", "..")
	pkgs := map[string]*pkg{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n == "testdata" || strings.HasPrefix(n, ".") && path != root {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		ip := mod + filepath.ToSlash(rel)
		p := pkgs[ip]
		if p == nil {
			p = &pkg{path: ip, imports: map[string]bool{}, fset: fset}
			pkgs[ip] = p
		}
		p.files = append(p.files, f)
		for _, im := range f.Imports {
			s, _ := strconv.Unquote(im.Path.Value)
			p.imports[s] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("found %d packages: not the module root?", len(pkgs))
	}
	return pkgs
}

func under(path, prefix string) bool {
	return path == mod+prefix || strings.HasPrefix(path, mod+prefix+"/")
}

// rule forbids the packages under from importing the packages under any
// of banned (module paths are relative; others are taken as they are).
type rule struct {
	from   string
	banned []string
	why    string
}

var rules = []rule{
	{"fsm", []string{"net", "os", "os/exec", "math/rand", "math/rand/v2", "crypto/rand", "agent", "heartbeat", "driver", "internal", "placement", "quorum"}, "the state machine is pure and deterministic"},
	{"quorum", []string{"net", "os", "os/exec", "math/rand", "math/rand/v2", "crypto/rand", "agent", "heartbeat", "driver", "internal", "fsm", "placement"}, "quorum rules are pure"},
	{"placement", []string{"net", "os", "os/exec", "math/rand", "math/rand/v2", "crypto/rand", "agent", "heartbeat", "driver", "internal", "fsm", "quorum"}, "placement is pure"},
	{"driver", []string{"agent", "fsm", "placement", "quorum", "heartbeat", "proto", "internal/rpcclient"}, "a driver knows VMs, not the cluster"},
	{"heartbeat", []string{"agent", "fsm", "placement", "driver"}, "gossip knows members only"},
	{"internal", []string{"agent", "cmd", "integration"}, "internal helpers serve every layer"},
	{"agent/consensus", []string{"agent/leader", "agent/lease", "agent/executor", "agent/events", "agent/server", "agent/services", "heartbeat", "driver"}, "consensus is Raft, nothing above it"},
	{"agent/lease", []string{"agent/leader", "agent/executor", "agent/events", "agent/server", "agent/services", "agent/consensus", "heartbeat", "driver", "google.golang.org/grpc"}, "the lease protocol is transport-free"},
	{"agent/executor", []string{"agent/leader", "agent/lease", "agent/consensus", "agent/events", "agent/server", "agent/services", "heartbeat", "driver/sim", "google.golang.org/grpc"}, "the executor knows a driver only as driver.Hypervisor"},
	{"agent/metrics", []string{"agent/leader", "agent/lease", "agent/executor", "agent/consensus", "agent/events", "agent/server", "agent/services", "fsm", "driver", "heartbeat"}, "metrics only count what others tell them"},
	{"agent/events", []string{"agent/leader", "agent/lease", "agent/executor", "agent/consensus", "agent/server", "agent/services"}, "events only observe"},
	{"agent/leader", []string{"agent/executor", "agent/events", "agent/server", "agent/services", "driver", "google.golang.org/grpc"}, "the leader decides and returns domain errors; the service layer speaks gRPC"},
	{"agent/acl", []string{"net", "os", "os/exec", "math/rand", "math/rand/v2", "crypto/rand", "google.golang.org/grpc", "agent/leader", "agent/lease", "agent/executor", "agent/consensus", "agent/events", "agent/server", "agent/services", "fsm", "driver", "heartbeat"}, "access control's rules are pure: randomness comes in as a reader"},
	{"agent/server", []string{"agent/leader", "agent/lease", "agent/executor", "agent/consensus", "agent/services", "driver", "fsm"}, "the server is transport only"},
	{"agent/services", []string{"agent/executor", "agent/server", "driver/sim"}, "services call the leader and read the state"},
}

// banned reports whether imp is one of the entries: a standard library
// package exactly (net/netip is not net), a third-party path (with a dot)
// or a path of this module (relative) with everything under it.
func banned(imp string, entries []string) bool {
	for _, b := range entries {
		switch {
		case strings.Contains(strings.SplitN(b, "/", 2)[0], "."):
			if imp == b || strings.HasPrefix(imp, b+"/") {
				return true
			}
		case stdlib[b]:
			if imp == b {
				return true
			}
		case under(imp, b):
			return true
		}
	}
	return false
}

var stdlib = map[string]bool{"net": true, "os": true, "os/exec": true, "math/rand": true, "math/rand/v2": true, "crypto/rand": true}

// importViolations lists what p imports against the rules.
func importViolations(p *pkg) []string {
	var out []string
	if p.imports[mod+"agent"] && !under(p.path, "cmd/haven") && !under(p.path, "integration") {
		out = append(out, p.path+" imports agent: only cmd/haven and the integration tests may")
	}
	for _, r := range rules {
		if !under(p.path, r.from) {
			continue
		}
		for imp := range p.imports {
			if banned(imp, r.banned) {
				out = append(out, p.path+" imports "+imp+": "+r.why)
			}
		}
	}
	return out
}

// clockCalls read the clock or wait on it.
var clockCalls = map[string]bool{"Now": true, "Since": true, "Until": true, "After": true, "AfterFunc": true, "Tick": true, "NewTicker": true, "NewTimer": true, "Sleep": true}

// impurities lists the goroutines p starts and the clock calls it makes.
func impurities(p *pkg) []string {
	var out []string
	for _, f := range p.files {
		timeName := ""
		for _, im := range f.Imports {
			if s, _ := strconv.Unquote(im.Path.Value); s == "time" {
				timeName = "time"
				if im.Name != nil {
					timeName = im.Name.Name
				}
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.GoStmt:
				out = append(out, p.fset.Position(x.Pos()).String()+": starts a goroutine")
			case *ast.SelectorExpr:
				if id, ok := x.X.(*ast.Ident); ok && timeName != "" && id.Name == timeName && clockCalls[x.Sel.Name] {
					out = append(out, p.fset.Position(x.Pos()).String()+": calls time."+x.Sel.Name+": take time as a parameter")
				}
			}
			return true
		})
	}
	return out
}

var pure = []string{"fsm", "quorum", "placement", "agent/acl"}

// TestImportBoundaries keeps the layering: nothing below agent/ imports
// the wiring package, only the main package and the integration tests
// import agent/, and each layer imports only what is below it.
func TestImportBoundaries(t *testing.T) {
	for _, p := range load(t) {
		for _, v := range importViolations(p) {
			t.Error(v)
		}
	}
}

// TestPurePackagesHaveNoClockOrGoroutine keeps fsm, quorum, placement and agent/acl
// deterministic: they take time as a parameter and start no goroutine.
func TestPurePackagesHaveNoClockOrGoroutine(t *testing.T) {
	pkgs := load(t)
	for _, name := range pure {
		p := pkgs[mod+name]
		if p == nil {
			t.Fatalf("package %s not found", name)
		}
		for _, v := range impurities(p) {
			t.Error(v)
		}
	}
}

// The checks must see a violation when there is one.
func TestLayeringCatchesViolations(t *testing.T) {
	src := "package fsm\n\nimport (\n\tclock \"time\"\n\t\"net\"\n\t\"net/netip\"\n\t\"github.com/haven-ha/haven/agent/leader\"\n)\n\n" +
		"func f() { go func() {}(); _ = clock.Since(clock.Time{}); _ = leader.MaxReserve; _ = net.IPv4len; _ = netip.Addr{} }\n"
	path := filepath.Join(t.TempDir(), "x.go")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &pkg{path: mod + "fsm", imports: map[string]bool{}, files: []*ast.File{f}, fset: fset}
	for _, im := range f.Imports {
		s, _ := strconv.Unquote(im.Path.Value)
		p.imports[s] = true
	}
	iv, im := importViolations(p), impurities(p)
	if len(iv) != 2 || len(im) != 2 {
		t.Fatalf("import violations %q (want net and agent/leader), impurities %q (want a goroutine and time.Since)", iv, im)
	}
}
