//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// reapLeftovers removes the namespaces (and any root-namespace links) of labs
// whose owning process no longer exists, and their delay programs: a test
// binary killed by its timeout, or a haven dev killed by SIGKILL, never
// cleans up.
func reapLeftovers(tl tools) error {
	// Names are listed before owner records are read: a lab writes its
	// record before creating anything and removes it after deleting
	// everything, so a name seen here whose record is missing below belongs
	// to no live lab. (Reading records first would race with a lab being
	// created between the two steps.)
	nss, err := labNamespaces()
	if err != nil {
		return err
	}
	links, err := labRootLinks(tl)
	if err != nil {
		return err
	}
	alive := map[string]bool{}
	owned := func(name string) bool {
		p := name[:len(GlobalPrefix)+5]
		a, ok := alive[p]
		if !ok {
			a = ownerAlive(p)
			alive[p] = a
		}
		return a
	}
	var errs []error
	// A leftover delay program runs in the root namespace, where killing
	// the processes inside the namespaces misses it, and its socket would
	// keep the router namespace alive after its name is gone.
	for _, pid := range labDelayers(owned) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	var dead []string
	for _, ns := range nss {
		if !owned(ns) {
			dead = append(dead, ns)
		}
	}
	if err := removeNamespaces(tl, dead); err != nil {
		errs = append(errs, err)
	}
	for _, link := range links {
		if !owned(link) {
			_, err := run(nil, tl.ip, "link", "del", link)
			// Deleting one end of a veth deletes its peer too, which may
			// be later in the list: only a link still there is an error.
			if _, serr := os.Stat("/sys/class/net/" + link); err != nil && serr == nil {
				errs = append(errs, err)
			}
		}
	}

	// Records of dead owners go once nothing of theirs is left.
	left, err := labNamespaces()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	remaining := map[string]bool{}
	for _, ns := range left {
		remaining[ns[:len(GlobalPrefix)+5]] = true
	}
	records, err := os.ReadDir(ownerDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return errors.Join(append(errs, err)...)
	}
	for _, r := range records {
		name := r.Name()
		switch {
		case strings.HasPrefix(name, ".tmp-"):
			// .tmp-PID-PREFIX, left if claimPrefix died between write
			// and link.
			pid, _, _ := strings.Cut(strings.TrimPrefix(name, ".tmp-"), "-")
			if n, err := strconv.Atoi(pid); err == nil && !pidExists(n) {
				os.Remove(ownerDir + "/" + name)
			}
		case prefixRE.MatchString(name+"-") && len(name) == len(GlobalPrefix)+5:
			if !remaining[name] && !ownerAlive(name) {
				os.Remove(ownerDir + "/" + name)
			}
		}
	}
	return errors.Join(errs...)
}

// labNamespaces lists named namespaces that some lab created.
func labNamespaces() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var nss []string
	for _, e := range entries {
		if prefixRE.MatchString(e.Name()) {
			nss = append(nss, e.Name())
		}
	}
	return nss, nil
}

// labRootLinks lists links in the root namespace named like lab links. The
// lab never creates links there, but a lab of an older or broken version
// might have, and the brief is that nothing of a crashed run survives.
func labRootLinks(tl tools) ([]string, error) {
	out, err := run(nil, tl.ip, "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []string
	for line := range strings.Lines(out) {
		// "7: name@peer: <FLAGS> ..."
		f := strings.SplitN(line, ": ", 3)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(f[1], "@")
		if prefixRE.MatchString(name) {
			links = append(links, name)
		}
	}
	return links, nil
}

// ownerAlive reports whether the process recorded as owner of prefix still
// runs. The record holds the pid and its start time, so a reused pid does
// not keep a dead lab's leftovers alive.
func ownerAlive(prefix string) bool {
	b, err := os.ReadFile(ownerDir + "/" + prefix)
	if err != nil {
		return false
	}
	var pid int
	var start uint64
	if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
		return false
	}
	got, err := StartTime(pid)
	return err == nil && got == start
}

func pidExists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// StartTime is the process's start time in clock ticks since boot (field 22
// of /proc/PID/stat): with the pid, it names one process even after the pid
// is reused.
func StartTime(pid int) (uint64, error) {
	f, err := statFields(pid, 22)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[22], 10, 64)
}

// statFields reads /proc/PID/stat into fields numbered as proc(5) numbers
// them (f[1] is the pid, f[3] the state), at least upTo of them.
func statFields(pid, upTo int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may contain spaces and parentheses: the
	// fields that follow start after its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := append([]string{"", "", ""}, strings.Fields(string(b[i+1:]))...)
	if len(f) <= upTo {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return f, nil
}

// removeNamespaces kills every process inside the named namespaces, then
// deletes them. A process left inside would keep the namespace, its links
// and their addresses alive after `ip netns del` has removed the name.
func removeNamespaces(tl tools, nss []string) error {
	type key struct{ dev, ino uint64 }
	targets := map[key]bool{}
	var existing []string
	for _, ns := range nss {
		var st syscall.Stat_t
		if err := syscall.Stat(netnsDir+"/"+ns, &st); err != nil {
			continue // already gone
		}
		targets[key{st.Dev, st.Ino}] = true
		existing = append(existing, ns)
	}
	if len(existing) == 0 {
		return nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+p.Name()+"/ns/net", &st) != nil {
			continue // exited meanwhile, or a kernel thread without one
		}
		if targets[key{st.Dev, st.Ino}] {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	var batch strings.Builder
	for _, ns := range existing {
		fmt.Fprintf(&batch, "netns del %s\n", ns)
	}
	// -force goes on after a failed line, so one bad namespace doesn't
	// keep the others.
	if _, err = run([]byte(batch.String()), tl.ip, "-force", "-batch", "-"); err != nil {
		// Another test binary's reaper may have deleted some of them
		// meanwhile: only a namespace still there is a failure.
		for _, ns := range existing {
			if _, serr := os.Stat(netnsDir + "/" + ns); serr == nil {
				return err
			}
		}
	}
	return nil
}

// labDelayers lists the delay programs whose --netns names a namespace of a
// lab that owned reports dead.
func labDelayers(owned func(name string) bool) []int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue // exited meanwhile
		}
		if ns, ok := delayerNetns(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")); ok && !owned(ns) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// delayerNetns reports the lab namespace a delay program's command line
// binds in. A delay program is named havenwan, or takes lab-wan as its
// first argument (haven lab-wan; a test binary standing in for it).
func delayerNetns(argv []string) (string, bool) {
	if len(argv) == 0 || filepath.Base(argv[0]) != "havenwan" && (len(argv) < 2 || argv[1] != "lab-wan") {
		return "", false
	}
	for i, a := range argv[1:] {
		var ns string
		switch {
		case a == "--netns" || a == "-netns":
			if i+2 < len(argv) {
				ns = argv[i+2]
			}
		case strings.HasPrefix(a, "--netns="), strings.HasPrefix(a, "-netns="):
			_, ns, _ = strings.Cut(a, "=")
		default:
			continue
		}
		return ns, prefixRE.MatchString(ns)
	}
	return "", false
}
