package sim

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/haven-ha/haven/driver"
)

// The migration stream. Every frame is a kind byte, a little-endian uint32
// payload length and the payload. Source to target:
//
//	'H' header: magic "HAVENMIG", version u16, page size u32, memory bytes
//	    u64, source epoch u64, group and resource (u16 length + bytes)
//	'P' pages: count u32, count page numbers u64, then the pages (each
//	    PageSize bytes, the last page of memory possibly shorter)
//	'Z' pages now zero: count u32, count page numbers u64
//	'E' end of a pre-copy round: round u32
//	'D' device state: counter u64, carry u64, carry nanos u64, the guest's
//	    random state (u16 length + bytes)
//	'C' checksum of the whole memory at the freeze: u64; the stream ends
//	'X' abort: reason (u16 length + bytes); the stream ends
//
// Target to source, 'K' ack: what it answers u32 (0 the header, n round n,
// ackDone the checksum), ok u8, and why not (u16 length + bytes). The
// source waits for each ack: the header's tells it the target accepts the
// VM, a round's measures the link end to end (a write returns once the
// bytes are in a socket buffer, which says little about the link), the
// checksum's that the copy is complete and verified.
//
// A page the target has never received is zero there (fresh anonymous
// memory), so zero pages are not sent, and 'Z' only goes out for a page
// that was sent non-zero and has since become zero. Nothing is
// compressed: loopback TCP carries 1.5-2 GB/s on the 2-core host these
// figures come from, and a whole move runs at 500-700 MB/s there
// (BenchmarkMigrate, both ends in one process), while compress/flate at
// its fastest level manages 140-250 MB/s of guest pages on one core. It
// would pay only on a link slower than that, which is not the one a
// cluster migrates over.
//
// A saved state (SaveState) is the same stream in a file, without rounds
// or zero markers: H, P..., D, C.

const (
	wireMagic   = "HAVENMIG"
	wireVersion = 1
	// batchPages is how many pages go in one 'P' frame: 512 KiB, big
	// enough that framing is noise, small enough that the guest's lock,
	// held while a pre-copy batch is copied out, is held for microseconds.
	batchPages = 128
	// maxFrame bounds what a reader allocates for one frame.
	maxFrame = 4 + batchPages*(8+PageSize) + 1<<10
	// ackDone is what the final ack answers.
	ackDone = ^uint32(0)
)

const (
	frameHeader   = 'H'
	framePages    = 'P'
	frameZero     = 'Z'
	frameRoundEnd = 'E'
	frameDevice   = 'D'
	frameChecksum = 'C'
	frameAbort    = 'X'
	frameAck      = 'K'
)

// errProtocol is a stream that breaks the format above.
var errProtocol = errors.New("migration stream corrupt")

type frameWriter struct {
	bw  *bufio.Writer
	hdr [5]byte
}

func newFrameWriter(w io.Writer, size int) *frameWriter {
	return &frameWriter{bw: bufio.NewWriterSize(w, size)}
}

// frame writes one frame of kind whose payload is head then body; a large
// body goes past the buffer straight to the link.
func (w *frameWriter) frame(kind byte, head, body []byte) error {
	w.hdr[0] = kind
	binary.LittleEndian.PutUint32(w.hdr[1:], uint32(len(head)+len(body)))
	if _, err := w.bw.Write(w.hdr[:]); err != nil {
		return err
	}
	if _, err := w.bw.Write(head); err != nil {
		return err
	}
	_, err := w.bw.Write(body)
	return err
}

func (w *frameWriter) flush() error { return w.bw.Flush() }

// ack writes and flushes an ack of what; a nil err is ok.
func (w *frameWriter) ack(what uint32, err error) error {
	b := binary.LittleEndian.AppendUint32(nil, what)
	if err == nil {
		b = append(b, 1)
		b = appendString(b, "")
	} else {
		b = append(b, 0)
		b = appendString(b, err.Error())
	}
	if err := w.frame(frameAck, b, nil); err != nil {
		return err
	}
	return w.flush()
}

type frameReader struct {
	br  *bufio.Reader
	buf []byte
}

func newFrameReader(r io.Reader, size int) *frameReader {
	return &frameReader{br: bufio.NewReaderSize(r, size)}
}

// next reads one frame. The payload is valid until the next call.
func (r *frameReader) next() (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // a stream ends with 'C' or 'X', never between frames
		}
		return 0, nil, err
	}
	n := binary.LittleEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("%w: frame %q of %d bytes", errProtocol, h[0], n)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	p := r.buf[:n]
	if _, err := io.ReadFull(r.br, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return h[0], p, nil
}

// awaitAck reads the ack of what. A refusal is an error naming the
// target's reason; an abort or any other frame is a broken stream.
func (r *frameReader) awaitAck(what uint32) error {
	kind, p, err := r.next()
	if err != nil {
		return fmt.Errorf("waiting for the target: %w", err)
	}
	if kind != frameAck {
		return fmt.Errorf("%w: frame %q instead of an ack", errProtocol, kind)
	}
	dec := decoder{b: p}
	got, ok, why := dec.u32(), dec.u8(), dec.str()
	switch {
	case dec.err != nil:
		return dec.err
	case got != what:
		return fmt.Errorf("%w: ack of %d, want %d", errProtocol, got, what)
	case ok != 1:
		return fmt.Errorf("target refused: %s", why)
	}
	return nil
}

// header is the first frame of a stream (not a disk's Header).
type header struct {
	pageSize uint32
	memBytes int64
	epoch    uint64 // the source's
	id       driver.VMID
}

func (h header) encode() []byte {
	b := append([]byte(nil), wireMagic...)
	b = binary.LittleEndian.AppendUint16(b, wireVersion)
	b = binary.LittleEndian.AppendUint32(b, h.pageSize)
	b = binary.LittleEndian.AppendUint64(b, uint64(h.memBytes))
	b = binary.LittleEndian.AppendUint64(b, h.epoch)
	b = appendString(b, h.id.Group)
	return appendString(b, h.id.Resource)
}

func decodeStreamHeader(kind byte, p []byte) (header, error) {
	if kind != frameHeader {
		return header{}, fmt.Errorf("%w: frame %q before the header", errProtocol, kind)
	}
	dec := decoder{b: p}
	if magic := dec.bytes(len(wireMagic)); dec.err != nil || string(magic) != wireMagic {
		return header{}, fmt.Errorf("%w: not a migration stream (magic %q)", errProtocol, magic)
	}
	if version := dec.u16(); dec.err == nil && version != wireVersion {
		return header{}, fmt.Errorf("%w: version %d, this driver speaks %d", errProtocol, version, wireVersion)
	}
	h := header{pageSize: dec.u32(), memBytes: int64(dec.u64()), epoch: dec.u64()}
	h.id.Group, h.id.Resource = dec.str(), dec.str()
	return h, dec.err
}

// accepts checks that a stream with header h may fill a VM of spec.
func (h header) accepts(spec driver.VMSpec) error {
	switch {
	case h.pageSize != PageSize:
		return fmt.Errorf("%w: source pages of %d bytes, here %d", driver.ErrInvalidSpec, h.pageSize, PageSize)
	case h.id != spec.ID:
		return fmt.Errorf("%w: the stream carries %s", driver.ErrInvalidSpec, h.id)
	case h.memBytes != spec.MemoryBytes:
		return fmt.Errorf("%w: the source has %d bytes of memory, the spec %d", driver.ErrInvalidSpec, h.memBytes, spec.MemoryBytes)
	case h.epoch >= spec.Epoch:
		// Activate's disk claim fences the source only if it is newer.
		return fmt.Errorf("%w: the source runs at epoch %d, the target would at %d", driver.ErrStaleEpoch, h.epoch, spec.Epoch)
	}
	return nil
}

// device is the guest's state outside its memory: what the sim's "CPU"
// holds, so the guest goes on where it stopped.
type device struct {
	counter          uint64
	carry, carryNano uint64
	rng              []byte
}

func (d device) encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, d.counter)
	b = binary.LittleEndian.AppendUint64(b, d.carry)
	b = binary.LittleEndian.AppendUint64(b, d.carryNano)
	return appendString(b, string(d.rng))
}

func decodeDevice(p []byte) (device, error) {
	dec := decoder{b: p}
	d := device{counter: dec.u64(), carry: dec.u64(), carryNano: dec.u64(), rng: []byte(dec.str())}
	return d, dec.err
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(min(len(s), 1<<16-1)))
	return append(b, s[:min(len(s), 1<<16-1)]...)
}

// decoder reads little-endian fields off a payload; the first short read
// sets err, and what follows reads zeros.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n > len(d.b) {
		if d.err == nil {
			d.err = fmt.Errorf("%w: payload short", errProtocol)
		}
		return make([]byte, n)
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() byte    { return d.bytes(1)[0] }
func (d *decoder) u16() uint16 { return binary.LittleEndian.Uint16(d.bytes(2)) }
func (d *decoder) u32() uint32 { return binary.LittleEndian.Uint32(d.bytes(4)) }
func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.bytes(8)) }
func (d *decoder) str() string { return string(d.bytes(int(d.u16()))) }
