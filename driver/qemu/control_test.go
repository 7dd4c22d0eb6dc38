package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/haven-ha/haven/driver"
)

func TestAccepts(t *testing.T) {
	spec := driver.VMSpec{ID: web, Epoch: 5, VCPUs: 2, MemoryBytes: 256 << 20, Disks: []driver.DiskSpec{{Name: "d0", Path: "web/d0.img"}}}
	const machine = "pc-q35-7.2"
	good := shapeOf(spec, machine)
	good.Epoch = 4
	for _, tc := range []struct {
		name   string
		change func(*shape)
		want   error
	}{
		{"the same vm, older", func(*shape) {}, nil},
		{"much older", func(s *shape) { s.Epoch = 1 }, nil},
		{"the same epoch", func(s *shape) { s.Epoch = 5 }, driver.ErrStaleEpoch},
		{"newer", func(s *shape) { s.Epoch = 6 }, driver.ErrStaleEpoch},
		{"another vm", func(s *shape) { s.ID.Resource = "db" }, driver.ErrInvalidSpec},
		{"another machine", func(s *shape) { s.Machine = "pc-q35-7.1" }, driver.ErrInvalidSpec},
		{"more memory", func(s *shape) { s.MemoryBytes *= 2 }, driver.ErrInvalidSpec},
		{"fewer vcpus", func(s *shape) { s.VCPUs = 1 }, driver.ErrInvalidSpec},
		{"another disk", func(s *shape) { s.Disks[0].Path = "web/d1.img" }, driver.ErrInvalidSpec},
		{"a qcow2 disk", func(s *shape) { s.Disks[0].Format = "qcow2" }, driver.ErrInvalidSpec},
		{"no disk", func(s *shape) { s.Disks = nil }, driver.ErrInvalidSpec},
	} {
		src := good
		src.Disks = append([]diskShape(nil), good.Disks...)
		tc.change(&src)
		err := accepts(spec, machine, src)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// A refusal reaches the source as the driver error the target refused
// with.
func TestRefusalCodes(t *testing.T) {
	for _, want := range []error{driver.ErrStaleEpoch, driver.ErrInvalidSpec, driver.ErrInvalidState} {
		err := fmt.Errorf("migrate in: %w: why", want)
		got := refused(message{Type: msgRefuse, Code: refusalCode(err), Error: err.Error()})
		if !errors.Is(got, want) {
			t.Errorf("%v came back as %v", err, got)
		}
	}
	got := refused(message{Type: msgRefuse, Error: "disk full"})
	for _, e := range []error{driver.ErrStaleEpoch, driver.ErrInvalidSpec, driver.ErrInvalidState} {
		if errors.Is(got, e) {
			t.Errorf("a refusal without a code is %v", e)
		}
	}
}

// The control stream carries one message per line both ways, and ends
// with the connection.
func TestControl(t *testing.T) {
	a, b := net.Pipe()
	src, dst := newControl(a), newControl(b)
	defer src.close()
	defer dst.close()
	sh := shapeOf(driver.VMSpec{ID: web, Epoch: 3, MemoryBytes: 64 << 20}, "pc-q35-7.2")
	go func() {
		_ = src.send(message{Type: msgHello, VM: &sh})
	}()
	m, err := dst.next(t.Context())
	if err != nil || m.Type != msgHello || m.VM == nil || m.VM.ID != web || m.VM.Epoch != 3 || m.VM.VCPUs != 1 {
		t.Fatalf("hello: %+v, %v", m, err)
	}
	go func() {
		_ = dst.send(message{Type: msgListen, Host: "127.0.0.1", Port: "4444"})
		b.Close()
	}()
	if m, err := src.next(t.Context()); err != nil || m.Type != msgListen || m.Port != "4444" {
		t.Fatalf("listen: %+v, %v", m, err)
	}
	if m, err := src.next(t.Context()); err == nil {
		t.Fatalf("after the peer closed: %+v", m)
	}
}

func TestStateHeader(t *testing.T) {
	h := stateHeader{VM: shapeOf(driver.VMSpec{ID: web, Epoch: 7, MemoryBytes: 64 << 20}, "pc-q35-7.2"), StreamBytes: 5, CRC32C: 0}
	stream := []byte("qemu!")
	f, err := os.Create(filepath.Join(t.TempDir(), "vm.state"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(stream, stateHeaderSize); err != nil {
		t.Fatal(err)
	}
	if h.CRC32C, err = streamSum(f, h.StreamBytes); err != nil {
		t.Fatal(err)
	}
	b, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	got, err := readStateHeader(f)
	if err != nil || got.VM.ID != web || got.VM.Epoch != 7 || got.StreamBytes != 5 || got.CRC32C != h.CRC32C {
		t.Fatalf("read back %+v, %v; wrote %+v", got, err, h)
	}
	if err := got.verify(f); err != nil {
		t.Errorf("verify: %v", err)
	}
	if _, err := f.WriteAt([]byte("Q"), stateHeaderSize); err != nil {
		t.Fatal(err)
	}
	if err := got.verify(f); err == nil {
		t.Error("a changed stream verifies")
	}
	if err := f.Truncate(stateHeaderSize + 4); err != nil {
		t.Fatal(err)
	}
	if err := got.checkSize(f); err == nil {
		t.Error("a file cut short passes")
	}
	if _, err := f.WriteAt([]byte("not a state file"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := readStateHeader(f); err == nil {
		t.Error("a file without the magic reads")
	}
}
