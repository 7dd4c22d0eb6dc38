package cluster

import (
	"context"

	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Balance returns the balancer's proposal on the current state.
func (s *Service) Balance(_ context.Context, req *havenv1.BalanceRequest) (*havenv1.BalanceResponse, error) {
	rep, err := s.cfg.Leader.Balance(req.GetPower(), req.GetDryRun())
	if err != nil {
		return nil, s.status(err)
	}
	resp := &havenv1.BalanceResponse{
		Mode:            balancerModeProto(rep.Mode),
		ImbalanceBefore: rep.Before,
		ImbalanceAfter:  rep.After,
		Threshold:       rep.Threshold,
		PowerOff:        rep.PowerOff,
		Stopped:         rep.Stopped,
		Notes:           rep.Notes,
		ReserveK:        uint32(rep.ReserveK),
		Executed:        rep.Execute,
	}
	for _, m := range rep.Moves {
		resp.Moves = append(resp.Moves, &havenv1.BalanceMove{
			Group: m.Group, From: m.From, To: m.To, Gain: m.Gain,
			CostBytes: m.Bytes, CostSeconds: m.Seconds, Cost: m.Seconds * rep.CostPerSecond, Why: m.Why,
		})
	}
	return resp, nil
}

func balancerModeProto(m placement.Mode) havenv1.BalancerMode {
	switch m {
	case placement.ModeRecommend:
		return havenv1.BalancerMode_BALANCER_MODE_RECOMMEND
	case placement.ModeAutomatic:
		return havenv1.BalancerMode_BALANCER_MODE_AUTOMATIC
	}
	return havenv1.BalancerMode_BALANCER_MODE_OFF
}
