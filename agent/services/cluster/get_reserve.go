package cluster

import (
	"context"

	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/agent/services"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// GetReserve reports whether the cluster can sustain K failures (the kept
// K unless the request asks for another).
func (s *Service) GetReserve(_ context.Context, req *havenv1.GetReserveRequest) (*havenv1.GetReserveResponse, error) {
	if req.GetK() > leader.MaxReserve {
		return nil, services.Invalid("k: %d is more than %d", req.GetK(), leader.MaxReserve)
	}
	rep, err := s.cfg.Leader.Reserve(int(req.GetK()))
	if err != nil {
		return nil, s.status(err)
	}
	resp := reserveResponse(rep.Reserve)
	resp.Enforced = rep.K == rep.Kept && (rep.Kept > 0 || rep.KeptSites > 0)
	resp.ConfiguredK = uint32(rep.Configured)
	resp.ReserveSites = uint32(rep.KeptSites)
	resp.ConfiguredReserveSites = uint32(rep.ConfiguredSites)
	resp.Leader = rep.Leader
	resp.CpuOvercommit = rep.CPUOvercommit
	return resp, nil
}

func reserveResponse(r *placement.Reserve) *havenv1.GetReserveResponse {
	resp := &havenv1.GetReserveResponse{
		K:                  uint32(r.K),
		CanSustain:         r.OK,
		WorstFailure:       r.WorstFailure,
		Headroom:           &havenv1.Capacity{CpuMillis: r.Headroom.CPUMillis, MemoryBytes: r.Headroom.MemoryBytes},
		FailureSetsChecked: uint32(r.FailureSets),
		FailureSetsPruned:  uint32(r.Pruned),
		FailureSetsBroken:  uint32(r.BrokenSets),
		Summary:            r.Summary(),
	}
	switch r.Method {
	case placement.MethodEnumerated:
		resp.Method = havenv1.ReserveMethod_RESERVE_METHOD_ENUMERATED
	case placement.MethodBound:
		resp.Method = havenv1.ReserveMethod_RESERVE_METHOD_BOUND
	}
	if b := r.Breach; b != nil && !r.OK {
		resp.Breach = &havenv1.ReserveBreach{FailedNodes: b.Failed, Group: b.Group, Reason: b.Reason, Site: b.Site}
	}
	return resp
}
