package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	// ErrUnsupported: the driver cannot do what the call's options ask
	// (a post-copy move of a driver without post-copy); nothing changed.
	ErrUnsupported = errors.New("not supported by this driver")
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
	// Format is the image format for drivers that read one: "raw" (also
	// when empty) or "qcow2".
	Format string
	// Slot is where the disk sits on the VM's bus (QEMU: the SCSI LUN),
	// distinct among a VM's disks and kept for the disk's life in the
	// group, so that both ends of a live move, and every restart, have it
	// in the same place. Drivers without a bus (the sim) ignore it.
	Slot int
}

// Boot is a direct kernel boot: absolute paths on this node. A driver
// that boots VMs from their disks (or simulates them) may ignore it.
type Boot struct {
	Kernel, Initrd, Cmdline string
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
	Boot        Boot
	// Machine is the machine type; empty is the driver's default.
	Machine string
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
	// StatePaused: the source of a migration, stopped at its switchover
	// (or while its state is saved): no execution, no I/O. ExtendLease
	// moves its lease end but does not run it; only Resume (the move was
	// rolled back) or Stop/Kill (it completed) end the pause.
	StatePaused
	// StateIncoming: the target of a migration: it holds the state
	// received so far, or all of it, and has never executed. Only
	// Activate runs it, once the move is committed and a lease confirms
	// its epoch; it has claimed no disk until then.
	StateIncoming
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
	case StatePaused:
		return "paused"
	case StateIncoming:
		return "incoming"
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
	// Complete: an incoming VM holds all its state, received and
	// verified, so that Activate may run it. False in any other state.
	Complete bool
}

// Capabilities says what a driver supports beyond Hypervisor; the leader
// never asks a node for an operation its driver does not report. A driver
// reports a flag exactly when it implements the optional interface the
// flag names (see the package documentation).
type Capabilities struct {
	// LiveMigration: the driver is a LiveMigrator.
	LiveMigration bool
	// QuickMigration: the driver is a QuickMigrator.
	QuickMigration bool
	// HotPlugDisks: the driver is a DiskHotPlugger.
	HotPlugDisks bool
	// FaultInjection: the driver is a FaultInjector.
	FaultInjection bool
	// DirtyRateEstimation: the driver is a DirtyRateEstimator.
	DirtyRateEstimation bool
	// Postcopy: the driver's LiveMigrator honours MigrateOptions.Postcopy;
	// a driver without it refuses a move that asks for it.
	Postcopy bool
}

// FaultInjector is a driver that can make its guests fail on purpose, for
// tests of what the cluster does when they do, and read and fill their
// memory, for tests and benchmarks of what a migration does with it.
type FaultInjector interface {
	// Crash makes the VM die as a guest crash would: at once, without a
	// final disk write, in StateCrashed with reason. It takes no epoch,
	// because a real crash does not ask the owner first. It refuses an
	// unknown VM (ErrNotFound) and one that is not running or frozen
	// (ErrInvalidState).
	Crash(id VMID, reason string) error
	// Hang makes a running guest stop executing and stop feeding its
	// watchdog while its VM lives on, as a locked-up guest kernel: the
	// watchdog, if the guest has one, then makes the VM crash, and
	// nothing else notices. It refuses an unknown VM (ErrNotFound) and
	// one that is not running (ErrInvalidState).
	Hang(id VMID) error
	// MemoryChecksum hashes the VM's memory as it is at the call, with the
	// function a migration's checksum uses (MigrateResult.Checksum), so a
	// test can compare a moved VM with its original apart from the move's
	// own check. It refuses an unknown VM (ErrNotFound) and one whose
	// memory is gone or still being written: stopped, crashed, or
	// incoming with its state not all arrived (ErrInvalidState).
	MemoryChecksum(id VMID) (uint64, error)
	// FillMemory writes data over every page of a running VM's memory and
	// returns how many bytes, so that a benchmark's move carries data, not
	// pages never written. It refuses an unknown VM (ErrNotFound) and one
	// that is not running (ErrInvalidState).
	FillMemory(id VMID) (int64, error)
}

// DiskHotPlugger is a driver that can add a disk to a running VM and take
// one away while the guest runs (QEMU: blockdev-add and device_add; then
// device_del, the guest's DEVICE_DELETED, and blockdev-del). The agent
// records the change in the group's spec first, so the VM a later
// failover or move starts has the same disks; it hot-plugs only the VM
// that runs now.
//
// Both calls act on the VM at its own epoch only: a hot-plug for an older
// incarnation must not touch the newer one, and one for a newer epoch is
// for a VM this node has not started yet. Both check the epoch and the
// VM's state under the lock its gate takes, and change nothing when they
// refuse:
//
//   - ErrNotFound: the driver has no VM of that ID;
//   - ErrStaleEpoch: epoch is not the VM's, or (AttachDisk) a newer epoch
//     has claimed the disk;
//   - ErrInvalidState: the VM is not running: frozen at its lease end (the
//     gate forbids it I/O, and claiming or releasing a disk is I/O),
//     paused or incoming for a migration, stopped or crashed; or a
//     migration of it is under way (its target was prepared with the
//     disks it had);
//   - ErrInvalidSpec (AttachDisk): the disk fails DiskSpec.Validate, or
//     another disk is attached under its name, or its file is attached
//     under another name, or the driver cannot use the file (not an image
//     of the format given, say).
//
// Attaching a disk that is attached under the same name with the same
// file and format does nothing and returns nil, as Start of a running VM
// does; detaching a name that is not attached does nothing and returns
// nil, as Stop of a stopped VM does. So a caller that lost an answer (a
// timeout, an agent restart) may simply ask again; Disks tells it what
// the VM has.
type DiskHotPlugger interface {
	// AttachDisk claims disk for the VM's epoch, as Start claims a VM's
	// disks, and gives it to the running guest: from its return on the
	// guest may write it (the sim's guest writes it a record from its next
	// tick). ctx bounds the call; a cancelled attach leaves the disk
	// attached or not, which Disks tells.
	AttachDisk(ctx context.Context, id VMID, epoch uint64, disk DiskSpec) error
	// DetachDisk takes the disk named name away from the running VM at
	// epoch. Once it returns nil the VM does no more I/O to the disk (the
	// sim closes it; QEMU's guest has released the device and its block
	// node is gone), so another VM may claim it. A guest that does not
	// release the device before ctx ends keeps it, and the call fails.
	DetachDisk(ctx context.Context, id VMID, epoch uint64, name string) error
	// Disks lists the disks the VM has now, in order: those it started
	// with, less those detached, then those attached since. It refuses an
	// unknown VM (ErrNotFound).
	Disks(id VMID) ([]DiskSpec, error)
}

// Checker is a driver that can tell, without starting anything, whether
// it could run a VM on this node now: the machine type, the files the
// spec names (kernel, initrd, disk images), whatever its own configuration
// needs. The agent asks it of every group's VMs and reports the refusals
// to the leader, so that placement does not send a group to a node that
// would only fail to start it. It needs no Capabilities flag: a driver
// without it is taken to run every valid spec, and a start it cannot make
// fails and is reported as before.
type Checker interface {
	// CanRun returns nil when Start of spec could succeed here, else an
	// error wrapping ErrInvalidSpec that names the field and why (a file
	// that is missing on this node, a machine type this node's hypervisor
	// lacks). spec.Epoch must be valid; spec.Node is ignored. The answer
	// holds for the moment of the call: a file may appear or go later.
	CanRun(spec VMSpec) error
}

// SpecOnlyChecker is a Checker whose verdict depends on the spec alone,
// never on the node's files or hardware (the sim driver's): a spec gets
// the same answer until it changes, so the node asks again only then,
// not on its periodic pass over every group of the cluster.
type SpecOnlyChecker interface {
	Checker
	// ChecksSpecOnly reports whether CanRun reads nothing but the spec.
	ChecksSpecOnly() bool
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

// MigrateOptions are a move's knobs, the same for live and quick moves
// where they apply.
type MigrateOptions struct {
	// DowntimeTarget is the longest pause the guest should see at the
	// switchover; zero means DefaultDowntimeTarget.
	DowntimeTarget time.Duration
	// BandwidthLimit caps the copy in bytes per second; zero is no cap.
	BandwidthLimit int64
	// MaxDuration bounds the pre-copy: past it the move gives up with the
	// reason; zero means DefaultMaxDuration.
	MaxDuration time.Duration
	// Channels is how many parallel streams carry a live move's copy
	// (QEMU's multifd); 0 and 1 mean one. A driver without parallel
	// streams ignores it.
	Channels int
	// Postcopy allows a live move whose pre-copy does not converge to end
	// in post-copy: the source pauses, the move is committed, and the
	// target then runs while the pages it lacks still come from the
	// source. From that commit on a failure of either side loses the
	// guest. Only a driver that reports Capabilities.Postcopy takes it;
	// any other refuses the move with ErrUnsupported.
	Postcopy bool
}

// Defaults of MigrateOptions.
const (
	DefaultDowntimeTarget = 300 * time.Millisecond
	DefaultMaxDuration    = 10 * time.Minute
)

// Progress is what a move reports while it runs.
type Progress struct {
	// Phase is "setup" (once, live: the target has prepared its empty
	// VM and no memory has been sent), "precopy", "switchover" or, for a
	// quick move, "save".
	Phase string
	// Round counts the passes over memory, from 1; the switchover's
	// reports carry the last, made while the guest is paused: one as it
	// begins, with what is left, and one once all of it went, so the last
	// report of a move that completed counts every byte.
	Round int
	// MemoryBytes is the guest's RAM; BytesSent what went on the wire so
	// far (zero pages excluded, compression counted after).
	MemoryBytes, BytesSent int64
	// RemainingBytes is the dirty memory left to send.
	RemainingBytes int64
	// RateBytesPerSec is the link rate measured over the last round.
	RateBytesPerSec int64
	// ExpectedDowntime is RemainingBytes at RateBytesPerSec.
	ExpectedDowntime time.Duration
	// ThrottlePercent is how much the guest is slowed so that the copy
	// can outrun it (0: not at all).
	ThrottlePercent int
}

// MigrateResult is what a completed migration's source reports.
type MigrateResult struct {
	// Rounds counts the passes over memory, the switchover's included.
	Rounds    int
	BytesSent int64
	// Checksum is of the guest's whole memory at the freeze; the target
	// verified that its copy has the same.
	Checksum uint64
	// ThrottlePercent is the most the guest was slowed.
	ThrottlePercent int
	// Paused is how long the source was paused before the target
	// acknowledged the last of the state.
	Paused time.Duration
}

// GiveUpError is a migration that ended without switching over, for a
// reason a retry with the same options would meet again (the guest dirties
// faster than the link carries, the pre-copy ran past its limit). The VM
// runs on at the source.
type GiveUpError struct{ Reason string }

func (e *GiveUpError) Error() string { return "migration gave up: " + e.Reason }

// Watched is a driver that counts the changes of its VMs: one added or
// removed, or one whose state changed, by a call or on its own (a crash,
// a freeze at its lease end). Changes's value moves before any such
// change shows in List, so a caller that reads the same value before a
// List and again later knows that the states that List gave still hold.
//
// Changed receives after the count moved (once for any number of
// changes since the last receive; one receiver), so a caller need not
// poll Changes. A change the driver learns of only when it looks (QEMU's
// supervisor freezes a VM at its lease end on its own) is counted, and
// signalled, by the first Changes, Status or List after it: a caller that
// waits on Changed looks again when a lease it extended runs out.
type Watched interface {
	Changes() uint64
	Changed() <-chan struct{}
}

// Switcher ends the two sides of a migration's switchover. Both checks are
// atomic with the state change, under the lock the guest loop takes, like
// ExtendLease: a late call cannot run a VM past its lease.
type Switcher interface {
	// Activate runs an incoming VM at epoch: it claims the VM's disks for
	// epoch and lets the guest execute until leaseEnd. It refuses with
	// ErrLeaseExpired if leaseEnd has passed, ErrStaleEpoch if epoch is not
	// the VM's, ErrInvalidState if the VM is not incoming with all its
	// state received and verified.
	Activate(id VMID, epoch uint64, leaseEnd time.Time) error
	// Resume runs a paused VM again at its epoch (the move rolled back),
	// until leaseEnd, with the same refusals as Activate (ErrInvalidState
	// for a VM that is not paused, or whose MigrateOut or SaveState has
	// not returned: a move that fails resumes the VM itself).
	Resume(id VMID, epoch uint64, leaseEnd time.Time) error
}

// LiveMigrator is a driver that can move a running VM to another node's
// driver of the same kind: iterative pre-copy over conn, a short pause,
// the rest, and a check on the other side.
type LiveMigrator interface {
	Switcher
	// MigrateOut sends the VM at epoch over conn to a MigrateIn at the
	// other end, calling progress once the target has prepared its VM
	// (phase "setup") and after every round. A progress call may block
	// (a test's hold): the move waits for it, and one that returns after
	// ctx ended fails the move as the cancellation would. The VM must be
	// running (ErrInvalidState otherwise, also while another move of it
	// runs; ErrStaleEpoch for another epoch). It returns once the target
	// has acknowledged a complete and verified copy: the VM is then
	// StatePaused, and only Resume or Stop/Kill may follow. On error the
	// VM was never paused, or was resumed (unless its lease ran out
	// meanwhile, when its gate holds it frozen); a *GiveUpError says the
	// pre-copy could not converge and why. Cancelling ctx aborts the move;
	// a read or write of conn blocked at that moment returns if conn has
	// deadlines (a net.Conn), and any other conn must end with ctx, as a
	// gRPC stream of ctx does.
	MigrateOut(ctx context.Context, id VMID, epoch uint64, conn io.ReadWriter, opts MigrateOptions, progress func(Progress)) (MigrateResult, error)
	// MigrateIn prepares an incoming VM for spec (StateIncoming, not
	// running, no disk claimed) and fills it from conn. It returns nil once
	// the copy is complete and its checksum matches the source's; on error
	// the incoming VM is discarded. It refuses a source whose epoch is not
	// older than spec.Epoch (ErrStaleEpoch), because Activate's disk claims
	// fence only an older one, and a source that is not the VM spec
	// describes (ErrInvalidSpec); the source learns why. The caller ends
	// conn once MigrateIn returns (a gRPC handler returning does): that is
	// how a source waiting for an acknowledgement learns of a failure.
	MigrateIn(ctx context.Context, spec VMSpec, conn io.ReadWriter) error
}

// QuickMigrator is a driver that can save a VM's state to a file on shared
// storage and restore it on another node.
type QuickMigrator interface {
	Switcher
	// SaveState pauses the VM at epoch and writes its memory and device
	// state to path (relative to the shared storage root), synced to disk.
	// On success the VM stays StatePaused; on error it was resumed, as
	// after MigrateOut.
	SaveState(ctx context.Context, id VMID, epoch uint64, path string, progress func(Progress)) (MigrateResult, error)
	// RestoreState prepares an incoming VM for spec from the file at path,
	// checked against the checksum stored in it, with MigrateIn's
	// refusals; on error no incoming VM is left.
	RestoreState(ctx context.Context, spec VMSpec, path string) error
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
	// no-op; one paused or incoming at the same epoch is refused with
	// ErrInvalidState (a booted guest would fork the one the migration
	// holds); at a higher epoch, or when the known VM is stopped or
	// crashed, the old one is killed and replaced.
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
	// VM's; with ErrInvalidState when the VM is stopped, crashed or
	// incoming. A paused VM's lease end moves, but it stays paused. It
	// never moves the lease end backwards.
	ExtendLease(id VMID, epoch uint64, until time.Time) error
	Status(id VMID) (Status, error)
	// List returns every VM the driver knows, sorted by ID.
	List() []Status
	// Forget removes a stopped or crashed VM at epoch from the driver's
	// table (ErrInvalidState if it is running, frozen or paused); an
	// incoming VM is discarded. A VM at another epoch is left alone
	// (ErrStaleEpoch): the caller saw an older incarnation, and the id may
	// already be a newer one's, a move's incoming copy say. After Forget
	// the driver no longer remembers the VM's epoch.
	Forget(id VMID, epoch uint64) error
	// Close kills every VM and releases the driver.
	Close() error
}
