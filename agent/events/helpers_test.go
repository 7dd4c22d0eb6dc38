package events

import (
	"github.com/hashicorp/raft"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func encode(c *havenv1.Command) ([]byte, error) { return fsm.Encode(c) }

func raftLog(index uint64, data []byte) *raft.Log {
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: data}
}
