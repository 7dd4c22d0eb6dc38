package leader

import (
	"testing"
	"time"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// A node selector keeps a group to the nodes that carry its labels, and the
// labels reach placement from the FSM's node records.
func TestNodeSelectorReachesPlacement(t *testing.T) {
	nodes := []*havenv1.Node{
		{Name: "n1", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE, Capacity: &havenv1.Capacity{CpuMillis: 8000, MemoryBytes: 32 << 30}},
		{Name: "n2", Status: havenv1.NodeStatus_NODE_STATUS_ALIVE, Capacity: &havenv1.Capacity{CpuMillis: 8000, MemoryBytes: 32 << 30}, Labels: map[string]string{"gpu": "a100"}},
	}
	spec := &havenv1.GroupSpec{Name: "ml", CpuMillis: 1000, MemoryBytes: 1 << 30, NodeSelector: map[string]string{"gpu": "a100"}}
	st := buildState(nodes, []*havenv1.Group{{Spec: spec}}, map[string]bool{"n1": true, "n2": true}, 4, fixedRate(0), time.Now())
	targets, why := placeGroups(st, []string{"ml"}, nil, nil)
	if targets["ml"] != "n2" {
		t.Fatalf("ml placed on %q (%s), want n2, the only node with gpu=a100", targets["ml"], why["ml"])
	}
	targets, why = placeGroups(st, []string{"ml"}, []string{"n2"}, nil)
	if targets["ml"] != "" || why["ml"] == "" {
		t.Fatalf("with n2 excluded ml went to %q; want unplaced with a reason", targets["ml"])
	}
}
