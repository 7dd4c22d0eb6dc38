// Package driver is the one seam between a haven agent and a hypervisor.
//
// A Hypervisor starts, stops and reports VMs on its own node. The agent's
// local executor calls it to make the node match what the FSM says the node
// owns; the driver itself knows nothing of Raft, leases or other nodes. What
// it does know, and must enforce on its own, is the fencing contract below,
// because it is the last component that stands between a stale decision and
// a second runner of a group.
//
// # Fencing contract
//
// DESIGN.md's lease protocol (notes/fencing/ checks it in SPIN) keeps a
// group from running on two nodes. Two of its six steps are the driver's:
//
// Step 4, the gate. Every VM runs under a lease end handed to Start and moved
// forward by ExtendLease. The driver lets the VM execute guest code or do
// I/O only while time.Now() is before its lease end. From the lease end on,
// the VM is frozen: no guest instruction, no memory write, no disk write. A
// frozen VM thaws only through ExtendLease, and ExtendLease refuses (with
// ErrLeaseExpired) a new lease end that is not after time.Now(). That
// refusal is taken under the same lock the guest checks before every step,
// so "is the lease still valid?" and "resume" are one atomic action.
//
// A gate, not a one-shot timer, is what makes a late resume impossible. A
// timer that freezes the VM at the lease end fires once; an agent that read
// a valid lease, was then paused (SIGSTOP, a long GC, a slow disk) past the
// lease end, and only then asked to thaw, would resume a VM that the
// timer had already frozen, with no lease left, while the leader has
// already restarted the group elsewhere (counterexample vi' in
// notes/fencing/REPORT.md). With a gate the late thaw is refused, because
// the check runs at the moment of the thaw, inside the driver, not earlier
// in the agent. For the same reason the check must be wherever the VM
// runs: the sim guest loop checks it before every tick, and a QEMU driver
// needs a watchdog beside the QEMU process that stops vCPUs at the lease
// end even if the agent is paused or dead.
//
// Step 6, epochs as fencing tokens. Every change of owner bumps a group's
// epoch. Drivers refuse commands that carry an older epoch than the VM they
// know (ErrStaleEpoch): a delayed Stop or Start from an earlier owner must
// not touch the newer incarnation. ExtendLease requires the exact epoch,
// because a thaw is only safe when the leader has confirmed that this node
// still owns the group at that epoch (step 5). Shared disks keep the highest
// epoch that has claimed them and refuse writes from an older one, like
// SCSI-3 persistent reservations: if every other safeguard failed, the old
// runner still cannot corrupt the disk, and it stops as a guest stops on an
// I/O error.
//
// # Clocks
//
// Lease ends are time.Time values derived from time.Now() on this host, so
// they carry Go's monotonic clock reading, and the driver compares them
// with time.Now(): wall-clock steps (NTP, an operator's date command) never
// lengthen or shorten a lease. A lease end without a monotonic reading
// (parsed, sent over the network, or passed through t.Round(0) or t.UTC())
// falls back to wall-clock comparison and must not be used. The protocol
// assumes clock rates differ by at most the drift bound in quorum's
// LeaseConfig. On Linux Go's monotonic clock is CLOCK_MONOTONIC, which does
// not advance while the host is suspended: a hypervisor host must not be
// suspended (hibernated), or its VMs may run for up to a lease after
// resuming while the cluster has failed them over.
//
// # Optional capabilities
//
// Hypervisor is what every driver does. What only some drivers do is an
// interface of its own that a driver may implement besides Hypervisor, and
// reports with a flag of Capabilities: FaultInjector (FaultInjection), for
// tests that crash guests and read their memory; DirtyRateEstimator
// (DirtyRateEstimation), for the leader's price of a live migration;
// LiveMigrator (LiveMigration), which moves a running VM by iterative
// pre-copy over a stream; and QuickMigrator (QuickMigration), which saves a
// paused VM to shared storage and restores it elsewhere. Both migrators
// share Switcher, which ends a move either way: Activate runs the target
// (StateIncoming) once the move is committed, and its disk claims at the
// new epoch fence the source; Resume runs the source (StatePaused) again if
// the move rolled back. Both check the lease and the epoch atomically with
// the state change, as ExtendLease does. DiskHotPlugger (HotPlugDisks)
// adds a disk to a running VM and takes one away, at the VM's own epoch
// and only while it runs. Keeping these out of Hypervisor spares a driver
// that cannot migrate a set of methods that only fail.
//
// Callers check the flag first and type-assert only then. The flag is what
// a node can tell the leader, which has no driver value to assert on, and a
// wrapper around a driver may have the methods without the ability behind
// them. So a driver reports a flag exactly when it implements the
// interface; TestCapabilitiesMatchInterfaces holds every driver to that.
//
// # Processes
//
// If the agent process dies, VMs it started must not outlive its lease
// unless a restarted agent re-adopts them in time. The sim driver gets this
// for free (its VMs are goroutines of the agent); drivers whose VMs are
// separate processes need a watchdog that enforces the gate without the
// agent.
package driver
