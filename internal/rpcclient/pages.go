package rpcclient

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// maxPages stops a walk whose token never runs out (a broken agent) before
// it eats the caller's memory: at the agent's largest page it is ten
// million items.
const maxPages = 2000

// AllGroups follows ListGroups' pages from req on and returns them as one
// answer with the first page's meta. A group created or deleted during the
// walk is in it or not; none that exists throughout is missed or repeated.
func AllGroups(ctx context.Context, c havenv1.ClusterServiceClient, req *havenv1.ListGroupsRequest) (*havenv1.ListGroupsResponse, error) {
	req = proto.Clone(req).(*havenv1.ListGroupsRequest)
	var all *havenv1.ListGroupsResponse
	for range maxPages {
		resp, err := c.ListGroups(ctx, req)
		if err != nil {
			return nil, err
		}
		if all == nil {
			all = &havenv1.ListGroupsResponse{Meta: resp.GetMeta()}
		}
		all.Groups = append(all.Groups, resp.GetGroups()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
	return nil, fmt.Errorf("ListGroups: still more after %d pages", maxPages)
}

// AllNodes is AllGroups for ListNodes.
func AllNodes(ctx context.Context, c havenv1.ClusterServiceClient, req *havenv1.ListNodesRequest) (*havenv1.ListNodesResponse, error) {
	req = proto.Clone(req).(*havenv1.ListNodesRequest)
	var all *havenv1.ListNodesResponse
	for range maxPages {
		resp, err := c.ListNodes(ctx, req)
		if err != nil {
			return nil, err
		}
		if all == nil {
			all = &havenv1.ListNodesResponse{Meta: resp.GetMeta()}
		}
		all.Nodes = append(all.Nodes, resp.GetNodes()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
	return nil, fmt.Errorf("ListNodes: still more after %d pages", maxPages)
}
