package heartbeat

import (
	"fmt"
	"math"
	"time"
)

// Profile is the failure-detection timing for one class of peers, the
// counterpart of WSFC's SameSubnet and CrossSite delay/threshold pairs.
// Lower values fail over sooner; higher values ride out a lossy network.
type Profile struct {
	ProbeInterval  time.Duration // how often this node probes one peer (memberlist ProbeInterval)
	ProbeTimeout   time.Duration // how long a probe waits for an ack (memberlist ProbeTimeout)
	SuspicionMult  int           // how many probe intervals a suspect gets to refute (memberlist SuspicionMult)
	GossipInterval time.Duration // how often state changes are gossiped (memberlist GossipInterval)
}

// SameSiteDefaults is the profile for peers in the agent's own site:
// probe every 1s, wait 500ms for an ack, give a suspect 4 probe intervals,
// gossip every 200ms. These are memberlist's DefaultLANConfig values, tuned
// by HashiCorp for a LAN: a 500ms ack timeout is generous for sub-millisecond
// RTTs yet a dead host is declared dead in about 5.5s in a site of up to 10
// nodes (DetectionTime), which beats WSFC's SameSubnet default of 10s.
func SameSiteDefaults() Profile {
	return Profile{
		ProbeInterval:  time.Second,
		ProbeTimeout:   500 * time.Millisecond,
		SuspicionMult:  4,
		GossipInterval: 200 * time.Millisecond,
	}
}

// CrossSiteDefaults is the profile for the pool that spans sites: probe
// every 2s, wait 1s for an ack, give a suspect 4 probe intervals, gossip
// every 500ms. memberlist's own WAN profile (5s, 3s, 6) takes about 38s to
// declare a node dead; a failover does not wait for gossip (the lease
// decides it), but membership, votes and what an operator sees do. The
// ack timeout still covers a 200ms round trip five times over (vSAN's
// limit to a witness), and a lost probe is retried indirectly and over
// TCP within the interval. Measured in the lab over 30 +- 10ms and 2 %
// loss between sites (README, "Stretch clusters and timing profiles"):
// no false death in a 10-minute run, and a dead node across the WAN
// declared in 11.8 to 15.4s (three runs).
func CrossSiteDefaults() Profile {
	return Profile{
		ProbeInterval:  2 * time.Second,
		ProbeTimeout:   time.Second,
		SuspicionMult:  4,
		GossipInterval: 500 * time.Millisecond,
	}
}

// Validate names the first bad field.
func (p Profile) Validate() error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("heartbeat: profile %w", err)
	}
	return nil
}

// validate's messages start with the field name so that callers can prefix
// where the profile sits (Config.SameSite.ProbeTimeout ...).
func (p Profile) validate() error {
	switch {
	case p.ProbeInterval <= 0:
		return fmt.Errorf("ProbeInterval must be positive, got %v", p.ProbeInterval)
	case p.ProbeTimeout <= 0:
		return fmt.Errorf("ProbeTimeout must be positive, got %v", p.ProbeTimeout)
	case p.ProbeTimeout >= p.ProbeInterval:
		// memberlist sends indirect probes in what is left of the interval
		// after the direct probe times out.
		return fmt.Errorf("ProbeTimeout (%v) must be less than ProbeInterval (%v)", p.ProbeTimeout, p.ProbeInterval)
	case p.SuspicionMult < 1:
		return fmt.Errorf("SuspicionMult must be at least 1, got %d", p.SuspicionMult)
	case p.GossipInterval <= 0:
		return fmt.Errorf("GossipInterval must be positive, got %v", p.GossipInterval)
	}
	return nil
}

// DetectionTime estimates how long a pool of n nodes takes to declare a
// crashed node dead: one probe interval until it is probed, the probe
// timeout, then the suspicion timeout as memberlist computes it,
// SuspicionMult * max(1, log10(n)) * ProbeInterval.
//
// It is an estimate, not a bound. In a pool of n nodes a given peer may
// wait up to n-1 intervals for its turn to be probed (others probe it
// meanwhile); a suspicion that gets fewer peer confirmations than memberlist
// expects lasts up to 6 times longer; and Lifeguard stretches a node's own
// probe timing up to 8 times while that node is itself struggling.
func (p Profile) DetectionTime(n int) time.Duration {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	// Same arithmetic as memberlist's suspicionTimeout, milli-precision.
	suspicion := time.Duration(p.SuspicionMult) * time.Duration(scale*1000) * p.ProbeInterval / 1000
	return p.ProbeInterval + p.ProbeTimeout + suspicion
}
