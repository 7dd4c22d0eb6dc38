package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// vmOptions are the convenience flags of `haven group create` that build
// the standard VM group when no spec file is given.
type vmOptions struct {
	vcpus        int32
	memoryBytes  int64
	diskBytes    int64 // 0: no disk
	priority     havenv1.Priority
	preferred    []string
	possible     []string
	antiAffinity []*havenv1.AntiAffinity
	site         string
	labels       map[string]string
	// boot is a direct kernel boot and machine type, for the qemu driver.
	kernel, initrd, cmdline, machine string
}

func defaultVMOptions() vmOptions {
	return vmOptions{
		vcpus:       1,
		memoryBytes: 512 << 20,
		diskBytes:   1 << 30,
		priority:    havenv1.Priority_PRIORITY_MEDIUM,
	}
}

// standardGroupSpec is the group most VMs need: a definition (config), one
// disk image on shared storage, and the VM itself, which starts only once
// both are online. Placement demand (cpu_millis, memory_bytes) is left at
// zero so the leader derives it from the VM resource: one source of truth.
func standardGroupSpec(name string, o vmOptions) *havenv1.GroupSpec {
	res := []*havenv1.Resource{{
		Name:   "config",
		Kind:   havenv1.ResourceKind_RESOURCE_KIND_CONFIG,
		Config: &havenv1.ConfigSpec{},
	}}
	vmDeps := []string{"config"}
	if o.diskBytes > 0 {
		res = append(res, &havenv1.Resource{
			Name: "disk0",
			Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK,
			Disk: &havenv1.DiskSpec{Path: name + "/disk0.img", SizeBytes: o.diskBytes},
		})
		vmDeps = append(vmDeps, "disk0")
	}
	res = append(res, &havenv1.Resource{
		Name:      "vm",
		Kind:      havenv1.ResourceKind_RESOURCE_KIND_VM,
		DependsOn: vmDeps,
		Vm: &havenv1.VmSpec{Vcpus: o.vcpus, MemoryBytes: o.memoryBytes,
			Kernel: o.kernel, Initrd: o.initrd, Cmdline: o.cmdline, Machine: o.machine},
	})
	return &havenv1.GroupSpec{
		Name:            name,
		Resources:       res,
		Priority:        o.priority,
		PreferredOwners: o.preferred,
		PossibleOwners:  o.possible,
		AntiAffinity:    o.antiAffinity,
		PreferredSite:   o.site,
		Labels:          o.labels,
	}
}

// parseAntiAffinity reads repeated CLASS[:hard][:sites] flags: a class
// name, then modifiers in any order. "soft" may be written for clarity; it
// is the default. A class given twice is a mistake, not an override.
func parseAntiAffinity(flags []string) ([]*havenv1.AntiAffinity, error) {
	var out []*havenv1.AntiAffinity
	seen := map[string]bool{}
	for _, f := range flags {
		parts := strings.Split(f, ":")
		aa := &havenv1.AntiAffinity{Class: strings.TrimSpace(parts[0])}
		if aa.Class == "" {
			return nil, fmt.Errorf("%q: the class name comes first: CLASS[:hard][:sites]", f)
		}
		soft := false
		for _, m := range parts[1:] {
			switch strings.ToLower(strings.TrimSpace(m)) {
			case "hard":
				aa.Hard = true
			case "soft":
				soft = true
			case "sites", "across-sites":
				aa.AcrossSites = true
			default:
				return nil, fmt.Errorf("%q: unknown modifier %q (hard, soft or sites)", f, m)
			}
		}
		if soft && aa.Hard {
			return nil, fmt.Errorf("%q: hard and soft at once", f)
		}
		if seen[aa.Class] {
			return nil, fmt.Errorf("%q: class %q given twice", f, aa.Class)
		}
		seen[aa.Class] = true
		out = append(out, aa)
	}
	return out, nil
}

// antiAffinityWord shows a class as the flag that sets it.
func antiAffinityWord(aa *havenv1.AntiAffinity) string {
	s := aa.GetClass()
	if aa.GetHard() {
		s += ":hard"
	}
	if aa.GetAcrossSites() {
		s += ":sites"
	}
	return s
}

// parsePriority accepts the short names an operator types; the enum names
// are accepted too so a value copied from JSON output works.
func parsePriority(s string) (havenv1.Priority, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "high", "priority_high":
		return havenv1.Priority_PRIORITY_HIGH, nil
	case "medium", "priority_medium":
		return havenv1.Priority_PRIORITY_MEDIUM, nil
	case "low", "priority_low":
		return havenv1.Priority_PRIORITY_LOW, nil
	case "no-auto-start", "no_auto_start", "priority_no_auto_start":
		return havenv1.Priority_PRIORITY_NO_AUTO_START, nil
	}
	return 0, fmt.Errorf("priority %q: must be high, medium, low or no-auto-start", s)
}

// parseLabels turns repeated k=v flags into a map. A repeated key is an
// error rather than last-wins: two values for one key is a typo, not intent.
func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: must be key=value", kv)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("label %q: key %q given twice", kv, k)
		}
		m[k] = v
	}
	return m, nil
}

// parseSpecFile reads a GroupSpec written as JSON or YAML with the API's
// protojson field names (camelCase or the .proto snake_case, enums by name).
// Unknown fields are errors: a misspelt "vcpu" must not silently give the
// VM the default.
func parseSpecFile(name string, data []byte) (*havenv1.GroupSpec, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%s: empty spec", name)
	}
	spec := &havenv1.GroupSpec{}
	if trimmed[0] == '{' {
		if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(trimmed, spec); err != nil {
			return nil, fmt.Errorf("%s: %s", name, cleanProtoError(err, true))
		}
		return spec, nil
	}
	js, err := yamlSpecToJSON(data, spec.ProtoReflect().Descriptor())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, spec); err != nil {
		// Positions would point into the JSON made from the YAML, which
		// the operator never saw: drop them, the message names the field.
		return nil, fmt.Errorf("%s: %s", name, cleanProtoError(err, false))
	}
	return spec, nil
}

// yamlSpecToJSON converts one YAML document to JSON after checking every
// key against the message descriptor, so that an unknown field is reported
// with its YAML line and path.
func yamlSpecToJSON(data []byte, md protoreflect.MessageDescriptor) ([]byte, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document; a spec file holds one group")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: a group spec must be a mapping (name: ..., resources: ...)", root.Line)
	}
	if err := checkYAMLFields(root, md, ""); err != nil {
		return nil, err
	}
	var v any
	if err := root.Decode(&v); err != nil {
		return nil, err
	}
	v, err := jsonable(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// checkYAMLFields walks a YAML mapping alongside the message it is meant to
// be. It checks names only; types and enum values are protojson's job.
func checkYAMLFields(n *yaml.Node, md protoreflect.MessageDescriptor, path string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	// Well-known types (Duration, Timestamp, ...) have their own JSON
	// forms, scalars rather than mappings.
	if n.Kind != yaml.MappingNode || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return nil
	}
	fields := md.Fields()
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Tag == "!!merge" {
			if err := checkMerge(v, md, path); err != nil {
				return err
			}
			continue
		}
		fd := fields.ByJSONName(k.Value)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			where := path
			if where == "" {
				where = "the group spec"
			}
			return fmt.Errorf("line %d: unknown field %q in %s (%s)", k.Line, k.Value, where, md.FullName())
		}
		p := k.Value
		if path != "" {
			p = path + "." + k.Value
		}
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil || v.Kind != yaml.MappingNode {
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				if err := checkYAMLFields(v.Content[j+1], fd.MapValue().Message(), p+"["+strconv.Quote(v.Content[j].Value)+"]"); err != nil {
					return err
				}
			}
		case fd.Message() == nil:
		case fd.IsList():
			if v.Kind != yaml.SequenceNode {
				continue
			}
			for j, item := range v.Content {
				if err := checkYAMLFields(item, fd.Message(), fmt.Sprintf("%s[%d]", p, j)); err != nil {
					return err
				}
			}
		default:
			if err := checkYAMLFields(v, fd.Message(), p); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkMerge checks the mapping (or list of mappings) a YAML "<<" key merges in.
func checkMerge(v *yaml.Node, md protoreflect.MessageDescriptor, path string) error {
	if v.Kind == yaml.AliasNode {
		v = v.Alias
	}
	if v.Kind == yaml.SequenceNode {
		for _, item := range v.Content {
			if err := checkYAMLFields(item, md, path); err != nil {
				return err
			}
		}
		return nil
	}
	return checkYAMLFields(v, md, path)
}

// jsonable turns what yaml decodes into `any` into what encoding/json can
// encode: maps with string keys only.
func jsonable(v any) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			t[k] = c
		}
		return t, nil
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("key %v: keys must be strings", k)
			}
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			m[ks] = c
		}
		return m, nil
	case []any:
		for i, e := range t {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			t[i] = c
		}
		return t, nil
	}
	return v, nil
}

// protoErrPrefix matches what protojson puts before its message. The
// protobuf module varies the space after "proto:" (sometimes U+00A0) on
// purpose so that nobody matches its errors byte for byte; people should
// not see that noise.
var protoErrPrefix = regexp.MustCompile(`^proto:[ \x{00a0}]*(\(line \d+:\d+\):[ \x{00a0}]*)?`)

func cleanProtoError(err error, keepPosition bool) string {
	msg := err.Error()
	m := protoErrPrefix.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	rest := msg[len(m[0]):]
	if keepPosition && m[1] != "" {
		pos := strings.TrimRight(m[1], " \u00a0")
		return strings.TrimSuffix(strings.TrimPrefix(pos, "("), "):") + ": " + rest
	}
	return rest
}
