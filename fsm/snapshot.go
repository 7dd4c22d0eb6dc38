package fsm

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// snapshotVersion changes when the record layout changes incompatibly.
const snapshotVersion = 1

// maxRecordSize bounds one record when reading, so a corrupt length prefix
// fails cleanly instead of allocating gigabytes.
const maxRecordSize = 16 << 20

type snapshot struct{ st *state }

// Persist writes a header and then one length-delimited record per node,
// group, kept operation, ACL token (and the bootstrap) and remembered
// request, in a deterministic order.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	if _, err := protodelim.MarshalTo(bw, &havenv1.SnapshotHeader{Version: snapshotVersion, Index: s.st.index}); err != nil {
		return err
	}
	put := func(r *havenv1.SnapshotRecord) error {
		_, err := protodelim.MarshalTo(bw, r)
		return err
	}
	for _, n := range sorted(s.st.nodes, func(n *havenv1.Node) string { return n.GetName() }) {
		if err := put(&havenv1.SnapshotRecord{Record: &havenv1.SnapshotRecord_Node{Node: n}}); err != nil {
			return err
		}
	}
	for _, g := range sorted(s.st.groups, func(g *havenv1.Group) string { return g.GetSpec().GetName() }) {
		if err := put(&havenv1.SnapshotRecord{Record: &havenv1.SnapshotRecord_Group{Group: g}}); err != nil {
			return err
		}
	}
	// Moves in flight by id, then the finished ones in the order they
	// finished, so the oldest is forgotten first after a restore too.
	var ops []*havenv1.Operation
	for _, op := range s.st.ops {
		if InFlight(op) {
			ops = append(ops, op)
		}
	}
	sortOps(ops)
	for _, id := range s.st.finished {
		ops = append(ops, s.st.ops[id])
	}
	for _, op := range ops {
		if err := put(&havenv1.SnapshotRecord{Record: &havenv1.SnapshotRecord_Operation{Operation: op}}); err != nil {
			return err
		}
	}
	if s.st.acl.bootstrapIndex != 0 {
		if err := put(&havenv1.SnapshotRecord{Record: &havenv1.SnapshotRecord_AclState{AclState: &havenv1.AclState{BootstrapIndex: s.st.acl.bootstrapIndex}}}); err != nil {
			return err
		}
	}
	for _, t := range sorted(s.st.acl.tokens, func(t *havenv1.AclToken) string { return t.GetAccessorId() }) {
		if err := put(&havenv1.SnapshotRecord{Record: &havenv1.SnapshotRecord_AclToken{AclToken: t}}); err != nil {
			return err
		}
	}
	// Requests in apply order, so pruning after a restore matches.
	for _, id := range s.st.order {
		if err := put(&havenv1.SnapshotRecord{Record: &havenv1.SnapshotRecord_AppliedRequest{AppliedRequest: s.st.requests[id]}}); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func (s *snapshot) Release() {}

func readSnapshot(r io.Reader) (*state, error) {
	br := bufio.NewReader(r)
	opts := protodelim.UnmarshalOptions{MaxSize: maxRecordSize}
	var h havenv1.SnapshotHeader
	if err := opts.UnmarshalFrom(br, &h); err != nil {
		return nil, fmt.Errorf("snapshot header: %w", err)
	}
	if h.GetVersion() != snapshotVersion {
		return nil, fmt.Errorf("snapshot version %d, this agent reads %d", h.GetVersion(), snapshotVersion)
	}
	st := newState()
	st.index = h.GetIndex()
	for {
		var rec havenv1.SnapshotRecord
		err := opts.UnmarshalFrom(br, &rec)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot record: %w", err)
		}
		// A record twice, or a disk of two groups, is something Persist
		// never writes: the snapshot is damaged, and a state built from it
		// would not be the one its replicas hold.
		switch r := rec.Record.(type) {
		case *havenv1.SnapshotRecord_Node:
			if _, dup := st.nodes[r.Node.GetName()]; dup {
				return nil, fmt.Errorf("snapshot record: node %q twice", r.Node.GetName())
			}
			st.nodes[r.Node.GetName()] = r.Node
		case *havenv1.SnapshotRecord_Group:
			name := r.Group.GetSpec().GetName()
			if _, dup := st.groups[name]; dup {
				return nil, fmt.Errorf("snapshot record: group %q twice", name)
			}
			placeDisks(r.Group.GetSpec())
			st.setGroup(r.Group)
			for _, d := range DiskPaths(r.Group.GetSpec()) {
				if other, dup := st.disks[d]; dup && other != name {
					return nil, fmt.Errorf("snapshot record: disk %q belongs to groups %q and %q", d, other, name)
				}
				st.disks[d] = name
			}
		case *havenv1.SnapshotRecord_Operation:
			if _, dup := st.ops[r.Operation.GetId()]; dup {
				return nil, fmt.Errorf("snapshot record: operation %q twice", r.Operation.GetId())
			}
			st.ops[r.Operation.GetId()] = r.Operation
			if !InFlight(r.Operation) {
				st.finished = append(st.finished, r.Operation.GetId())
			}
		case *havenv1.SnapshotRecord_AppliedRequest:
			if _, dup := st.requests[r.AppliedRequest.GetRequestId()]; dup {
				return nil, fmt.Errorf("snapshot record: request %q twice", r.AppliedRequest.GetRequestId())
			}
			st.requests[r.AppliedRequest.GetRequestId()] = r.AppliedRequest
			st.order = append(st.order, r.AppliedRequest.GetRequestId())
		case *havenv1.SnapshotRecord_AclState:
			st.acl.bootstrapIndex = r.AclState.GetBootstrapIndex()
		case *havenv1.SnapshotRecord_AclToken:
			st.acl.put(r.AclToken)
		default:
			return nil, fmt.Errorf("snapshot record of unknown type %T: written by a newer agent", rec.Record)
		}
	}
	for name, g := range st.groups {
		if id := g.GetOperation(); id != "" {
			if op := st.ops[id]; op == nil || !InFlight(op) || op.GetGroup() != name {
				return nil, fmt.Errorf("snapshot: group %q is moving by operation %q, which is not its move in flight", name, id)
			}
		}
	}
	return st, nil
}
