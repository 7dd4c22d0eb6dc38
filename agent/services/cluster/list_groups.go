package cluster

import (
	"context"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// ListGroups reads a page of groups, in name order, that pass the
// request's filters. It visits groups from the page token on until the
// page is full (State.GroupsAfter), so a page costs what it scans, not a
// copy of every group; a filter that few groups pass scans further.
func (s *Service) ListGroups(_ context.Context, req *havenv1.ListGroupsRequest) (*havenv1.ListGroupsResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := afterToken("groups", req.GetPageToken())
	if err != nil {
		return nil, err
	}
	match, err := s.groupFilter(req)
	if err != nil {
		return nil, err
	}
	meta, err := s.consistent(req.GetConsistent())
	if err != nil {
		return nil, err
	}
	resp := &havenv1.ListGroupsResponse{Meta: meta}
	more := false
	s.cfg.State.GroupsAfter(after, func(g *havenv1.Group) bool {
		if !match(g) {
			return true
		}
		if len(resp.Groups) == size {
			more = true
			return false
		}
		resp.Groups = append(resp.Groups, g)
		return true
	})
	if more {
		resp.NextPageToken = pageToken("groups", resp.Groups[len(resp.Groups)-1].GetSpec().GetName())
	}
	return resp, nil
}

// groupFilter is the request's filters as one test. The site filter
// needs the owners' sites, which are read here, before the groups: the
// FSM holds its read lock while it hands them out.
func (s *Service) groupFilter(req *havenv1.ListGroupsRequest) (func(*havenv1.Group) bool, error) {
	st, node, site, labels := req.GetState(), req.GetNode(), req.GetSite(), req.GetLabels()
	if _, ok := havenv1.GroupState_name[int32(st)]; !ok {
		return nil, invalidEnum("state", int32(st))
	}
	var inSite map[string]bool
	if site != "" {
		inSite = map[string]bool{}
		for _, n := range s.cfg.State.Nodes() {
			if n.GetSite() == site {
				inSite[n.GetName()] = true
			}
		}
	}
	return func(g *havenv1.Group) bool {
		return (st == havenv1.GroupState_GROUP_STATE_UNSPECIFIED || g.GetState() == st) &&
			(node == "" || g.GetOwner() == node) &&
			(inSite == nil || inSite[g.GetOwner()]) &&
			hasLabels(g.GetSpec().GetLabels(), labels)
	}, nil
}
