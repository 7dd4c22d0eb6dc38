package driver_test

import (
	"os"
	"os/exec"
	"reflect"
	"slices"
	"testing"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/qemu"
	"github.com/haven-ha/haven/driver/sim"
)

// optional pairs every Capabilities flag with the interface it reports.
var optional = []struct {
	flag        string
	reported    func(driver.Capabilities) bool
	implemented func(driver.Hypervisor) bool
}{
	{"FaultInjection", func(c driver.Capabilities) bool { return c.FaultInjection },
		func(h driver.Hypervisor) bool { _, ok := h.(driver.FaultInjector); return ok }},
	{"DirtyRateEstimation", func(c driver.Capabilities) bool { return c.DirtyRateEstimation },
		func(h driver.Hypervisor) bool { _, ok := h.(driver.DirtyRateEstimator); return ok }},
	{"LiveMigration", func(c driver.Capabilities) bool { return c.LiveMigration },
		func(h driver.Hypervisor) bool { _, ok := h.(driver.LiveMigrator); return ok }},
	{"QuickMigration", func(c driver.Capabilities) bool { return c.QuickMigration },
		func(h driver.Hypervisor) bool { _, ok := h.(driver.QuickMigrator); return ok }},
	{"HotPlugDisks", func(c driver.Capabilities) bool { return c.HotPlugDisks },
		func(h driver.Hypervisor) bool { _, ok := h.(driver.DiskHotPlugger); return ok }},
}

// qualifiers are the flags that say how a driver does what another flag
// reports, and have no interface of their own: each needs its base flag.
var qualifiers = []struct {
	flag     string
	reported func(driver.Capabilities) bool
	base     string
	needs    func(driver.Capabilities) bool
}{
	{"Postcopy", func(c driver.Capabilities) bool { return c.Postcopy },
		"LiveMigration", func(c driver.Capabilities) bool { return c.LiveMigration }},
}

// mismatches lists the flags h reports without implementing their
// interface, or implements without reporting, and the qualifiers it
// reports without their base flag.
func mismatches(h driver.Hypervisor) []string {
	var out []string
	caps := h.Capabilities()
	for _, o := range optional {
		if o.reported(caps) != o.implemented(h) {
			out = append(out, o.flag)
		}
	}
	for _, q := range qualifiers {
		if q.reported(caps) && !q.needs(caps) {
			out = append(out, q.flag)
		}
	}
	return out
}

// Callers type-assert an optional interface only after its flag says so,
// so a flag without the methods fails there, and methods without the flag
// are never used. Every driver joins the list below.
func TestCapabilitiesMatchInterfaces(t *testing.T) {
	drivers := map[string]driver.Hypervisor{
		"sim": sim.New(sim.Config{Node: "n1", SharedDir: t.TempDir()}),
	}
	// The QEMU driver only asks QEMU for its machine types when it
	// opens; it starts no supervisor until a VM starts.
	if _, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		run, err := os.MkdirTemp("", "hq") // short, for unix socket paths
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(run) })
		d, err := qemu.New(t.Context(), qemu.Config{Node: "n1", SharedDir: t.TempDir(), RunDir: run, Supervisor: []string{"unused"}})
		if err != nil {
			t.Fatal(err)
		}
		drivers["qemu"] = d
	} else if os.Getenv("CI") != "" {
		t.Fatalf("CI must install QEMU: %v", err)
	}
	for name, h := range drivers {
		if m := mismatches(h); len(m) > 0 {
			t.Errorf("%s: Capabilities disagree with the interfaces it implements: %v", name, m)
		}
		h.Close()
	}
}

// The check catches a lie either way: a flag reported without the
// interface, and an interface hidden behind a wrapper whose Capabilities
// still claims it.
func TestCapabilitiesCheckCatchesLies(t *testing.T) {
	d := sim.New(sim.Config{Node: "n1", SharedDir: t.TempDir()})
	defer d.Close()
	for _, tc := range []struct {
		name string
		h    driver.Hypervisor
		want []string
	}{
		{"claims hot-plug", overclaims{hides{d}}, []string{"HotPlugDisks"}},
		{"hides its optional methods", hides{d}, []string{"FaultInjection", "DirtyRateEstimation", "LiveMigration", "QuickMigration", "HotPlugDisks"}},
		{"drops hot-plug", drops{d}, []string{"HotPlugDisks"}},
		{"claims post-copy without live moves", postcopyAlone{hides{d}}, []string{"Postcopy"}},
	} {
		if got := mismatches(tc.h); !slices.Equal(got, tc.want) {
			t.Errorf("%s: mismatches %v, want %v", tc.name, got, tc.want)
		}
	}
}

// overclaims reports hot-plug, and nothing else, over a driver that
// hides every optional interface.
type overclaims struct{ hides }

func (overclaims) Capabilities() driver.Capabilities {
	return driver.Capabilities{HotPlugDisks: true}
}

// postcopyAlone reports post-copy and no live migration.
type postcopyAlone struct{ hides }

func (postcopyAlone) Capabilities() driver.Capabilities {
	return driver.Capabilities{Postcopy: true}
}

// drops has every method of the sim but reports no hot-plug.
type drops struct{ *sim.Driver }

func (d drops) Capabilities() driver.Capabilities {
	c := d.Driver.Capabilities()
	c.HotPlugDisks = false
	return c
}

type hides struct{ driver.Hypervisor }

// A flag added to Capabilities without a row in optional or qualifiers
// would go unchecked.
func TestEveryCapabilityChecked(t *testing.T) {
	var flags, rows []string
	for f := range reflect.TypeFor[driver.Capabilities]().Fields() {
		flags = append(flags, f.Name)
	}
	for _, o := range optional {
		rows = append(rows, o.flag)
	}
	for _, q := range qualifiers {
		rows = append(rows, q.flag)
	}
	slices.Sort(flags)
	slices.Sort(rows)
	if !slices.Equal(flags, rows) {
		t.Errorf("Capabilities fields %v, checked flags %v", flags, rows)
	}
}
