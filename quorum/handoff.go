package quorum

// HandOff says to whom a leader that should not lead hands leadership: a
// witness (its site is usually a small machine across a WAN, so with it
// leading every lease renewal crosses the WAN) or a node of weight 0 (it
// led only because it bootstrapped the cluster, and a leader is never
// demoted). The witness must be able to win an election, to keep quorum
// when a data site dies, so it hands off afterwards: to a live voter that
// is neither, from the site that hosts the most groups (groups, by site),
// then by ID. ok is false when the leader may lead or no such voter
// exists.
func HandOff(servers []Server, leader string, groups map[string]int) (to string, ok bool) {
	var self *Server
	for i := range servers {
		if servers[i].ID == leader {
			self = &servers[i]
		}
	}
	if self == nil || (!self.Witness && !self.NoVote) {
		return "", false
	}
	var best *Server
	for i := range servers {
		s := &servers[i]
		if s.ID == leader || !s.Alive || !s.InConfig || !s.Voter || s.Witness || s.NoVote {
			continue
		}
		switch {
		case best == nil:
			best = s
		case groups[s.Site] != groups[best.Site]:
			if groups[s.Site] > groups[best.Site] {
				best = s
			}
		case s.ID < best.ID:
			best = s
		}
	}
	if best == nil {
		return "", false
	}
	return best.ID, true
}
