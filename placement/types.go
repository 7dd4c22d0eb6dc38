package placement

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Node is a hypervisor host as placement sees it.
type Node struct {
	Name string
	// Site is the failure domain the node lives in; "" is a site too.
	Site        string
	CPUMillis   int64
	MemoryBytes int64
	// CPUOvercommit multiplies CPUMillis: 2.0 lets the node take twice its
	// cores in demand. Zero or negative means 1.0 (no overcommit).
	CPUOvercommit float64
	// Up: alive and a member; a node that is not up hosts nothing and its
	// groups need a restart.
	Up bool
	// Draining nodes keep what they run but take nothing new.
	Draining bool
	// Witness nodes vote but never host a group.
	Witness bool
	Labels  map[string]string
}

// Class is an anti-affinity class a group belongs to. Groups sharing a
// class name are kept apart: never on one node when either declares it
// Hard, spread over nodes otherwise. AcrossSites also spreads the members
// over sites (softly: a site may hold several members when it must).
type Class struct {
	Name        string
	Hard        bool
	AcrossSites bool
}

// Group is the unit of failover as placement sees it.
type Group struct {
	Name        string
	CPUMillis   int64
	MemoryBytes int64
	// Priority: lower is more important and placed (and restarted) first.
	Priority int
	// HA groups are restarted after a failure; the reserve is kept for
	// them. A no-auto-start group is not HA.
	HA bool
	// PossibleOwners, when not empty, are the only nodes the group may run
	// on.
	PossibleOwners []string
	// PreferredOwners are tried in order (softly).
	PreferredOwners []string
	// RequireLabels: the node must carry every one of these labels.
	RequireLabels map[string]string
	// AvoidNodes are nodes the group failed on lately (its start failed,
	// its disk fenced it): it is not placed there again for now.
	AvoidNodes []string
	// CannotRun maps a node to why its driver cannot run the group (a
	// kernel missing there, a machine type its hypervisor lacks), as the
	// node reported it: the group is not placed there while it says so.
	CannotRun     map[string]string
	AntiAffinity  []Class
	PreferredSite string
	// DirtyRateBytesPerSec is how fast the guest dirties memory; it makes a
	// live migration longer (see BalanceOptions).
	DirtyRateBytesPerSec int64
}

// State is the snapshot every decision is made from.
type State struct {
	Nodes  []Node
	Groups []Group
	// Assign maps a running group to its node. Groups not listed are not
	// running.
	Assign map[string]string
}

// Move is one change of owner: From is "" for a group that is not running
// (creation, start), To is "" never (an unplaced group is reported as
// Unplaced instead).
type Move struct {
	Group string
	From  string
	To    string
}

// Constraint names what kept a group off a node.
type Constraint string

// The constraints, in the order a node is checked against them: the first
// that fails is the one reported for that node.
const (
	ConstraintNodeState      Constraint = "node state"
	ConstraintCannotRun      Constraint = "cannot run"
	ConstraintPossibleOwners Constraint = "possible owners"
	ConstraintFailedThere    Constraint = "failed there"
	ConstraintLabels         Constraint = "labels"
	ConstraintAntiAffinity   Constraint = "hard anti-affinity"
	ConstraintMemory         Constraint = "memory"
	ConstraintCPU            Constraint = "cpu"
	ConstraintUnknownGroup   Constraint = "unknown group"
)

// Exclusion says why one node cannot take a group.
type Exclusion struct {
	Node       string
	Constraint Constraint
	Detail     string
}

// Unplaced is a group that found no node, with the reason for every node.
type Unplaced struct {
	Group string
	// Reason is one line for people, e.g. "memory: needs 4.0 GiB, node n3
	// has 1.5 GiB free; possible owners: excludes n1,n2".
	Reason     string
	Exclusions []Exclusion
}

// Errors the agent maps to gRPC codes in one switch: every admission
// refusal wraps ErrResourceExhausted; ErrInvalid and ErrAlreadyRunning are
// the caller's mistakes.
var (
	ErrResourceExhausted = errors.New("placement: resource exhausted")
	ErrInvalid           = errors.New("placement: invalid input")
	ErrAlreadyRunning    = errors.New("placement: group already running")
)

// Validate reports every structural problem in a state: duplicate or empty
// names, negative sizes, assignments to unknown groups or nodes. The other
// functions do not require a valid state (they take the first of
// duplicates and treat a group assigned to an unknown node as lost), but
// the leader should not build invalid ones.
func (s State) Validate() error {
	var errs []string
	nodes := map[string]bool{}
	for i, n := range s.Nodes {
		switch {
		case n.Name == "":
			errs = append(errs, fmt.Sprintf("node %d: empty name", i))
		case nodes[n.Name]:
			errs = append(errs, fmt.Sprintf("node %q: duplicate", n.Name))
		}
		nodes[n.Name] = true
		if n.CPUMillis < 0 || n.MemoryBytes < 0 {
			errs = append(errs, fmt.Sprintf("node %q: negative capacity", n.Name))
		}
	}
	groups := map[string]bool{}
	for i, g := range s.Groups {
		if err := validGroup(g); err != nil {
			errs = append(errs, fmt.Sprintf("group %d: %v", i, err))
		}
		if groups[g.Name] {
			errs = append(errs, fmt.Sprintf("group %q: duplicate", g.Name))
		}
		groups[g.Name] = true
	}
	names := make([]string, 0, len(s.Assign))
	for g := range s.Assign {
		names = append(names, g)
	}
	sort.Strings(names)
	for _, g := range names {
		if !groups[g] {
			errs = append(errs, fmt.Sprintf("assign: unknown group %q", g))
		}
		if n := s.Assign[g]; !nodes[n] {
			errs = append(errs, fmt.Sprintf("assign: group %q on unknown node %q", g, n))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	return nil
}

func validGroup(g Group) error {
	switch {
	case g.Name == "":
		return errors.New("empty name")
	case g.CPUMillis < 0 || g.MemoryBytes < 0:
		return fmt.Errorf("%q: negative demand", g.Name)
	case g.DirtyRateBytesPerSec < 0:
		return fmt.Errorf("%q: negative dirty rate", g.Name)
	}
	for _, c := range g.AntiAffinity {
		if c.Name == "" {
			return fmt.Errorf("%q: anti-affinity class with empty name", g.Name)
		}
	}
	return nil
}
