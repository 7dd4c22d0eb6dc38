// Package fsm is the Raft state machine: the cluster state every agent holds
// a copy of, the commands that change it, and its snapshots.
//
// Apply is deterministic: it reads no clock and no random source (time enters
// as Command.time, set by the proposing leader). Records stored in the state
// are never mutated after they are stored; a change stores a modified clone.
// That makes a snapshot a copy of the maps, and lets readers hold records
// without locks.
package fsm

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/btree"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// RequestRetention is how long a request id is remembered. A client that
// retries later than this may apply a command twice; clients retry within
// seconds.
const RequestRetention = time.Hour

// Code classifies a rule violation; it maps to a gRPC status at the API.
// It is the protobuf enum stored in snapshots, so its numbers are fixed by
// the .proto file rather than by the order of a Go const block.
type Code = havenv1.ErrorCode

const (
	CodeOK                 = havenv1.ErrorCode_ERROR_CODE_UNSPECIFIED
	CodeInvalidArgument    = havenv1.ErrorCode_ERROR_CODE_INVALID_ARGUMENT
	CodeNotFound           = havenv1.ErrorCode_ERROR_CODE_NOT_FOUND
	CodeAlreadyExists      = havenv1.ErrorCode_ERROR_CODE_ALREADY_EXISTS
	CodeFailedPrecondition = havenv1.ErrorCode_ERROR_CODE_FAILED_PRECONDITION
)

// Error is a command that was committed but refused by a business rule. It
// changed nothing.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Msg: fmt.Sprintf(format, args...)}
}

// Result is what Apply returns for every command.
type Result struct {
	// Index is the log index that applied the command; for a duplicate
	// request, the index of its first application.
	Index uint64
	Err   *Error
	// Items has one entry per item of a batch command (AssignGroups), in
	// order: nil where the item was applied, else why it was refused. Err
	// stays nil for a batch, since its items succeed or fail apart.
	Items []*Error
	// Duplicate is set when the request id was applied before.
	Duplicate bool
	// Command is the command as decoded from the log, for observers of
	// the apply (events) that would otherwise decode it again.
	Command *havenv1.Command
}

// FSM implements raft.FSM.
type FSM struct {
	mu sync.RWMutex
	st *state
	// halt is set by the first log entry that does not decode; from then
	// on nothing is applied (see Apply). halted is closed at that moment.
	halt   *HaltError
	halted chan struct{}
}

// HaltError is a committed log entry this node cannot decode: its copy of
// the log is damaged, or was written by a newer agent. Applying on past it
// would leave this replica different from the others, so the FSM stops
// where it is and the agent must stop too (see Halted).
type HaltError struct {
	Index uint64
	Err   error
}

func (e *HaltError) Error() string {
	return fmt.Sprintf("fsm: the committed log entry at index %d does not decode (%v): this node's Raft log is damaged or was written by a newer agent; its state stops at index %d", e.Index, e.Err, e.Index-1)
}

func (e *HaltError) Unwrap() error { return e.Err }

type state struct {
	index  uint64
	nodes  map[string]*havenv1.Node
	groups map[string]*havenv1.Group
	// names holds the groups' names in order, so that a read of a page
	// (GroupsAfter) visits only what it returns instead of sorting every
	// group. Derived from groups, never stored; changed only when a group
	// is created or deleted.
	names *btree.BTreeG[string]
	// changed holds the groups by the index of their last change, so
	// that a reader that keeps up (a node's checks, GroupsChangedAfter)
	// visits what changed since it last looked, not every group. Derived
	// from groups, never stored; kept by setGroup and removeGroup.
	changed *btree.BTreeG[change]
	// owned indexes the groups by owner, so that what one node runs
	// (its lease answer, its executor's plan) costs its own groups, not
	// every group of the cluster. Derived from groups, never stored;
	// kept by setGroup and deleteGroup.
	owned    map[string]map[string]struct{}
	requests map[string]*havenv1.AppliedRequest
	// order lists request ids by apply order, for pruning by age.
	order []string
	// disks maps every disk path a group names to that group: a disk
	// belongs to one group. Derived from groups, never stored.
	disks map[string]string
	// ops holds the moves in flight and the last KeptOperations finished
	// ones, whose ids finished lists in the order they finished.
	ops      map[string]*havenv1.Operation
	finished []string
	acl      aclState
}

func newState() *state {
	return &state{
		nodes:    map[string]*havenv1.Node{},
		groups:   map[string]*havenv1.Group{},
		names:    newNames(),
		changed:  btree.NewG(32, changeLess),
		owned:    map[string]map[string]struct{}{},
		requests: map[string]*havenv1.AppliedRequest{},
		disks:    map[string]string{},
		ops:      map[string]*havenv1.Operation{},
		acl:      newACLState(),
	}
}

// newNames is an empty index of group names. Degree 32 keeps a node's
// names in a few cache lines; the figure is not critical.
func newNames() *btree.BTreeG[string] { return btree.NewOrderedG[string](32) }

// change is a group's place in state.changed: its modify index, then its
// name.
type change struct {
	index uint64
	name  string
}

func changeLess(a, b change) bool {
	return a.index < b.index || (a.index == b.index && a.name < b.name)
}

func New() *FSM { return &FSM{st: newState(), halted: make(chan struct{})} }

// Halted is closed when the FSM stops applying on an undecodable entry;
// Err then says which.
func (f *FSM) Halted() <-chan struct{} { return f.halted }

// Err is why the FSM stopped applying, nil while it applies.
func (f *FSM) Err() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.halt == nil {
		return nil
	}
	return f.halt
}

// Encode marshals a command for raft.Apply.
func Encode(c *havenv1.Command) ([]byte, error) { return proto.Marshal(c) }

// Apply applies one committed log entry and returns a *Result.
//
// An entry that does not decode halts the FSM rather than panic: the log
// is corrupt or written by an incompatible version, and skipping the entry
// would diverge from the other replicas, but a panic inside Raft's apply
// loop gives the operator a stack instead of a reason. Halted, the FSM
// refuses every later entry without applying it (FailedPrecondition), its
// reads stay at the last entry it applied, and the agent, watching Halted,
// stops with HaltError's message.
//
// An entry at or below the index already applied is skipped: an agent
// outside the Raft configuration follows the committed log from a member
// (agent/follow), and when it joins the configuration Raft replays what
// the stream already applied. Every index names one committed entry, so
// the state at the higher index already holds it.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var c havenv1.Command
	err := proto.Unmarshal(l.Data, &c)
	f.mu.Lock()
	defer f.mu.Unlock()
	if l.Index <= f.st.index {
		return &Result{Index: l.Index}
	}
	if err != nil && f.halt == nil {
		f.halt = &HaltError{Index: l.Index, Err: err}
		close(f.halted)
	}
	if f.halt != nil {
		return &Result{Index: l.Index, Err: errorf(CodeFailedPrecondition, "%v", f.halt)}
	}
	r := f.st.apply(l.Index, &c)
	r.Command = &c
	return r
}

func (s *state) apply(index uint64, c *havenv1.Command) *Result {
	s.index = index
	now := c.GetTime().AsTime()
	s.prune(now)
	if id := c.GetRequestId(); id != "" {
		if prev, ok := s.requests[id]; ok {
			r := &Result{Index: prev.GetIndex(), Duplicate: true}
			if prev.GetErrorCode() != CodeOK {
				r.Err = &Error{Code: prev.GetErrorCode(), Msg: prev.GetErrorMessage()}
			}
			for _, it := range prev.GetItems() {
				var e *Error
				if it.GetErrorCode() != CodeOK {
					e = &Error{Code: it.GetErrorCode(), Msg: it.GetErrorMessage()}
				}
				r.Items = append(r.Items, e)
			}
			return r
		}
	}
	var err *Error
	var items []*Error
	switch cmd := c.Cmd.(type) {
	case *havenv1.Command_UpsertNode:
		err = s.upsertNode(index, cmd.UpsertNode, now)
	case *havenv1.Command_SetNodeStatus:
		err = s.setNodeStatus(index, cmd.SetNodeStatus, now)
	case *havenv1.Command_CreateGroup:
		err = s.createGroup(index, cmd.CreateGroup, now)
	case *havenv1.Command_DeleteGroup:
		err = s.deleteGroup(cmd.DeleteGroup)
	case *havenv1.Command_AssignGroup:
		err = s.assignGroup(index, cmd.AssignGroup, now)
	case *havenv1.Command_AssignGroups:
		items = s.assignGroups(index, cmd.AssignGroups, now)
	case *havenv1.Command_SetGroupState:
		err = s.setGroupState(index, cmd.SetGroupState, now)
	case *havenv1.Command_StopGroup:
		err = s.stopGroup(index, cmd.StopGroup, now)
	case *havenv1.Command_ReportGroup:
		err = s.reportGroup(index, cmd.ReportGroup, now)
	case *havenv1.Command_SetNodeDrain:
		err = s.setNodeDrain(index, cmd.SetNodeDrain)
	case *havenv1.Command_BeginMove:
		err = s.beginMove(index, cmd.BeginMove, now)
	case *havenv1.Command_MoveProgress:
		err = s.moveProgress(index, cmd.MoveProgress, now)
	case *havenv1.Command_CommitMove:
		err = s.commitMove(index, cmd.CommitMove, now)
	case *havenv1.Command_EndMove:
		err = s.endMove(index, cmd.EndMove, now)
	case *havenv1.Command_AttachDisk:
		err = s.attachDisk(index, cmd.AttachDisk, now)
	case *havenv1.Command_DetachDisk:
		err = s.detachDisk(index, cmd.DetachDisk, now)
	case *havenv1.Command_EndDiskChange:
		err = s.endDiskChange(index, cmd.EndDiskChange, now)
	case *havenv1.Command_SetNodeChecks:
		err = s.setNodeChecks(index, cmd.SetNodeChecks)
	case *havenv1.Command_BootstrapAcl:
		err = s.bootstrapACL(index, cmd.BootstrapAcl, now)
	case *havenv1.Command_CreateAclToken:
		err = s.createACLToken(index, cmd.CreateAclToken, now)
	case *havenv1.Command_RevokeAclToken:
		err = s.revokeACLToken(cmd.RevokeAclToken)
	default:
		// A newer agent wrote a command this one does not know. Refusing
		// it on every replica keeps them identical; the operator upgrades.
		err = errorf(CodeFailedPrecondition, "unknown command type %T", c.Cmd)
	}
	if id := c.GetRequestId(); id != "" {
		ar := &havenv1.AppliedRequest{RequestId: id, Index: index, Time: c.GetTime()}
		if err != nil {
			ar.ErrorCode, ar.ErrorMessage = err.Code, err.Msg
		}
		for _, e := range items {
			it := &havenv1.AppliedItem{}
			if e != nil {
				it.ErrorCode, it.ErrorMessage = e.Code, e.Msg
			}
			ar.Items = append(ar.Items, it)
		}
		s.requests[id] = ar
		s.order = append(s.order, id)
	}
	return &Result{Index: index, Err: err, Items: items}
}

// prune forgets request ids older than RequestRetention. order is in apply
// order; a leader whose clock is behind its predecessor's may leave a few
// entries slightly out of time order, which only delays their pruning.
func (s *state) prune(now time.Time) {
	cutoff := now.Add(-RequestRetention)
	n := 0
	for n < len(s.order) {
		ar := s.requests[s.order[n]]
		if ar != nil && !ar.GetTime().AsTime().Before(cutoff) {
			break
		}
		delete(s.requests, s.order[n])
		n++
	}
	if n > 0 {
		s.order = append([]string(nil), s.order[n:]...)
	}
}

func (s *state) upsertNode(index uint64, c *havenv1.UpsertNodeCommand, now time.Time) *Error {
	n := c.GetNode()
	if n.GetName() == "" {
		return errorf(CodeInvalidArgument, "node: name is empty")
	}
	n = proto.Clone(n).(*havenv1.Node)
	if old, ok := s.nodes[n.GetName()]; ok {
		// Draining is an operator's decision, changed only by its own
		// command, never by the leader's gossip bookkeeping.
		n.Draining = old.GetDraining()
		// So are the node's own reports of what it cannot run.
		n.CannotRun, n.CheckedIndex = old.GetCannotRun(), old.GetCheckedIndex()
		n.CreateIndex = old.GetCreateIndex()
		if old.GetStatus() == n.GetStatus() {
			n.StatusTime = old.GetStatusTime()
		} else {
			n.StatusTime = timestamppb.New(now)
		}
	} else {
		n.CreateIndex = index
		n.StatusTime = timestamppb.New(now)
	}
	n.ModifyIndex = index
	s.nodes[n.GetName()] = n
	return nil
}

func (s *state) setNodeStatus(index uint64, c *havenv1.SetNodeStatusCommand, now time.Time) *Error {
	old, ok := s.nodes[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "node %q not found", c.GetName())
	}
	if old.GetStatus() == c.GetStatus() {
		return nil
	}
	n := proto.Clone(old).(*havenv1.Node)
	n.Status = c.GetStatus()
	n.StatusTime = timestamppb.New(now)
	n.ModifyIndex = index
	s.nodes[n.GetName()] = n
	return nil
}

func (s *state) setNodeDrain(index uint64, c *havenv1.SetNodeDrainCommand) *Error {
	old, ok := s.nodes[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "node %q not found", c.GetName())
	}
	if old.GetDraining() == c.GetDraining() {
		return nil
	}
	n := proto.Clone(old).(*havenv1.Node)
	n.Draining = c.GetDraining()
	n.ModifyIndex = index
	s.nodes[n.GetName()] = n
	return nil
}

// setNodeChecks replaces what a node reported its driver cannot run. A
// report checked against older specs than the one recorded changes
// nothing: reports may overtake each other on their way.
func (s *state) setNodeChecks(index uint64, c *havenv1.SetNodeChecksCommand) *Error {
	old, ok := s.nodes[c.GetName()]
	if !ok {
		return errorf(CodeNotFound, "node %q not found", c.GetName())
	}
	if c.GetCheckedIndex() < old.GetCheckedIndex() {
		return errorf(CodeFailedPrecondition, "node %q: checks at index %d are older than those recorded (%d)", c.GetName(), c.GetCheckedIndex(), old.GetCheckedIndex())
	}
	n := proto.Clone(old).(*havenv1.Node)
	n.CheckedIndex = c.GetCheckedIndex()
	n.CannotRun = nil
	for _, r := range c.GetCannotRun() {
		n.CannotRun = append(n.CannotRun, proto.Clone(r).(*havenv1.GroupRefusal))
	}
	n.ModifyIndex = index
	s.nodes[n.GetName()] = n
	return nil
}

// SameRefusals reports whether two lists of refusals are the same, in
// order: a node's report that would not change its record.
func SameRefusals(a, b []*havenv1.GroupRefusal) bool {
	return slices.EqualFunc(a, b, func(x, y *havenv1.GroupRefusal) bool { return proto.Equal(x, y) })
}

// Reads. Returned records are shared and must not be modified.

func (f *FSM) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.index
}

func (f *FSM) Node(name string) *havenv1.Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.nodes[name]
}

// Nodes returns every node sorted by name.
func (f *FSM) Nodes() []*havenv1.Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sorted(f.st.nodes, func(n *havenv1.Node) string { return n.GetName() })
}

func (f *FSM) Group(name string) *havenv1.Group {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.groups[name]
}

// Groups returns every group sorted by name. It copies every pointer;
// a reader that needs one node's groups or one page asks for those
// (GroupsOwnedBy, GroupsAfter).
func (f *FSM) Groups() []*havenv1.Group {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*havenv1.Group, 0, len(f.st.groups))
	f.st.names.Ascend(func(name string) bool {
		out = append(out, f.st.groups[name])
		return true
	})
	return out
}

// GroupsFor returns the groups node has to do with, sorted by name: those
// it owns and those a move in flight brings to it. It costs those groups
// and the kept moves, not every group of the cluster.
func (f *FSM) GroupsFor(node string) []*havenv1.Group {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*havenv1.Group, 0, len(f.st.owned[node]))
	for name := range f.st.owned[node] {
		out = append(out, f.st.groups[name])
	}
	for _, op := range f.st.ops {
		// The kept finished moves outnumber those in flight: rule them
		// out before the lookup (every renewal asks, 80 a second at 100
		// agents).
		if !InFlight(op) || op.GetTarget() != node {
			continue
		}
		if g := f.st.groups[op.GetGroup()]; g != nil && g.GetOwner() != node {
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetSpec().GetName() < out[j].GetSpec().GetName() })
	return out
}

// Owners returns the nodes that own a group, sorted: it costs the nodes,
// not the groups.
func (f *FSM) Owners() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]string, 0, len(f.st.owned))
	for o := range f.st.owned {
		out = append(out, o)
	}
	sort.Strings(out)
	return out
}

// GroupsAfter calls fn with each group whose name sorts after after (every
// group when after is empty), in name order, until fn returns false. It
// costs what it visits, not a copy and a sort of every group as Groups
// does. It holds the FSM's read lock throughout, so fn must be quick and
// must not call the FSM.
func (f *FSM) GroupsAfter(after string, fn func(*havenv1.Group) bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.st.names.AscendGreaterOrEqual(after, func(name string) bool {
		if name == after {
			return true
		}
		return fn(f.st.groups[name])
	})
}

// GroupsChangedAfter calls fn with each group created or changed at an
// index after index, oldest change first, until fn returns false. A
// deleted group is not visited. It costs what it visits, and holds the
// FSM's read lock throughout as GroupsAfter does.
func (f *FSM) GroupsChangedAfter(index uint64, fn func(*havenv1.Group) bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.st.changed.AscendGreaterOrEqual(change{index: index + 1}, func(c change) bool {
		return fn(f.st.groups[c.name])
	})
}

func sorted[T any](m map[string]T, key func(T) string) []T {
	out := make([]T, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}

// Request is the outcome of the command that carried request id, while
// it is remembered (RequestRetention): a write retried after a leader
// change learns from it that its first try was applied, and how.
func (f *FSM) Request(id string) *havenv1.AppliedRequest {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.requests[id]
}

// Snapshot captures the maps; records are immutable, so Persist can encode
// them while Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &snapshot{st: f.st.clone()}, nil
}

func (s *state) clone() *state {
	c := &state{
		index:  s.index,
		nodes:  make(map[string]*havenv1.Node, len(s.nodes)),
		groups: make(map[string]*havenv1.Group, len(s.groups)),
		// names, changed and owned stay nil: a clone is a snapshot, which is only
		// written out (Persist), never read a page or a node at a time.
		requests: make(map[string]*havenv1.AppliedRequest, len(s.requests)),
		order:    append([]string(nil), s.order...),
		disks:    make(map[string]string, len(s.disks)),
		ops:      make(map[string]*havenv1.Operation, len(s.ops)),
		finished: append([]string(nil), s.finished...),
		acl:      s.acl.clone(),
	}
	for k, v := range s.ops {
		c.ops[k] = v
	}
	for k, v := range s.disks {
		c.disks[k] = v
	}
	for k, v := range s.nodes {
		c.nodes[k] = v
	}
	for k, v := range s.groups {
		c.groups[k] = v
	}
	for k, v := range s.requests {
		c.requests[k] = v
	}
	return c
}

// Restore replaces all state with the snapshot's, unless the state is
// already past the snapshot's index (a follower by stream that joined the
// Raft configuration and is sent a snapshot it is ahead of): both are
// prefixes of the same committed log, so the later one holds the other.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := readSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	if st.index >= f.st.index {
		f.st = st
	}
	f.mu.Unlock()
	return nil
}

// WriteSnapshot writes a snapshot of the state to w, as Persist would,
// and returns its index: a member sends it to an agent that follows the
// log by stream and is too far behind for the entries alone.
func (f *FSM) WriteSnapshot(w io.Writer) (uint64, error) {
	f.mu.RLock()
	st := f.st.clone()
	f.mu.RUnlock()
	return st.index, (&snapshot{st: st}).write(w)
}
