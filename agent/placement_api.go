package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/placement"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// Admission, the reserve report, ranking and the balancer, as the API
// offers them. All are the leader's: it keeps the reserve and the move
// history, and its configuration is the one that applies.

// admitCreate refuses an HA group that could not be started now without
// breaking the reserve (or that fits on no node at all). Creating a group
// consumes nothing, but a group the cluster accepted is expected to run:
// saying so at creation is more honest than accepting it and refusing its
// start. No-auto-start groups are not HA and are never refused here; a
// name that exists is left to the FSM (AlreadyExists, or a retried
// request's first result).
func (a *Agent) admitCreate(spec *havenv1.GroupSpec) error {
	if spec.GetPriority() == havenv1.Priority_PRIORITY_NO_AUTO_START || a.fsm.Group(spec.GetName()) != nil {
		return nil
	}
	st := a.placementState()
	k := reserveK(st, a.cfg.Placement.Reserve)
	if k == 0 {
		return nil
	}
	if _, err := a.reserveFor(st, k).Admit(placementGroup(spec, a.cfg.Sim.DirtyRate)); err != nil {
		a.log.Info("group refused", "group", spec.GetName(), "reason", err)
		return placementError(err)
	}
	return nil
}

// startGroup places a group that is not running (on node, when given) so
// that the reserve still holds, and commits it.
func (a *Agent) startGroup(g *havenv1.Group, node, requestID string) error {
	a.placeMu.Lock()
	defer a.placeMu.Unlock()
	// Another decision may have been committed while this one waited for
	// the lock: a concurrent start of the same group has started it.
	cur := a.fsm.Group(g.GetSpec().GetName())
	switch {
	case cur == nil:
		return status.Errorf(codes.NotFound, "group %q not found", g.GetSpec().GetName())
	case cur.GetEpoch() != g.GetEpoch() || cur.GetDesiredIndex() != g.GetDesiredIndex():
		// Changed while this start waited: decide again on what is now.
		if err := startable(cur, node); err != nil || alreadyStarted(cur, node) {
			return err
		}
	}
	g = cur
	now := time.Now()
	st := a.placementState()
	k := reserveK(st, a.cfg.Placement.Reserve)
	pg := placementGroup(g.GetSpec(), a.cfg.Sim.DirtyRate)
	// An operator's start may go where the group failed before: it
	// clears the record.
	pg.AvoidNodes = nil
	st = withGroup(st, pg)
	var owner string
	var kept *placement.Reserve
	var err error
	if node != "" {
		owner, err = admitOn(st, pg, node, k)
	} else {
		owner, kept, err = a.admit(st, pg, k, a.leaseHolders(st, now))
	}
	if err != nil {
		a.log.Info("start refused", "group", pg.Name, "reason", err)
		return placementError(err)
	}
	// The operator's intent (run, at this command's index) and the
	// placement go in one command; an operator's start also forgets where
	// the group failed before.
	if err := a.commit(&havenv1.Command{RequestId: requestID, Cmd: &havenv1.Command_AssignGroup{AssignGroup: &havenv1.AssignGroupCommand{
		Name: pg.Name, ExpectEpoch: g.GetEpoch(), ExpectDesiredIndex: g.GetDesiredIndex(), Owner: owner,
		State: havenv1.GroupState_GROUP_STATE_STARTING, Reason: "started on request",
		Desired: havenv1.DesiredState_DESIRED_STATE_RUN, ClearFailures: true,
	}}}); err != nil {
		return err
	}
	a.assigned(pg.Name, owner, now)
	if node == "" {
		// The admission's reserve is the reserve of the state just
		// committed (unless something else changed meanwhile, which the
		// key tells): keeping it spares the next check.
		a.keepReserve(withAssign(st, map[string]string{pg.Name: owner}), k, kept)
	}
	return nil
}

func (s *clusterService) GetReserve(ctx context.Context, req *havenv1.GetReserveRequest) (*havenv1.GetReserveResponse, error) {
	if req.GetK() > MaxReserve {
		return nil, status.Errorf(codes.InvalidArgument, "k: %d is more than %d", req.GetK(), MaxReserve)
	}
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.GetReserveResponse, error) {
			return c.GetReserve(ctx, req)
		})
	}
	a := s.a
	st := a.placementState()
	k := reserveK(st, a.cfg.Placement.Reserve)
	var r *placement.Reserve
	if req.GetK() == 0 || int(req.GetK()) == k {
		r = a.reserveFor(st, k)
	} else {
		// Another K than the one kept: answered, not kept.
		r = placement.CheckReserve(st, int(req.GetK()))
	}
	resp := reserveResponse(r)
	resp.Enforced = r.K == k && k > 0
	resp.ConfiguredK = uint32(a.cfg.Placement.Reserve)
	resp.Leader = a.cfg.Name
	resp.CpuOvercommit = a.cfg.Placement.CPUOvercommit
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
		resp.Breach = &havenv1.ReserveBreach{FailedNodes: b.Failed, Group: b.Group, Reason: b.Reason}
	}
	return resp
}

// newGroupName names the group RankNodes rates. It is not a valid group
// name, so it can never be mistaken for (and taken off the node of) a
// real one.
const newGroupName = "(new group)"

func (s *clusterService) RankNodes(ctx context.Context, req *havenv1.RankNodesRequest) (*havenv1.RankNodesResponse, error) {
	if err := checkRankRequest(req); err != nil {
		return nil, err
	}
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.RankNodesResponse, error) {
			return c.RankNodes(ctx, req)
		})
	}
	a := s.a
	g := placementGroup(rankSpec(req), a.cfg.Sim.DirtyRate)
	st := a.placementState()
	k := reserveK(st, a.cfg.Placement.Reserve)
	var ranked []placement.Ranked
	if k > 0 {
		var err error
		if ranked, err = a.reserveFor(st, k).Rank(g); err != nil {
			return nil, placementError(err)
		}
	} else {
		ranked = placement.Rank(st, g)
	}
	resp := &havenv1.RankNodesResponse{ReserveK: uint32(k)}
	for _, r := range ranked {
		resp.Nodes = append(resp.Nodes, &havenv1.RankedNode{
			Node: r.Node, Score: int32(r.Score), Stars: int32(r.Stars), Feasible: r.Feasible,
			KeepsReserve: r.KeepsReserve || (k == 0 && r.Feasible), Why: r.Why,
		})
	}
	return resp, nil
}

// rankSpec is the group RankNodes rates: every constraint of the request
// binds it as it would bind a group created with them.
func rankSpec(req *havenv1.RankNodesRequest) *havenv1.GroupSpec {
	return &havenv1.GroupSpec{
		Name: newGroupName, CpuMillis: req.GetCpuMillis(), MemoryBytes: req.GetMemoryBytes(), Priority: req.GetPriority(),
		PossibleOwners: req.GetPossibleOwners(), PreferredOwners: req.GetPreferredOwners(),
		AntiAffinity: req.GetAntiAffinity(), PreferredSite: req.GetPreferredSite(), NodeSelector: req.GetNodeSelector(),
	}
}

// checkRankRequest applies the group spec's rules to what RankNodes is
// asked about.
func checkRankRequest(req *havenv1.RankNodesRequest) error {
	invalid := func(format string, args ...any) error {
		return status.Errorf(codes.InvalidArgument, format, args...)
	}
	switch {
	case req.GetCpuMillis() < 0 || req.GetCpuMillis() > fsm.MaxCPUMillis:
		return invalid("cpu_millis: %d is outside 0..%d", req.GetCpuMillis(), fsm.MaxCPUMillis)
	case req.GetMemoryBytes() < 0 || req.GetMemoryBytes() > fsm.MaxMemoryBytes:
		return invalid("memory_bytes: %d is outside 0..%d (64 TiB)", req.GetMemoryBytes(), int64(fsm.MaxMemoryBytes))
	case req.GetCpuMillis() == 0 && req.GetMemoryBytes() == 0:
		return invalid("cpu_millis, memory_bytes: give the demand to rank nodes for")
	}
	if _, ok := havenv1.Priority_name[int32(req.GetPriority())]; !ok {
		return invalid("priority: %d is not a known priority", req.GetPriority())
	}
	for field, names := range map[string][]string{"possible_owners": req.GetPossibleOwners(), "preferred_owners": req.GetPreferredOwners()} {
		for i, n := range names {
			if !fsm.ValidName(n) {
				return invalid("%s[%d]: %q is not a valid node name", field, i, n)
			}
		}
	}
	seen := map[string]bool{}
	for i, aa := range req.GetAntiAffinity() {
		if !fsm.ValidName(aa.GetClass()) {
			return invalid("anti_affinity[%d].class: %q is not a valid class name", i, aa.GetClass())
		}
		if seen[aa.GetClass()] {
			return invalid("anti_affinity[%d].class: %q is listed twice", i, aa.GetClass())
		}
		seen[aa.GetClass()] = true
	}
	if s := req.GetPreferredSite(); s != "" && !fsm.ValidName(s) {
		return invalid("preferred_site: %q is not a valid site name", s)
	}
	if err := fsm.ValidateNodeSelector(req.GetNodeSelector()); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// The balancer's threshold and migration cost are placement's defaults,
// set here explicitly so the API can report them and price each move.
const (
	balanceThreshold     = 0.05
	balanceCostPerSecond = 0.0005
	// balanceEvery is how often the leader's balancer looks again, in
	// recommend and automatic modes, when the cluster changed.
	balanceEvery = time.Minute
)

func balancerMode(m string) placement.Mode {
	switch m {
	case BalancerRecommend:
		return placement.ModeRecommend
	case BalancerAutomatic:
		return placement.ModeAutomatic
	}
	return placement.ModeOff
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

// noMigration is said wherever automatic mode would act.
const noMigration = "automatic mode moves groups by live migration, which does not exist yet: the moves are recommended, not executed"

// proposal runs the balancer on the current state.
func (a *Agent) proposal(mode placement.Mode, power, dryRun bool, now time.Time) (placement.Proposal, int) {
	st := a.placementState()
	k := reserveK(st, a.cfg.Placement.Reserve)
	p := placement.Balance(st, placement.BalanceOptions{
		Mode: mode, Now: now, Reserve: k, Power: power, DryRun: dryRun,
		Threshold: balanceThreshold, CostPerSecond: balanceCostPerSecond,
	}, a.moves.snapshot())
	return p, k
}

func (s *clusterService) Balance(ctx context.Context, req *havenv1.BalanceRequest) (*havenv1.BalanceResponse, error) {
	if !s.a.isLeader() {
		return forward(ctx, s.a, func(ctx context.Context, c havenv1.ClusterServiceClient) (*havenv1.BalanceResponse, error) {
			return c.Balance(ctx, req)
		})
	}
	configured := balancerMode(s.a.cfg.Placement.Balancer)
	mode := configured
	var notes []string
	if mode == placement.ModeOff && req.GetDryRun() {
		// A dry run is a question; the answer is what recommend would say.
		mode = placement.ModeRecommend
		notes = append(notes, "placement.balancer is off: this dry run shows what recommend mode would propose")
	}
	p, k := s.a.proposal(mode, req.GetPower(), req.GetDryRun(), time.Now())
	if configured == placement.ModeAutomatic && !req.GetDryRun() {
		notes = append(notes, noMigration)
	}
	resp := &havenv1.BalanceResponse{
		Mode:            balancerModeProto(configured),
		ImbalanceBefore: p.Before,
		ImbalanceAfter:  p.After,
		Threshold:       balanceThreshold,
		PowerOff:        p.PowerOff,
		Stopped:         p.Stopped,
		Notes:           append(notes, p.Notes...),
		ReserveK:        uint32(k),
	}
	for _, m := range p.Moves {
		resp.Moves = append(resp.Moves, &havenv1.BalanceMove{
			Group: m.Group, From: m.From, To: m.To, Gain: m.Gain,
			CostBytes: m.Bytes, CostSeconds: m.Seconds, Cost: m.Seconds * balanceCostPerSecond, Why: m.Why,
		})
	}
	return resp, nil
}

// balanceLoop runs the balancer while this node leads, in recommend and
// automatic modes: when the cluster changed since its last look, at most
// every balanceEvery, it logs what it would move and why. It never moves a
// group: automatic mode waits for live migration.
func (a *Agent) balanceLoop(ctx context.Context, stop <-chan struct{}) {
	mode := balancerMode(a.cfg.Placement.Balancer)
	if mode == placement.ModeOff {
		return
	}
	log := a.log.Named("balancer")
	if mode == placement.ModeAutomatic {
		log.Warn("placement.balancer is automatic; " + noMigration)
	}
	tick := time.NewTicker(balanceEvery)
	defer tick.Stop()
	var last uint64
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st := a.placementState()
		key := stateKey(st, reserveK(st, a.cfg.Placement.Reserve))
		if key == last {
			continue
		}
		last = key
		p, _ := a.proposal(mode, false, false, time.Now())
		if len(p.Moves) == 0 {
			log.Debug("nothing to move", "imbalance", fmt.Sprintf("%.4f", p.Before), "why", p.Stopped)
			continue
		}
		log.Info("balancer recommends moves", "moves", len(p.Moves), "imbalance_before", fmt.Sprintf("%.4f", p.Before), "imbalance_after", fmt.Sprintf("%.4f", p.After))
		for _, m := range p.Moves {
			log.Info("recommended move", "group", m.Group, "from", m.From, "to", m.To, "why", m.Why)
		}
	}
}

// admitOn admits a group on the node an operator chose: the node must take
// it, and with it there every set of k failures must still have a restart
// plan. The choice binds this start only: the group's own possible owners
// stay as they are for its restarts.
func admitOn(st placement.State, g placement.Group, node string, k int) (string, error) {
	here := g
	here.PossibleOwners = []string{node}
	if !slices.Contains(g.PossibleOwners, node) && len(g.PossibleOwners) > 0 {
		return "", status.Errorf(codes.InvalidArgument, "node: %s is not among the group's possible owners", node)
	}
	res := placement.Place(withGroup(st, here), []string{g.Name}, placement.Options{})
	if len(res.Unplaced) > 0 {
		return "", &placement.NoRoomError{Unplaced: res.Unplaced[0]}
	}
	if k > 0 {
		r := placement.CheckReserve(withAssign(withGroup(st, g), map[string]string{g.Name: node}), k)
		if !r.OK && r.Breach != nil {
			return "", &placement.ReserveError{Group: g.Name, K: k, Node: node, Breach: *r.Breach, Tried: []string{node}}
		}
	}
	return node, nil
}
