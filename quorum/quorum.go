// Package quorum decides who votes: which nodes are Raft voters, when a dead
// one is reaped, and whether a fresh node may bootstrap a cluster. Every
// decision is a pure function of what the leader observed and the time it
// passes in, so each rule is tested with tables and no Raft at all.
package quorum

import (
	"fmt"
	"sort"
	"time"
)

// Server is one node as the leader sees it.
type Server struct {
	ID      string
	Site    string
	Witness bool
	// NoVote is a node of weight 0: it replicates the log but never
	// votes, so it never counts towards a majority nor holds one up.
	NoVote bool
	// Alive is gossip's verdict. Since is when Alive last changed (or when
	// the leader first saw the node), on the leader's clock.
	Alive bool
	Since time.Time
	// Heard is when the node last renewed its lease with this leader (zero
	// if never). Gossip can call a node failed well after it is back: after
	// a partition heals, memberlist may take a push-pull interval to see a
	// member it declared dead, while the node has already voted for this
	// leader and renews with it. A node that renews is not failed, so its
	// failure counts only from the later of Since and Heard.
	Heard time.Time
	// InConfig and Voter describe the node in the Raft configuration.
	InConfig bool
	Voter    bool
}

type ChangeKind int

const (
	// Add puts a node into the configuration as a non-voter: it catches up
	// on the log before it can count towards a majority.
	Add ChangeKind = iota + 1
	Promote
	Demote
	Remove
)

func (k ChangeKind) String() string {
	switch k {
	case Add:
		return "add"
	case Promote:
		return "promote"
	case Demote:
		return "demote"
	case Remove:
		return "remove"
	}
	return fmt.Sprintf("ChangeKind(%d)", int(k))
}

type Change struct {
	Kind   ChangeKind
	ID     string
	Reason string
}

type Options struct {
	// MaxVoters is odd.
	MaxVoters int
	// Stabilization: a node must be alive this long before it is promoted,
	// and failed this long before it loses its vote.
	Stabilization time.Duration
	// ReapAfter: a node failed or gone this long leaves the configuration.
	ReapAfter time.Duration
	// MaxMembers caps the live nodes in the configuration; 0 is no cap.
	// Every member costs the leader a stream of heartbeats and a copy of
	// every entry; the nodes left out follow the log by stream instead
	// (agent/follow). It is at least MaxVoters.
	MaxMembers int
}

// Plan returns the configuration changes that move the cluster towards its
// target, in the order to apply them: adds; the dead voters' demotions and
// the removals; promotions; the live voters' demotions. A dead vote goes
// before a promotion because Raft commits each change, and elects, by the
// newest configuration, and gossip may call a node alive that has just
// died: voters n1..n3 with n2 dead, promoting n4 first needs 3 of 4 votes,
// and with n4 dead too that configuration never commits and no leader is
// ever elected again; demoting n2 first needs 2 of 2, then 2 of 3.
//
// The target: every live node is in the configuration; the voters are all
// live voters (a live voter is never demoted unless there are more than
// MaxVoters, because a demotion costs a round of log replication and buys
// nothing), topped up with stable live non-voters until there are
// min(MaxVoters, live nodes) rounded down to odd; dead voters (failed by
// gossip and not renewing, see Heard) are demoted once stable-dead,
// keeping one only when that makes the count odd. So a
// voter that dies is replaced by a non-voter, and a cluster that loses
// nodes one after another keeps a majority of the survivors (WSFC's dynamic
// quorum). The leader is never demoted or removed.
//
// Across sites: voters are promoted from the site with the fewest, and
// when the voters are settled (all live, at the target) but losing one
// site would take a majority with it, one is swapped at a time (a stable
// non-voter of a site below its share promoted, then a voter of the site
// over it demoted) until no single site holds half the votes, whenever
// the live nodes allow it (see siteSafe). With sites of 2 and 2 nodes and
// a witness in a third, five voters come out 2 + 2 + 1.
//
// A node of weight 0 (NoVote) is never promoted, and loses its vote if it
// has one (unless it leads).
func Plan(servers []Server, leader string, opt Options, now time.Time) []Change {
	srv := append([]Server(nil), servers...)
	sort.Slice(srv, func(i, j int) bool { return srv[i].ID < srv[j].ID })
	stable := func(s Server) bool { return !now.Before(s.Since.Add(opt.Stabilization)) }

	var adds, promotes, demotes, removes []Change
	var voters, candidates, dead, outside []Server
	live, members := 0, 0
	for _, s := range srv {
		switch {
		case s.Alive && !s.InConfig:
			outside = append(outside, s)
		case s.Alive && s.Voter && s.NoVote && s.ID != leader:
			demotes = append(demotes, Change{Demote, s.ID, "its weight is 0: it never votes"})
		case s.Alive && s.Voter:
			voters = append(voters, s)
		case s.Alive && stable(s) && !s.NoVote:
			candidates = append(candidates, s)
		case !s.Alive && s.InConfig && s.ID != leader:
			dead = append(dead, s)
		}
		if s.Alive && s.InConfig && (!s.NoVote || s.ID == leader) {
			live++
		}
		if s.Alive && s.InConfig {
			members++
		}
	}
	adds = addsWithin(outside, srv, members, opt.MaxMembers)
	// Reap first in the decision: a reaped node drops out of every other
	// rule. A voter dead for less than the stabilization time keeps its
	// vote (gossip may be wrong); one dead for longer loses it unless
	// keeping it makes the count odd. Dead means silent too: both clocks
	// run from the later of gossip's verdict and the node's last renewal.
	var freshDead, staleDead []Server
	for _, s := range dead {
		if s.Heard.After(s.Since) {
			s.Since = s.Heard
		}
		switch {
		case !now.Before(s.Since.Add(opt.ReapAfter)):
			removes = append(removes, Change{Remove, s.ID, fmt.Sprintf("failed for more than %s", opt.ReapAfter)})
		case s.Voter && stable(s):
			staleDead = append(staleDead, s)
		case s.Voter:
			freshDead = append(freshDead, s)
		}
	}

	target := min(opt.MaxVoters, live)
	if target%2 == 0 {
		target--
	}
	if len(voters) > opt.MaxVoters {
		// Only after MaxVoters was lowered: shed the excess, never the leader.
		sort.SliceStable(voters, func(i, j int) bool { return voters[i].ID == leader })
		for _, s := range voters[opt.MaxVoters:] {
			demotes = append(demotes, Change{Demote, s.ID, fmt.Sprintf("more than %d voters", opt.MaxVoters)})
		}
		voters = voters[:opt.MaxVoters]
	}
	// Promote only as many as fit beside the voters that keep their vote,
	// and only as many as leave an odd count: with one candidate stable and
	// another still stabilizing, 3 voters stay 3 rather than become 4.
	k := min(target-len(voters), len(candidates), opt.MaxVoters-len(voters)-len(freshDead))
	if len(voters) >= 2 {
		// Gossip may call a node alive that has just died: promote no
		// more than the live voters can outvote should every promoted
		// node be dead, so that the configuration still commits (2 live
		// voters promote one, 3 promote two). A lone voter has no such
		// choice; its first promotion needs the promoted node's vote.
		k = min(k, len(voters)-1-len(freshDead))
	}
	if k > 0 && (len(voters)+len(freshDead)+k)%2 == 0 {
		k--
	}
	for ; k > 0; k-- {
		i := pickSpread(voters, candidates)
		c := candidates[i]
		candidates = append(candidates[:i], candidates[i+1:]...)
		voters = append(voters, c)
		promotes = append(promotes, Change{Promote, c.ID, fmt.Sprintf("live voters below the target of %d", target)})
	}
	keep := 0
	if n := len(voters) + len(freshDead); n%2 == 0 && len(staleDead) > 0 && n < opt.MaxVoters {
		keep = 1
	}
	var drops []Change
	for _, s := range staleDead[keep:] {
		drops = append(drops, Change{Demote, s.ID, "failed; its vote would count against the majority"})
	}
	if len(promotes)+len(demotes)+len(drops) == 0 && len(freshDead) == 0 {
		if c, v, ok := spreadSwap(voters, candidates, leader); ok {
			why := fmt.Sprintf("losing site %q would take a majority of the votes with it", v.Site)
			promotes = append(promotes, Change{Promote, c.ID, why})
			demotes = append(demotes, Change{Demote, v.ID, why})
		}
	}
	out := append(adds, drops...)
	out = append(out, removes...)
	out = append(out, promotes...)
	return append(out, demotes...)
}

// pickSpread picks the candidate that best spreads voters over sites: from
// the site with the fewest voters, a witness first (it has no workload to
// lose), then by ID.
func pickSpread(voters, candidates []Server) int {
	perSite := perSite(voters)
	best := 0
	for i := 1; i < len(candidates); i++ {
		a, b := candidates[i], candidates[best]
		switch {
		case perSite[a.Site] != perSite[b.Site]:
			if perSite[a.Site] < perSite[b.Site] {
				best = i
			}
		case a.Witness != b.Witness:
			if a.Witness {
				best = i
			}
		}
	}
	return best
}

// siteSafe reports whether losing any one site leaves a majority of the
// voters: no site holds more than (n-1)/2 of n. One voter never is.
func siteSafe(voters []Server) bool {
	n := len(voters)
	for _, c := range perSite(voters) {
		if c > (n-1)/2 {
			return false
		}
	}
	return n > 0
}

func perSite(voters []Server) map[string]int {
	m := map[string]int{}
	for _, v := range voters {
		m[v.Site]++
	}
	return m
}

// spreadSwap picks one swap towards siteSafe voters: a voter of the site
// with the most (never the leader) for a candidate of a site that stays
// within its share, (n-1)/2, with it. Each swap lowers the votes over the
// share by one, and while some site is over it, a site below its share
// with a candidate exists whenever any safe set of n does: n <= sum over
// sites of min(nodes there, (n-1)/2) is what a safe set needs, and the
// site over its share counts for more than that sum gives it. So the swaps
// reach a safe set exactly when one exists (TestPlanSiteSafe checks that
// against every subset), and are not tried when none does (canBeSafe).
func spreadSwap(voters, candidates []Server, leader string) (Server, Server, bool) {
	n := len(voters)
	share := (n - 1) / 2
	if n < 3 {
		return Server{}, Server{}, false
	}
	count := perSite(voters)
	over := ""
	for site, c := range count {
		if c > share && (over == "" || c > count[over] || c == count[over] && site < over) {
			over = site
		}
	}
	if over == "" || !canBeSafe(voters, candidates, n) {
		return Server{}, Server{}, false
	}
	var room []Server
	for _, c := range candidates {
		if c.Site != over && count[c.Site]+1 <= share {
			room = append(room, c)
		}
	}
	if len(room) == 0 {
		return Server{}, Server{}, false
	}
	in := room[pickSpread(voters, room)]
	// Out goes the last voter of that site by ID, never the leader: the
	// site has at least two voters (more than a share of at least one).
	for i := len(voters) - 1; i >= 0; i-- {
		if v := voters[i]; v.Site == over && v.ID != leader {
			return in, v, true
		}
	}
	return Server{}, Server{}, false
}

// canBeSafe reports whether n of the voters and candidates can be chosen
// with no site over (n-1)/2: swaps that cannot get there would only churn
// the configuration.
func canBeSafe(voters, candidates []Server, n int) bool {
	nodes := perSite(append(append([]Server(nil), voters...), candidates...))
	room := 0
	for _, c := range nodes {
		room += min(c, (n-1)/2)
	}
	return room >= n
}

// QuorumSize is the number of votes a majority of n voters needs.
func QuorumSize(voters int) int { return voters/2 + 1 }

// addsWithin adds the live nodes outside the configuration while the live
// members stay within max (0: all of them). A witness is always added (it
// exists to vote); nodes of weight 0 come last (they never vote), and
// otherwise the site with the fewest members, so that voters can be
// spread; then by ID.
func addsWithin(outside, all []Server, members, max int) []Change {
	var adds []Change
	rest := outside[:0:0]
	for _, s := range outside {
		if s.Witness {
			adds = append(adds, Change{Add, s.ID, "a witness, alive and not in the Raft configuration"})
			members++
		} else {
			rest = append(rest, s)
		}
	}
	outside = rest
	room := len(outside)
	if max > 0 {
		room = min(room, max-members)
	}
	perSite := map[string]int{}
	for _, s := range all {
		if s.Alive && s.InConfig {
			perSite[s.Site]++
		}
	}
	for ; room > 0; room-- {
		best := 0
		for i := 1; i < len(outside); i++ {
			a, b := outside[i], outside[best]
			switch {
			case a.NoVote != b.NoVote:
				if !a.NoVote {
					best = i
				}
			case perSite[a.Site] < perSite[b.Site]:
				best = i
			}
		}
		s := outside[best]
		outside = append(outside[:best], outside[best+1:]...)
		perSite[s.Site]++
		adds = append(adds, Change{Add, s.ID, "alive and not in the Raft configuration"})
	}
	return adds
}
