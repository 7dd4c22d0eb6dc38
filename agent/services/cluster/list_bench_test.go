package cluster

import (
	"context"
	"fmt"
	"testing"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// benchRaft answers reads without recording them, so a benchmark's memory
// is the handler's.
type benchRaft struct{}

func (benchRaft) Status() consensus.Status { return consensus.Status{} }
func (benchRaft) ConsistentRead() error    { return nil }
func (benchRaft) ReadMeta(consistent bool) *havenv1.ReadMeta {
	return &havenv1.ReadMeta{Consistent: consistent}
}

// BenchmarkListGroups is one ListGroups call against a real FSM of n
// groups on 100 nodes: what a read costs the answering agent. first is
// the first page of the default size, middle a page from the middle,
// filtered a page of the groups of one node (1 in 100, so it scans
// 100 times the page). Before the name index a call sorted a copy of
// every group; see the figures in the README.
func BenchmarkListGroups(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		l := fsmtest.New(b)
		for i := range 100 {
			l.AddNode(fsmtest.Node(fmt.Sprintf("n%03d", i), "a", 1000_000, 1<<50, nil))
		}
		for i := range n {
			l.Create(fsmtest.VMGroup(fmt.Sprintf("g%06d", i)))
		}
		svc := New(Config{Name: "n000", State: l.FSM, Raft: benchRaft{}})
		for i := range n {
			if i%100 == 0 {
				l.Assign(fmt.Sprintf("g%06d", i), "n042")
			}
		}
		for _, c := range []struct {
			name string
			req  *havenv1.ListGroupsRequest
		}{
			{"first", &havenv1.ListGroupsRequest{}},
			{"middle", &havenv1.ListGroupsRequest{PageToken: pageToken("groups", fmt.Sprintf("g%06d", n/2))}},
			{"filtered", &havenv1.ListGroupsRequest{Node: "n042", PageSize: 50}},
		} {
			b.Run(fmt.Sprintf("groups=%d/%s", n, c.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := svc.ListGroups(context.Background(), c.req); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
