package placement

import (
	"errors"
	"fmt"
	"strings"
)

// MaxAdmitCandidates is how many of the best-ranked feasible nodes
// admission tries before it refuses. Each try re-checks only the plans the
// new group touches (see engine.reserve), but a cluster where the best
// nodes all break the reserve is almost always short in aggregate, and a
// bounded refusal is the conservative side.
const MaxAdmitCandidates = 16

// NoRoomError: no node can run the group at all, reserve or not.
type NoRoomError struct {
	Unplaced Unplaced
}

func (e *NoRoomError) Error() string {
	return fmt.Sprintf("no node can run group %q: %s", e.Unplaced.Group, e.Unplaced.Reason)
}

// Is makes errors.Is(err, ErrResourceExhausted) true.
func (e *NoRoomError) Is(target error) bool { return target == ErrResourceExhausted }

// ReserveError: the group fits, but wherever it was tried it would leave
// some failure set without room to restart an HA group.
type ReserveError struct {
	Group string
	K     int
	// SiteLoss: the reserve kept the loss of any one site too; a site's
	// loss that breaks names the site in Breach.
	SiteLoss bool
	// Node is the best-ranked node the group was tried on; Breach what
	// breaks with the group there.
	Node   string
	Breach Breach
	// Already: the reserve was broken before this group (nothing can be
	// admitted until capacity returns).
	Already bool
	Tried   []string
}

func (e *ReserveError) Error() string {
	spec := Spec{K: e.K, SiteLoss: e.SiteLoss}
	if e.Already {
		return fmt.Sprintf("cannot admit group %q: %s is already broken: %s", e.Group, spec, e.Breach.String())
	}
	return fmt.Sprintf("admitting group %q would break %s (tried %s): with it on %s, %s",
		e.Group, spec, strings.Join(e.Tried, ","), e.Node, e.Breach.String())
}

// Is makes errors.Is(err, ErrResourceExhausted) true.
func (e *ReserveError) Is(target error) bool { return target == ErrResourceExhausted }

// Admission is a granted CreateGroup or StartGroup.
type Admission struct {
	Node string
	// Reserve is the reserve of the state with the group on Node, plans
	// included: the leader keeps it once the assignment is committed.
	Reserve *Reserve
}

// Admit decides where a new (or stopped) group g starts so that the
// reserve of k failures still holds, or refuses with an error wrapping
// ErrResourceExhausted: *NoRoomError when no node fits, *ReserveError
// naming the failure set that breaks and the group that would not fit.
func Admit(st State, g Group, k int) (Admission, error) {
	return CheckReserve(st, k).Admit(g)
}

// Admit is Admit against the state this reserve was checked on, reusing
// its plans: only the plans the group disturbs are searched again.
func (r *Reserve) Admit(g Group) (Admission, error) {
	if err := validGroup(g); err != nil {
		return Admission{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	ne, gi, err := r.extend(g)
	if err != nil {
		return Admission{}, err
	}
	ranked := ne.rank(gi, Spread)
	if len(ranked) == 0 || !ranked[0].Feasible {
		return Admission{}, &NoRoomError{Unplaced: ne.explain(gi)}
	}
	if !r.OK {
		re := &ReserveError{Group: g.Name, K: r.K, SiteLoss: r.SiteLoss, Already: true}
		if r.Breach != nil {
			re.Breach = *r.Breach
		}
		return Admission{}, re
	}
	var first *ReserveError
	for i, rk := range ranked {
		if !rk.Feasible || i >= MaxAdmitCandidates {
			break
		}
		nr := r.tryOn(ne, gi, rk.Node)
		if nr.OK {
			return Admission{Node: rk.Node, Reserve: nr}, nil
		}
		if first == nil {
			first = &ReserveError{Group: g.Name, K: r.K, SiteLoss: r.SiteLoss, Node: rk.Node}
			if nr.Breach != nil {
				first.Breach = *nr.Breach
			}
		}
		first.Tried = append(first.Tried, rk.Node)
	}
	return Admission{}, first
}

// extend returns a clone of the snapshot with g added (or replacing the
// stopped group of that name), not yet running.
func (r *Reserve) extend(g Group) (*engine, int32, error) {
	c := r.snap.c
	if gi, ok := c.groupIdx.get(g.Name); ok && (r.snap.assign[gi] >= 0 || r.snap.lost[gi]) {
		return nil, 0, fmt.Errorf("%w: %q", ErrAlreadyRunning, g.Name)
	}
	nc, gi := c.withGroup(g)
	return r.snap.withGroup(nc), gi, nil
}

// tryOn returns the reserve with group gi on node (by name); ne is left
// as it was.
func (r *Reserve) tryOn(ne *engine, gi int32, node string) *Reserve {
	n := ne.c.nodeIdx[node]
	w := ne.clone()
	w.move(gi, n)
	w.log = w.log[:0]
	dirty := make([]bool, len(w.c.nodes))
	dirty[n] = true
	return w.reserve(r.Spec(), r.data, dirty)
}

// Rank is Rank with the reserve: each feasible node is also checked for
// whether the group there keeps the reserve (KeepsReserve); a node that
// would break it gets no stars and says which failure breaks.
func (r *Reserve) Rank(g Group) ([]Ranked, error) {
	if err := validGroup(g); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	ne, gi, err := r.extend(g)
	if errors.Is(err, ErrAlreadyRunning) {
		// Rank a running group as if it were new: take it off its node.
		nc, gi2 := r.snap.c.withGroup(g)
		ne, gi, err = r.snap.withGroup(nc), gi2, nil
		ne.move(gi, -1)
		ne.log = ne.log[:0]
	}
	if err != nil {
		return nil, err
	}
	out := ne.rank(gi, Spread)
	for i := range out {
		if !out[i].Feasible {
			continue
		}
		if !r.OK {
			out[i].Stars = 0
			out[i].Why = append(out[i].Why, "reserve already broken: "+r.Breach.String())
			continue
		}
		nr := r.tryOn(ne, gi, out[i].Node)
		out[i].KeepsReserve = nr.OK
		if !nr.OK {
			out[i].Stars = 0
			out[i].Why = append(out[i].Why, fmt.Sprintf("breaks %s: %s", r.Spec(), nr.Breach))
		}
	}
	sortRanked(out)
	return out, nil
}
