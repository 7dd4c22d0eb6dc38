package check

import (
	"fmt"
	"slices"
	"strings"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/driver/sim"
	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// checkGroups adds the API checks to r: every VM of a group that should run
// has ticked recently as its owner at its epoch (a tick by anyone else
// does not count: the cluster would be wrong about who runs it), and every
// failed group is noted with its reason.
func (ev *evidence) checkGroups(r *Report, groups []*havenv1.Group, opt Options) {
	logs := make(map[driver.VMID]*execLog, len(ev.logs))
	for _, l := range ev.logs {
		logs[l.id] = l
	}
	groups = slices.Clone(groups)
	slices.SortFunc(groups, func(a, b *havenv1.Group) int { return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName()) })
	// The writers' clocks and the checker's may differ by twice the skew;
	// staleness is no safety matter, so the doubt goes to the VM.
	cutoff := opt.Now.Add(-opt.Freshness - 2*opt.Skew)
	for _, g := range groups {
		name := g.GetSpec().GetName()
		if !fsm.WantsRun(g) {
			ev.checkStopped(r, g, logs, opt)
		}
		switch g.GetState() {
		case havenv1.GroupState_GROUP_STATE_FAILED:
			detail := fmt.Sprintf("group %s is failed at epoch %d", name, g.GetEpoch())
			if g.GetOwner() != "" {
				detail += " on " + g.GetOwner()
			}
			if g.GetStateReason() != "" {
				detail += ": " + g.GetStateReason()
			} else {
				detail += " (no reason given)"
			}
			r.Notes = append(r.Notes, Violation{Kind: Failed, Group: name, Detail: detail})
		case havenv1.GroupState_GROUP_STATE_STARTING, havenv1.GroupState_GROUP_STATE_ONLINE:
			owner, epoch := g.GetOwner(), g.GetEpoch()
			if owner == "" {
				continue
			}
			state := groupState(g.GetState())
			for _, res := range g.GetSpec().GetResources() {
				if res.GetKind() != havenv1.ResourceKind_RESOURCE_KIND_VM {
					continue
				}
				id := driver.VMID{Group: name, Resource: res.GetName()}
				l := logs[id]
				path := rel(ev.dir, sim.ExecLogPath(ev.dir, id))
				var mine, latest *sim.Record
				if l != nil {
					for i := range l.recs {
						rec := &l.recs[i]
						if latest == nil || rec.Wall.After(latest.Wall) {
							latest = rec
						}
						if rec.Node == owner && rec.Epoch == epoch && (mine == nil || rec.Wall.After(mine.Wall)) {
							mine = rec
						}
					}
				}
				head := fmt.Sprintf("group %s is %s on %s at epoch %d", name, state, owner, epoch)
				var detail string
				switch {
				case l == nil:
					detail = fmt.Sprintf("%s, but VM %s has no execution log (%s): it never ran", head, id.Resource, path)
				case mine == nil:
					detail = fmt.Sprintf("%s, but the execution log %s has no tick by %s at epoch %d", head, path, owner, epoch)
					if latest != nil {
						detail += fmt.Sprintf("; its latest is by %s at epoch %d at %s, %s before the check", latest.Node, latest.Epoch, ts(latest.Wall), dur(opt.Now.Sub(latest.Wall)))
					}
				case mine.Wall.Before(cutoff):
					detail = fmt.Sprintf("%s, but its last tick there (counter %d) was at %s, %s before the check at %s; it must tick within %s",
						head, mine.Counter, ts(mine.Wall), dur(opt.Now.Sub(mine.Wall)), ts(opt.Now), opt.Freshness)
				default:
					continue
				}
				r.Violations = append(r.Violations, Violation{Kind: NotRunning, Group: name, VM: id.Resource, Detail: detail})
			}
		}
	}
}

// checkStopped reports a VM of a stopped group that ticked more than
// StopWithin after the stop was committed (desired_time, the leader's
// clock; the doubt of twice the skew goes to the cluster).
func (ev *evidence) checkStopped(r *Report, g *havenv1.Group, logs map[driver.VMID]*execLog, opt Options) {
	if g.GetDesiredTime() == nil {
		return
	}
	stopped := g.GetDesiredTime().AsTime()
	limit := stopped.Add(opt.StopWithin + 2*opt.Skew)
	name := g.GetSpec().GetName()
	for _, res := range g.GetSpec().GetResources() {
		if res.GetKind() != havenv1.ResourceKind_RESOURCE_KIND_VM {
			continue
		}
		l := logs[driver.VMID{Group: name, Resource: res.GetName()}]
		if l == nil {
			continue
		}
		var last *sim.Record
		for i := range l.recs {
			if rec := &l.recs[i]; rec.Wall.After(limit) && (last == nil || rec.Wall.After(last.Wall)) {
				last = rec
			}
		}
		if last != nil {
			r.Violations = append(r.Violations, Violation{Kind: RunsStopped, Group: name, VM: res.GetName(), Detail: fmt.Sprintf(
				"group %s was stopped at %s (index %d), but VM %s ticked on %s at epoch %d at %s, %s later (allowed: %s)",
				name, ts(stopped), g.GetDesiredIndex(), res.GetName(), last.Node, last.Epoch, ts(last.Wall), dur(last.Wall.Sub(stopped)), opt.StopWithin)})
		}
	}
}

func groupState(s havenv1.GroupState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "GROUP_STATE_"))
}
