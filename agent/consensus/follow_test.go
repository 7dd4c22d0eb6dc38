package consensus

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// commitGroups commits n creations on the single node.
func commitGroups(tb testing.TB, n *Node, count int) {
	tb.Helper()
	for i := range count {
		res, err := n.Commit(&havenv1.Command{Cmd: &havenv1.Command_CreateGroup{CreateGroup: &havenv1.CreateGroupCommand{Spec: fsmtest.VMGroup(fmt.Sprintf("g%04d", i))}}})
		if err != nil || res.Err != nil {
			tb.Fatal(err, res)
		}
	}
}

// A stream reads every command once and in order, both those the log
// cache still holds (the newest logCacheSize) and those older, which only
// the store has. That the cache is what serves the newest is a matter of
// speed, shown by BenchmarkCommittedNewest.
func TestCommittedReadsPastTheCache(t *testing.T) {
	n, f := single(t)
	commitGroups(t, n, logCacheSize+100)
	var names []string
	after := uint64(0)
	for after < f.Index() {
		logs, through, err := n.Committed(after, 64)
		if err != nil {
			t.Fatal(err)
		}
		if through <= after {
			t.Fatalf("no progress past %d (applied %d)", after, f.Index())
		}
		for _, l := range logs {
			var c havenv1.Command
			if err := proto.Unmarshal(l.Data, &c); err != nil {
				t.Fatal(err)
			}
			names = append(names, c.GetCreateGroup().GetSpec().GetName())
		}
		after = through
	}
	if len(names) != logCacheSize+100 || names[0] != "g0000" || names[len(names)-1] != fmt.Sprintf("g%04d", logCacheSize+99) {
		t.Fatalf("read %d commands (%v … %v), want %d from g0000", len(names), names[:1], names[len(names)-1:], logCacheSize+100)
	}
}

// BenchmarkCommittedNewest is one stream's read of the 16 newest commands,
// as a member serves each of its streams after every commit: from the log
// cache and, as a baseline in the same run, from the store alone.
func BenchmarkCommittedNewest(b *testing.B) {
	n, f := single(b)
	commitGroups(b, n, 256)
	cached := n.logs
	for _, from := range []string{"store", "cache"} {
		b.Run(from, func(b *testing.B) {
			n.logs = cached
			if from == "store" {
				n.logs = n.store
			}
			b.ReportAllocs()
			for range b.N {
				if logs, _, err := n.Committed(f.Index()-16, 64); err != nil || len(logs) != 16 {
					b.Fatal(len(logs), err)
				}
			}
		})
	}
	n.logs = cached
}
