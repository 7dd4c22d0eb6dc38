package migrate

import (
	"io"
	"sync"
)

// Conn carries a driver's migration byte stream over a message stream (a
// gRPC stream of byte chunks, both ways), so a driver sees an
// io.ReadWriter whatever the transport: the sim's framed protocol today,
// QEMU's own migration stream tomorrow. Flow control is the transport's:
// a Write blocks while the receiver's window is full, which is what lets
// the driver measure the link rate by what it managed to write.
type Conn struct {
	send      func([]byte) error
	recv      func() ([]byte, error)
	closeSend func() error

	rmu  sync.Mutex
	rbuf []byte
	once sync.Once
	cerr error
}

// NewConn returns a Conn over send and recv; closeSend (may be nil) ends
// the sending direction on Close. send must not keep the slice it is
// given after it returns (gRPC's SendMsg encodes it first).
func NewConn(send func([]byte) error, recv func() ([]byte, error), closeSend func() error) *Conn {
	return &Conn{send: send, recv: recv, closeSend: closeSend}
}

// maxChunk bounds the data of one message. The agent's server takes
// messages of at most 1 MiB (agent/server.MaxMessageBytes), the message's
// own fields and their framing included, so a chunk of a whole MiB would
// be refused; a KiB less leaves room for them.
const maxChunk = 1<<20 - 1<<10

func (c *Conn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), maxChunk)
		if err := c.send(p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.rbuf) == 0 {
		b, err := c.recv()
		if err != nil {
			return 0, err
		}
		c.rbuf = b
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

// Close ends the sending direction once.
func (c *Conn) Close() error {
	c.once.Do(func() {
		if c.closeSend != nil {
			c.cerr = c.closeSend()
		}
	})
	return c.cerr
}

var _ io.ReadWriteCloser = (*Conn)(nil)
