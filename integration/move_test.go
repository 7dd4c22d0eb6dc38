package integration

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestMoveRefusals: a move that cannot be done is refused with the reason
// and changes nothing.
func TestMoveRefusals(t *testing.T) {
	c := newCluster(t)
	leader, names, before := c.runGroups(3, "rf", 1)
	g := before[names[0]]
	for _, tc := range []struct {
		name string
		req  *havenv1.MoveGroupRequest
		code codes.Code
	}{
		{"to its own node", &havenv1.MoveGroupRequest{Name: names[0], Target: g.GetOwner()}, codes.InvalidArgument},
		{"to an unknown node", &havenv1.MoveGroupRequest{Name: names[0], Target: "nowhere"}, codes.NotFound},
		{"an unknown group", &havenv1.MoveGroupRequest{Name: "nosuch"}, codes.NotFound},
	} {
		if _, err := leader.api().MoveGroup(ctx(t), tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	resp, err := leader.api().ListOperations(ctx(t), &havenv1.ListOperationsRequest{})
	if err != nil || len(resp.GetOperations()) != 0 {
		t.Fatalf("refused moves left operations: %v %v", resp.GetOperations(), err)
	}
	if now, _ := groupStates(leader); now[names[0]].GetEpoch() != g.GetEpoch() {
		t.Fatalf("a refused move changed the group")
	}
}
