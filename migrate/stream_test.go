package migrate

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// serverLimit is the agent's server's limit on one message
// (agent/server.MaxMessageBytes).
const serverLimit = 1 << 20

// Every chunk a Conn sends fits in one message the agent's server takes,
// whatever message carries it; a write of a whole MiB or more once made a
// chunk of 1 MiB, which the server refused.
func TestConnChunksFitTheServer(t *testing.T) {
	var chunks [][]byte
	c := NewConn(func(b []byte) error { chunks = append(chunks, bytes.Clone(b)); return nil }, nil, nil)
	data := bytes.Repeat([]byte{0xa5}, 3<<20+7)
	if n, err := c.Write(data); n != len(data) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if got := bytes.Join(chunks, nil); !bytes.Equal(got, data) {
		t.Fatal("the chunks do not add up to what was written")
	}
	for i, ch := range chunks {
		for _, m := range []proto.Message{
			&havenv1.MoveInRequest{Operation: "mv-0123456789", Index: 1 << 40, Vm: "vm", Data: ch},
			&havenv1.MoveInResponse{Data: ch},
			&havenv1.ProbeSinkRequest{Data: ch},
		} {
			if size := proto.Size(m); size > serverLimit {
				t.Errorf("chunk %d of %d bytes makes a %T of %d bytes, over the server's %d", i, len(ch), m, size, serverLimit)
			}
		}
	}
}
