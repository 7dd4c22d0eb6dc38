package qmp

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// schemaEntry is one entry of query-qmp-schema (SchemaInfo). Types other
// than builtins have opaque names ("407"); members carry the real names.
type schemaEntry struct {
	Name     string `json:"name"`
	MetaType string `json:"meta-type"`
	// command and event
	ArgType string `json:"arg-type"`
	RetType string `json:"ret-type"`
	// object
	Members []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	} `json:"members"`
	Variants []struct {
		Case string `json:"case"`
		Type string `json:"type"`
	} `json:"variants"`
	// enum
	Values []string `json:"values"`
	// array
	ElementType string `json:"element-type"`
	// builtin
	JSONType string `json:"json-type"`
}

type schema map[string]schemaEntry

// TestQEMUSchemaMatchesTypes checks every json tag of the package's types,
// and every command, event, capability and status name it uses, against
// the schema of the installed QEMU. A misspelt tag of a reply fails no
// call (the field reads zero), and one of an argument fails only when the
// field is set, so the tags are checked here, all of them.
func TestQEMUSchemaMatchesTypes(t *testing.T) {
	needQEMU(t)
	ctx := testContext(t)
	c := startQEMU(t, t.TempDir(), "vm").qmp

	var entries []schemaEntry
	if err := c.Execute(ctx, "query-qmp-schema", nil, &entries); err != nil {
		t.Fatal(err)
	}
	s := schema{}
	for _, e := range entries {
		s[e.Name] = e
	}

	commands := []string{
		"qmp_capabilities", "query-status", "stop", "cont", "quit", "system_powerdown",
		"getfd", "closefd", "set-action",
		"migrate-set-capabilities", "query-migrate-capabilities",
		"migrate-set-parameters", "query-migrate-parameters",
		"migrate", "migrate-incoming", "migrate_cancel", "migrate-continue",
		"migrate-start-postcopy", "query-migrate",
		"blockdev-add", "blockdev-del", "device_add", "device_del", "qom-list",
	}
	for _, name := range commands {
		if e, ok := s[name]; !ok || e.MetaType != "command" {
			t.Errorf("QEMU has no command %s", name)
		}
	}

	// Arguments and replies.
	s.check(t, "query-status", reflect.TypeFor[StatusInfo](), s.ret("query-status"))
	s.check(t, "set-action", reflect.TypeFor[Actions](), s.arg("set-action"))
	s.check(t, "migrate-set-parameters", reflect.TypeFor[MigrationParameters](), s.arg("migrate-set-parameters"))
	s.check(t, "query-migrate-parameters", reflect.TypeFor[MigrationParameters](), s.ret("query-migrate-parameters"))
	s.check(t, "query-migrate-capabilities", reflect.TypeFor[[]Capability](), s.ret("query-migrate-capabilities"))
	s.check(t, "query-migrate", reflect.TypeFor[MigrationInfo](), s.ret("query-migrate"))
	s.check(t, "qom-list", reflect.TypeFor[[]ObjectProperty](), s.ret("qom-list"))

	// Events.
	for name, data := range map[string]reflect.Type{
		EventStop:          nil,
		EventResume:        nil,
		EventShutdown:      reflect.TypeFor[ShutdownData](),
		EventDeviceDeleted: reflect.TypeFor[DeviceDeletedData](),
		EventMigration:     reflect.TypeFor[MigrationEventData](),
		EventMigrationPass: nil,
		EventWatchdog:      nil,
		EventBlockIOError:  nil,
	} {
		e, ok := s[name]
		if !ok || e.MetaType != "event" {
			t.Errorf("QEMU has no event %s", name)
			continue
		}
		if data != nil {
			s.check(t, name, data, e.ArgType)
		}
	}

	// Enumerations.
	capEnum := s.member(t, s.member(t, s.arg("migrate-set-capabilities"), "capabilities"), "capability")
	for _, v := range []string{
		CapXBZRLE, CapAutoConverge, CapEvents, CapPostcopyRAM, CapReturnPath,
		CapPauseBeforeSwitchover, CapMultifd, CapZeroCopySend,
	} {
		s.checkValue(t, "migration capability", capEnum, v)
	}
	migrationStatus := s.member(t, s.ret("query-migrate"), "status")
	for _, v := range []string{
		MigrationNone, MigrationSetup, MigrationActive, MigrationPostcopyActive,
		MigrationPreSwitchover, MigrationDevice, MigrationCompleted, MigrationFailed,
		MigrationCancelling, MigrationCancelled, MigrationPostcopyPaused,
	} {
		s.checkValue(t, "migration status", migrationStatus, v)
	}
	runState := s.member(t, s.ret("query-status"), "status")
	for _, v := range []string{
		StatusRunning, StatusPaused, StatusInMigrate, StatusPostMigrate, StatusFinishMigrate,
		StatusPrelaunch, StatusShutdown, StatusIOError, StatusWatchdog, StatusGuestPanicked,
		StatusInternalError,
	} {
		s.checkValue(t, "run state", runState, v)
	}
	s.checkValue(t, "multifd compression", s.member(t, s.arg("migrate-set-parameters"), "multifd-compression"), "zlib")
}

func (s schema) arg(command string) string { return s[command].ArgType }
func (s schema) ret(command string) string { return s[command].RetType }

// member is the type of an object's member; for an array, of its
// element's member.
func (s schema) member(t *testing.T, typ, name string) string {
	t.Helper()
	e := s[typ]
	if e.MetaType == "array" {
		e = s[e.ElementType]
	}
	for _, m := range e.Members {
		if m.Name == name {
			return m.Type
		}
	}
	t.Fatalf("schema type %s has no member %s", typ, name)
	return ""
}

func (s schema) checkValue(t *testing.T, what, enum, value string) {
	t.Helper()
	if !slices.Contains(s[enum].Values, value) {
		t.Errorf("%s %q is not one of QEMU's %v", what, value, s[enum].Values)
	}
}

// check walks a Go type and the schema type typ side by side: every
// json-tagged field must be a member (of the object or, for a union, of
// one of its variants) of a matching JSON type.
func (s schema) check(t *testing.T, path string, goType reflect.Type, typ string) {
	t.Helper()
	if goType.Kind() == reflect.Pointer {
		goType = goType.Elem()
	}
	e, ok := s[typ]
	if !ok {
		t.Errorf("%s: schema type %s missing", path, typ)
		return
	}
	if e.MetaType == "alternate" {
		return // not used by the package's types
	}
	switch goType.Kind() {
	case reflect.Struct:
		if e.MetaType != "object" {
			t.Errorf("%s: Go struct %s for a QEMU %s", path, goType, e.MetaType)
			return
		}
		members := map[string]string{}
		for _, m := range e.Members {
			members[m.Name] = m.Type
		}
		for _, v := range e.Variants {
			for _, m := range s[v.Type].Members {
				members[m.Name] = m.Type
			}
		}
		for f := range goType.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				t.Errorf("%s.%s: no json tag", path, f.Name)
				continue
			}
			mt, ok := members[name]
			if !ok {
				t.Errorf("%s: QEMU has no member %q (field %s.%s)", path, name, goType.Name(), f.Name)
				continue
			}
			s.check(t, path+"."+name, f.Type, mt)
		}
	case reflect.Slice:
		if e.MetaType != "array" {
			t.Errorf("%s: Go slice for a QEMU %s", path, e.MetaType)
			return
		}
		s.check(t, path+"[]", goType.Elem(), e.ElementType)
	default:
		want := map[reflect.Kind]string{
			reflect.String: "string", reflect.Int64: "int",
			reflect.Float64: "number", reflect.Bool: "boolean",
		}[goType.Kind()]
		got := e.JSONType
		if e.MetaType == "enum" {
			got = "string"
		}
		if want == "" || got != want {
			t.Errorf("%s: Go %s for QEMU's %s", path, goType, describe(e))
		}
	}
}

func describe(e schemaEntry) string {
	if e.MetaType == "builtin" {
		return e.JSONType
	}
	return fmt.Sprintf("%s %s", e.MetaType, e.Name)
}
