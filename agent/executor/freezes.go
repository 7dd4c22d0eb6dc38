package executor

import (
	"time"

	"github.com/haven-ha/haven/driver"
)

// Causes of a freeze.
const (
	// CauseLeaseExpired: no grant came before the node's lease ended (the
	// leader is gone, or unreachable, or this node was paused).
	CauseLeaseExpired = "lease_expired"
	// CauseWithheld: grants go on, but without the VM's group at its
	// epoch: the leader has moved it, or is about to (step 5 of the lease
	// protocol), and this VM is fenced.
	CauseWithheld = "withheld"
)

// Freeze is a VM of this node that froze at its lease end, or thawed.
type Freeze struct {
	VM     driver.VMID
	Epoch  uint64
	Thawed bool
	// Cause is a freeze's: CauseLeaseExpired or CauseWithheld.
	Cause string
}

// noteStates compares the VMs' states with those last seen and reports
// every freeze and thaw to Config.Freezes. The driver freezes on its own,
// at the lease end; the executor learns it from its List, at each look
// and around each grant, so a freeze that a grant ends at once is seen
// too.
func (e *Executor) noteStates(sts []driver.Status, now time.Time) {
	if e.freezes == nil {
		return
	}
	var out []Freeze
	e.mu.Lock()
	seen := make(map[driver.VMID]bool, len(sts))
	for _, st := range sts {
		seen[st.ID] = true
		ep, was := e.frozen[st.ID]
		switch {
		case st.State == driver.StateFrozen && (!was || ep != st.Epoch):
			cause := CauseLeaseExpired
			if g, ok := e.confirmed[st.ID.Group]; now.Before(e.leaseEnd) && (!ok || g.GetEpoch() != st.Epoch) {
				cause = CauseWithheld
			}
			e.frozen[st.ID] = st.Epoch
			out = append(out, Freeze{VM: st.ID, Epoch: st.Epoch, Cause: cause})
		case was && st.State == driver.StateRunning && ep == st.Epoch:
			delete(e.frozen, st.ID)
			out = append(out, Freeze{VM: st.ID, Epoch: st.Epoch, Thawed: true})
		case was && st.State != driver.StateFrozen:
			// Killed, stopped or crashed frozen: no thaw.
			delete(e.frozen, st.ID)
		}
	}
	for id := range e.frozen {
		if !seen[id] {
			delete(e.frozen, id)
		}
	}
	e.mu.Unlock()
	for _, f := range out {
		e.freezes(f)
	}
}
