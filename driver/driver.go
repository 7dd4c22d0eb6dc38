package driver

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Drivers wrap them with detail; callers test them with
// errors.Is and map them to gRPC codes at the API boundary.
var (
	// ErrStaleEpoch: the command or disk write carries an older epoch than
	// the one the driver or disk knows (or, for ExtendLease, a different
	// one). The caller's view is out of date; retrying cannot help.
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrNotFound: the driver has no VM of that ID.
	ErrNotFound = errors.New("vm not found")
	// ErrLeaseExpired: the lease end given is not after now, so the VM may
	// not start or resume.
	ErrLeaseExpired = errors.New("lease expired")
	// ErrInvalidState: the VM is in a state that does not allow the call
	// (extending the lease of a stopped VM, forgetting a running one).
	ErrInvalidState = errors.New("invalid vm state")
	// ErrInvalidSpec: the VMSpec is malformed, or the driver's own
	// configuration cannot run it; nothing was started.
	ErrInvalidSpec = errors.New("invalid vm spec")
)

// VMID names one VM resource: group name and resource name.
type VMID struct {
	Group, Resource string
}

func (id VMID) String() string { return id.Group + "/" + id.Resource }

// DiskSpec is one disk of a VM. Path is relative to the shared storage root,
// so every node of a site resolves it to the same file.
type DiskSpec struct {
	Name      string
	Path      string
	SizeBytes int64
}

// VMSpec is what Start needs to boot a VM on this node. It describes the
// machine, not the workload inside it: how a guest behaves is not a
// hypervisor's to set, so the simulated guest's knobs are the sim driver's
// own configuration (sim.Guest).
type VMSpec struct {
	ID VMID
	// Node is the node the VM runs on (this driver's); disks record it.
	Node string
	// Epoch is the group's fencing token at the time of the decision.
	Epoch       uint64
	VCPUs       int
	MemoryBytes int64
	Disks       []DiskSpec
}

// State is the state of a VM as its driver sees it.
type State int

const (
	// StateUnknown is the zero value, so a Status that was never filled in
	// does not read as running.
	StateUnknown State = iota
	// StateRunning: executing guest code under a valid lease.
	StateRunning
	// StateFrozen: halted at its lease end; no execution, no I/O. Only
	// ExtendLease thaws it.
	StateFrozen
	// StateStopped: shut down by Stop, Kill or Close.
	StateStopped
	// StateCrashed: died on its own (guest crash, fenced disk write);
	// Status.Reason says why.
	StateCrashed
)

func (s State) String() string {
	switch s {
	case StateRunning:
		return "running"
	case StateFrozen:
		return "frozen"
	case StateStopped:
		return "stopped"
	case StateCrashed:
		return "crashed"
	default:
		return fmt.Sprintf("unknown(%d)", int(s))
	}
}

// Status is a snapshot of one VM.
type Status struct {
	ID    VMID
	Epoch uint64
	State State
	// Counter is the guest's progress counter (sim: read from guest memory;
	// real drivers may leave it 0).
	Counter uint64
	// Reason says why a VM crashed or stopped, for operators.
	Reason   string
	LeaseEnd time.Time
}

// Capabilities says what a driver supports beyond Hypervisor; the leader
// never asks a node for an operation its driver does not report. A driver
// reports a flag exactly when it implements the optional interface the
// flag names (see the package documentation).
type Capabilities struct {
	// No driver reports these yet: their interfaces come with the first
	// implementation.
	LiveMigration, QuickMigration, HotPlugDisks bool
	// FaultInjection: the driver is a FaultInjector.
	FaultInjection bool
	// DirtyRateEstimation: the driver is a DirtyRateEstimator.
	DirtyRateEstimation bool
}

// FaultInjector is a driver that can make its guests fail on purpose, for
// tests of what the cluster does when they do.
type FaultInjector interface {
	// Crash makes the VM die as a guest crash would: at once, without a
	// final disk write, in StateCrashed with reason. It takes no epoch,
	// because a real crash does not ask the owner first. It refuses an
	// unknown VM (ErrNotFound) and one that is not running or frozen
	// (ErrInvalidState).
	Crash(id VMID, reason string) error
}

// DirtyRateEstimator is a driver that can tell how fast its guests dirty
// memory. Placement prices a live migration by it: the copy must outrun
// the guest's writes, so a fast-dirtying guest is expensive to move.
type DirtyRateEstimator interface {
	// EstimatedDirtyRate is how many bytes per second, counted in whole
	// pages, a guest with memoryBytes of memory dirties; 0 if it cannot
	// tell or the guest writes nothing.
	EstimatedDirtyRate(memoryBytes int64) int64
}

// Hypervisor is the interface every driver implements. All methods are
// safe for concurrent use. See the package documentation for the fencing
// contract every implementation must keep.
type Hypervisor interface {
	Capabilities() Capabilities
	// Start boots the VM at spec.Epoch, gated by leaseEnd (a time.Time from
	// time.Now()+d, i.e. with a monotonic reading): it runs only while
	// time.Now() < its lease end. Start refuses with ErrLeaseExpired if
	// leaseEnd has passed, and with ErrStaleEpoch if a VM of this ID is known
	// at a higher epoch or a disk has been claimed by a higher epoch.
	// Starting an ID already running (or frozen) at the same epoch is a
	// no-op; at a higher epoch, or when the known VM is stopped or crashed,
	// the old one is killed and replaced.
	Start(ctx context.Context, spec VMSpec, leaseEnd time.Time) error
	// Stop shuts the VM down gracefully (a final disk record, then stopped);
	// a frozen VM or one past its lease is stopped without that write,
	// because the gate forbids I/O. Kill stops it at once without another
	// write. Both refuse an epoch older than the VM's (ErrStaleEpoch), accept
	// a newer one (a newer owner may stop an older incarnation), and succeed
	// on a VM that is already stopped or crashed. Whatever they return, the
	// VM is no longer running afterwards unless the error says it was
	// refused.
	Stop(ctx context.Context, id VMID, epoch uint64) error
	Kill(id VMID, epoch uint64) error
	// ExtendLease moves the VM's lease end forward. It is the only way a
	// frozen VM thaws. It refuses with ErrLeaseExpired when until is not
	// after time.Now(), atomically with the thaw, under the same lock the
	// guest loop checks; with ErrStaleEpoch when epoch differs from the
	// VM's; with ErrInvalidState when the VM is stopped or crashed. It never
	// moves the lease end backwards.
	ExtendLease(id VMID, epoch uint64, until time.Time) error
	Status(id VMID) (Status, error)
	// List returns every VM the driver knows, sorted by ID.
	List() []Status
	// Forget removes a stopped or crashed VM from the driver's table
	// (ErrInvalidState if it is running or frozen). After Forget the driver
	// no longer remembers the VM's epoch.
	Forget(id VMID) error
	// Close kills every VM and releases the driver.
	Close() error
}
