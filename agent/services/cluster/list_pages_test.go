package cluster

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haven-ha/haven/internal/fsmtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// fsmService is the service over a real FSM, whose log the test writes.
func fsmService(t *testing.T) (*Service, *fsmtest.Log) {
	l := fsmtest.New(t)
	return New(Config{Name: "n1", State: l.FSM, Raft: benchRaft{}}), l
}

func groupNames(gs []*havenv1.Group) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.GetSpec().GetName())
	}
	return out
}

// listAllGroups follows the pages of req, calling between after each page
// but the last, and returns every page's names.
func listAllGroups(t *testing.T, svc *Service, req *havenv1.ListGroupsRequest, between func(page int)) [][]string {
	t.Helper()
	var pages [][]string
	for {
		resp, err := svc.ListGroups(context.Background(), req)
		if err != nil {
			t.Fatalf("page %d: %v", len(pages), err)
		}
		pages = append(pages, groupNames(resp.GetGroups()))
		if resp.GetNextPageToken() == "" {
			return pages
		}
		if len(pages) > 100 {
			t.Fatal("more than 100 pages: the token does not advance")
		}
		if between != nil {
			between(len(pages) - 1)
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// Groups created or deleted between two pages: one behind the cursor is
// not seen (it sorts before what was read), one ahead of it is seen if it
// still exists then, and no group that exists throughout is repeated or
// skipped.
func TestListGroupsPagesAcrossChanges(t *testing.T) {
	svc, l := fsmService(t)
	for i := range 10 {
		l.Create(fsmtest.VMGroup(fmt.Sprintf("g%02d", i*10)))
	}
	pages := listAllGroups(t, svc, &havenv1.ListGroupsRequest{PageSize: 3}, func(page int) {
		if page != 0 {
			return
		}
		// Read so far: g00 g10 g20. One created behind and two deleted
		// behind shift what follows by one: an offset would skip g30.
		del := func(name string) {
			l.Run(&havenv1.Command{Cmd: &havenv1.Command_DeleteGroup{DeleteGroup: &havenv1.DeleteGroupCommand{Name: name}}})
		}
		l.Create(fsmtest.VMGroup("g05"))
		del("g10")
		del("g20")
		l.Create(fsmtest.VMGroup("g55")) // ahead: seen
		del("g70")                       // ahead: not seen
	})
	want := [][]string{{"g00", "g10", "g20"}, {"g30", "g40", "g50"}, {"g55", "g60", "g80"}, {"g90"}}
	if !slices.EqualFunc(pages, want, slices.Equal) {
		t.Errorf("pages %v, want %v", pages, want)
	}
}

// The last page's token is empty, also when the last page is full.
func TestListGroupsLastPageFull(t *testing.T) {
	svc, l := fsmService(t)
	for i := range 4 {
		l.Create(fsmtest.VMGroup(fmt.Sprintf("g%d", i)))
	}
	pages := listAllGroups(t, svc, &havenv1.ListGroupsRequest{PageSize: 2}, nil)
	if want := [][]string{{"g0", "g1"}, {"g2", "g3"}}; !slices.EqualFunc(pages, want, slices.Equal) {
		t.Errorf("pages %v, want %v", pages, want)
	}
}

func TestListGroupsFilters(t *testing.T) {
	svc, l := fsmService(t)
	l.AddNode(fsmtest.Node("n1", "a", 8000, 16<<30, nil))
	l.AddNode(fsmtest.Node("n2", "a", 8000, 16<<30, nil))
	l.AddNode(fsmtest.Node("n3", "b", 8000, 16<<30, nil))
	labelled := func(name string, labels map[string]string) *havenv1.GroupSpec {
		s := fsmtest.VMGroup(name)
		s.Labels = labels
		return s
	}
	l.Create(labelled("db1", map[string]string{"app": "db", "tier": "gold"}))
	l.Assign("db1", "n1")
	l.Report("db1", havenv1.GroupState_GROUP_STATE_ONLINE)
	l.Create(labelled("db2", map[string]string{"app": "db", "tier": "silver"}))
	l.Assign("db2", "n3")
	l.Report("db2", havenv1.GroupState_GROUP_STATE_ONLINE)
	l.Create(labelled("web1", map[string]string{"app": "web", "tier": "gold"}))
	l.Assign("web1", "n2")
	l.Create(labelled("web2", map[string]string{"app": "web"}))
	for _, tc := range []struct {
		name string
		req  *havenv1.ListGroupsRequest
		want []string
	}{
		{"none", &havenv1.ListGroupsRequest{}, []string{"db1", "db2", "web1", "web2"}},
		{"state", &havenv1.ListGroupsRequest{State: havenv1.GroupState_GROUP_STATE_ONLINE}, []string{"db1", "db2"}},
		{"state offline", &havenv1.ListGroupsRequest{State: havenv1.GroupState_GROUP_STATE_OFFLINE}, []string{"web2"}},
		{"node", &havenv1.ListGroupsRequest{Node: "n2"}, []string{"web1"}},
		{"site", &havenv1.ListGroupsRequest{Site: "a"}, []string{"db1", "web1"}},
		{"site unknown", &havenv1.ListGroupsRequest{Site: "z"}, nil},
		{"label", &havenv1.ListGroupsRequest{Labels: map[string]string{"app": "db"}}, []string{"db1", "db2"}},
		{"labels anded", &havenv1.ListGroupsRequest{Labels: map[string]string{"app": "db", "tier": "gold"}}, []string{"db1"}},
		{"label absent", &havenv1.ListGroupsRequest{Labels: map[string]string{"tier": ""}}, nil},
		{"all anded", &havenv1.ListGroupsRequest{Site: "a", Labels: map[string]string{"tier": "gold"}, State: havenv1.GroupState_GROUP_STATE_STARTING}, []string{"web1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A page of one, so the filter must hold across pages too.
			tc.req.PageSize = 1
			var got []string
			for _, p := range listAllGroups(t, svc, tc.req, nil) {
				got = append(got, p...)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("groups %v, want %v", got, tc.want)
			}
		})
	}
}

func TestListGroupsBadRequests(t *testing.T) {
	svc, l := fsmService(t)
	l.Create(fsmtest.VMGroup("g1"))
	nodesToken := pageToken("nodes", "n1")
	for _, tc := range []struct {
		name string
		req  *havenv1.ListGroupsRequest
		want string
	}{
		{"token not base64", &havenv1.ListGroupsRequest{PageToken: "%%%"}, "page_token"},
		{"token of nodes", &havenv1.ListGroupsRequest{PageToken: nodesToken}, "page_token"},
		{"token made up", &havenv1.ListGroupsRequest{PageToken: base64.RawURLEncoding.EncodeToString([]byte("g1"))}, "page_token"},
		{"token without name", &havenv1.ListGroupsRequest{PageToken: pageToken("groups", "")}, "page_token"},
		{"negative page size", &havenv1.ListGroupsRequest{PageSize: -1}, "page_size"},
		{"unknown state", &havenv1.ListGroupsRequest{State: 99}, "state"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.ListGroups(context.Background(), tc.req)
			wantStatus(t, err, codes.InvalidArgument, tc.want)
		})
	}
}

// 0 is the default page size and a larger one than the maximum gets the
// maximum.
func TestListGroupsPageSizeLimits(t *testing.T) {
	f := newFixture()
	for i := range MaxPageSize + 1 {
		f.state.groups = append(f.state.groups, &havenv1.Group{Spec: &havenv1.GroupSpec{Name: fmt.Sprintf("g%05d", i)}})
	}
	for _, tc := range []struct {
		asked int32
		want  int
	}{{0, DefaultPageSize}, {7, 7}, {MaxPageSize, MaxPageSize}, {MaxPageSize + 1, MaxPageSize}, {1 << 30, MaxPageSize}} {
		resp, err := f.svc.ListGroups(context.Background(), &havenv1.ListGroupsRequest{PageSize: tc.asked})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetGroups()) != tc.want || resp.GetNextPageToken() == "" {
			t.Errorf("page_size %d: %d groups (next %q), want %d and a next page", tc.asked, len(resp.GetGroups()), resp.GetNextPageToken(), tc.want)
		}
	}
}

func TestListNodesPagesAndFilters(t *testing.T) {
	f := newFixture()
	alive, failed := havenv1.NodeStatus_NODE_STATUS_ALIVE, havenv1.NodeStatus_NODE_STATUS_FAILED
	f.state.nodes = []*havenv1.Node{
		{Name: "n1", Site: "a", Status: alive, Labels: map[string]string{"rack": "r1", "cpu": "epyc"}},
		{Name: "n2", Site: "a", Status: failed, Labels: map[string]string{"rack": "r1"}},
		{Name: "n3", Site: "b", Status: alive, Labels: map[string]string{"rack": "r2", "cpu": "epyc"}},
		{Name: "n4", Site: "b", Status: alive},
		{Name: "n5", Site: "a", Status: alive, Labels: map[string]string{"rack": "r1", "cpu": "epyc"}},
	}
	for _, tc := range []struct {
		name string
		req  *havenv1.ListNodesRequest
		want [][]string
	}{
		{"pages", &havenv1.ListNodesRequest{PageSize: 2}, [][]string{{"n1", "n2"}, {"n3", "n4"}, {"n5"}}},
		{"status", &havenv1.ListNodesRequest{PageSize: 2, Status: alive}, [][]string{{"n1", "n3"}, {"n4", "n5"}}},
		{"site", &havenv1.ListNodesRequest{Site: "b"}, [][]string{{"n3", "n4"}}},
		{"labels anded", &havenv1.ListNodesRequest{PageSize: 1, Labels: map[string]string{"rack": "r1", "cpu": "epyc"}}, [][]string{{"n1"}, {"n5"}}},
		{"nothing", &havenv1.ListNodesRequest{Site: "c"}, [][]string{nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pages [][]string
			for {
				resp, err := f.svc.ListNodes(context.Background(), tc.req)
				if err != nil {
					t.Fatal(err)
				}
				var names []string
				for _, n := range resp.GetNodes() {
					names = append(names, n.GetNode().GetName())
				}
				pages = append(pages, names)
				if resp.GetNextPageToken() == "" || len(pages) > 10 {
					break
				}
				tc.req.PageToken = resp.GetNextPageToken()
			}
			if !slices.EqualFunc(pages, tc.want, slices.Equal) {
				t.Errorf("pages %v, want %v", pages, tc.want)
			}
		})
	}
	for _, req := range []*havenv1.ListNodesRequest{
		{PageToken: pageToken("groups", "g1")},
		{PageToken: "!"},
		{PageSize: -5},
		{Status: 42},
	} {
		_, err := f.svc.ListNodes(context.Background(), req)
		wantStatus(t, err, codes.InvalidArgument)
	}
}
