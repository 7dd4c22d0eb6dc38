// Package placement decides where groups may and should run: hard
// constraints, capacity, the cluster reserve, balancing and ranking.
//
// It is pure. Every function takes a State (a snapshot the caller built
// from the FSM) and plain options, and returns data; nothing here reads a
// clock, a random source or the network, starts a goroutine or imports
// the rest of haven. The leader converts its FSM view into a State, asks,
// and commits what it decides to Raft. Given equal inputs every function
// returns equal outputs: ties are broken by name, and scores that pick a
// node are integers so that no platform's floating point can change a
// choice (the balancer's imbalance score is a float; it is only compared
// against thresholds that carry a margin).
//
// # Conventions
//
//   - CPU is in millicores and is overcommitted by the node's
//     CPUOvercommit (1.0 = none; zero is read as 1.0): a node offers
//     floor(CPUMillis × CPUOvercommit). Memory is never overcommitted.
//   - Priority: lower numbers are more important and are placed first
//     (haven.v1.Priority: HIGH = 1, MEDIUM = 2, LOW = 3). Among equal
//     priorities larger groups go first (first-fit decreasing packs
//     better), then names.
//   - Only HA groups are restarted after a failure. A group is running
//     when State.Assign names a node for it; a group that is not running
//     consumes nothing and needs no reserve.
//   - A node takes new work only when it is Up, not Draining and not a
//     Witness. Groups already on a draining node stay counted there.
//
// # Hard and soft constraints
//
// Hard: capacity, possible owners, required labels, node state, and hard
// anti-affinity (two groups sharing a class name never share a node when
// either of them declares the class hard). Nothing in this package ever
// breaks a hard constraint: not Place, not a restart plan, not the
// balancer.
//
// Soft, folded into one integer score per (group, node), highest wins,
// whose weights make it lexicographic (see model.go): first avoid a node
// holding a soft anti-affinity partner, then a site holding an
// AcrossSites partner, then take the earliest preferred owner, then the
// preferred site, then the site the group runs (or ran) in, so that a
// failover or a drain stays in its site when it can, then load (the
// emptier node when spreading, the fuller one when packing), then the
// first name. The balancer may still move a group across sites. Rank shows the same order to
// people, with a 0..100 score and 1..5 stars.
//
// # Reserve
//
// CheckReserve answers "can the cluster restart every running HA group
// after any K simultaneous node failures?". For K ≤ 2, and for larger K
// when the number of failure sets is small (MaxEnumeratedSets), it
// enumerates every failure set of 1..K nodes among the nodes that are up,
// runs the same greedy restart placement the leader would run, and keeps
// the plan: "yes" always means a concrete, checked plan exists for every
// set. Beyond that it falls back to a conservative bound (see bound.go)
// that never says "yes" when unsure. Details of what is pruned and why
// are in reserve.go. CheckReserveSpec with Spec.SiteLoss also asks "can
// every HA group survive the loss of any one whole site?": each site
// that hosts groups is one more failure set (all its nodes at once),
// planned and kept the same way, with a verdict per site (Reserve.Sites).
//
// How the leader uses it:
//
//   - CreateGroup / StartGroup: Reserve.Admit (or Admit) picks the node and
//     refuses with an error wrapping ErrResourceExhausted (*ReserveError
//     names the failure set, or the site, and the group that would not fit,
//     *NoRoomError the reason no node fits at all). The Admission carries
//     the reserve of the new state, plans included.
//   - A node fails: Reserve.PlanFor(failed) returns the plan the last check
//     made for exactly that set; the leader executes it rather than
//     searching, then checks the reserve again on the new state.
//   - Drain, failback, manual placement: Drain, Failback, Place.
//   - GetReserve: Reserve.OK, Breach, WorstFailure, Headroom, Summary.
//   - Balancing: Balance, with the mode, the hold-off history and the time
//     passed in; ProposedMove.Why explains each move (dry run).
//   - People choosing a node: Rank, or Reserve.Rank to also see which
//     nodes would break the reserve.
//
// A Reserve is immutable once returned: its methods only read it, so the
// leader may share one between the RPCs that ask about it.
package placement
