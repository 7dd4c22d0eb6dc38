package services

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/consensus"
	"github.com/haven-ha/haven/agent/leader"
	"github.com/haven-ha/haven/agent/lease"
	"github.com/haven-ha/haven/fsm"
	"github.com/haven-ha/haven/heartbeat"
	"github.com/haven-ha/haven/placement"
)

func locateN2() (string, string, error) { return "n2", "10.0.0.2:7443", nil }

func locateNone() (string, string, error) { return "", "", errors.New("no leader known") }

// An operator tells a refusal from an outage by the code alone, so every
// kind of domain error must land on its code, wrapped or not, and the
// message must keep what the leader said.
func TestStatus(t *testing.T) {
	passThrough := status.Error(codes.PermissionDenied, "from the leader")
	cases := []struct {
		name     string
		err      error
		locate   Locate
		code     codes.Code
		contains string
	}{
		{"fsm invalid", &fsm.Error{Code: fsm.CodeInvalidArgument, Msg: "spec: bad"}, locateN2, codes.InvalidArgument, "spec: bad"},
		{"fsm not found", &fsm.Error{Code: fsm.CodeNotFound, Msg: `group "web" not found`}, locateN2, codes.NotFound, `group "web" not found`},
		{"fsm exists", &fsm.Error{Code: fsm.CodeAlreadyExists, Msg: `group "web" exists`}, locateN2, codes.AlreadyExists, `group "web" exists`},
		{"fsm precondition", &fsm.Error{Code: fsm.CodeFailedPrecondition, Msg: "stale epoch"}, locateN2, codes.FailedPrecondition, "stale epoch"},
		{"fsm unknown code", &fsm.Error{Code: fsm.Code(99), Msg: "what"}, locateN2, codes.Internal, "what"},
		{"fsm wrapped", fmt.Errorf("apply: %w", &fsm.Error{Code: fsm.CodeNotFound, Msg: "gone"}), locateN2, codes.NotFound, "gone"},
		{"not leader", consensus.ErrNotLeader, locateN2, codes.Unavailable, "not the leader; the leader is n2 at 10.0.0.2:7443"},
		{"not leader, leader's alias", fmt.Errorf("start: %w", leader.ErrNotLeader), locateN2, codes.Unavailable, "the leader is n2 at 10.0.0.2:7443"},
		{"not leader, none known", consensus.ErrNotLeader, locateNone, codes.Unavailable, "no leader: the cluster has no quorum or is electing one (no leader known)"},
		{"outcome unknown", &consensus.OutcomeUnknownError{RequestID: "req-7", Err: raft.ErrLeadershipLost}, locateN2, codes.Unavailable, `retry with request_id "req-7"`},
		{"outcome unknown wrapped", fmt.Errorf("create: %w", &consensus.OutcomeUnknownError{RequestID: "req-8", Err: raft.ErrEnqueueTimeout}), locateN2, codes.Unavailable, `"req-8"`},
		{"shutdown", consensus.ErrShutdown, locateN2, codes.Unavailable, "agent is shutting down"},
		{"gossip key invalid", fmt.Errorf("%w, got 5", heartbeat.ErrInvalidKey), locateN2, codes.InvalidArgument, "got 5"},
		{"gossip plaintext", heartbeat.ErrNotEncrypted, locateN2, codes.FailedPrecondition, "encryption is off"},
		{"gossip key missing", heartbeat.ErrKeyNotInstalled, locateN2, codes.FailedPrecondition, "not installed"},
		{"gossip primary", heartbeat.ErrRemovePrimary, locateN2, codes.FailedPrecondition, "primary key cannot be removed"},
		{"gossip shut down", heartbeat.ErrShutdown, locateN2, codes.Unavailable, "shut down"},
		{"reads not ready", consensus.ErrReadsNotReady, locateN2, codes.Unavailable, "not yet applied"},
		{"lease not ready", lease.ErrNotReady, locateN2, codes.Unavailable, "not a leader ready to grant leases"},
		{"lease unverified", fmt.Errorf("renew: %w", lease.ErrUnverified), locateN2, codes.Unavailable, "renew: leadership could not be verified"},
		{"leader not found", fmt.Errorf("group %q not found: %w", "web", leader.ErrNotFound), locateN2, codes.NotFound, `group "web" not found`},
		{"leader conflict", fmt.Errorf("group %q is stopping: %w", "web", leader.ErrConflict), locateN2, codes.FailedPrecondition, `group "web" is stopping`},
		{"already running", fmt.Errorf("web: %w", placement.ErrAlreadyRunning), locateN2, codes.FailedPrecondition, "already running"},
		{"leader invalid", fmt.Errorf("k: 20 is more than 16: %w", leader.ErrInvalid), locateN2, codes.InvalidArgument, "k: 20 is more than 16"},
		{"placement invalid", fmt.Errorf("unknown node %q: %w", "n9", placement.ErrInvalid), locateN2, codes.InvalidArgument, `unknown node "n9"`},
		{"exhausted", placement.ErrResourceExhausted, locateN2, codes.ResourceExhausted, "resource exhausted"},
		{"no room", &placement.NoRoomError{Unplaced: placement.Unplaced{Group: "web", Reason: "no memory"}}, locateN2, codes.ResourceExhausted, `no node can run group "web": no memory`},
		{"reserve", &placement.ReserveError{Group: "web", K: 1, Already: true}, locateN2, codes.ResourceExhausted, "reserve 1 is already broken"},
		{"site-loss reserve", &placement.ReserveError{Group: "web", K: 1, SiteLoss: true, Node: "a1", Tried: []string{"a1"},
			Breach: placement.Breach{Failed: []string{"a1", "a2"}, Site: "a", Group: "db", Reason: "memory"}}, locateN2, codes.ResourceExhausted,
			`would break reserve 1 and site loss (tried a1): with it on a1, if site a fails (a1,a2), group "db" cannot restart: memory`},
		{"canceled", fmt.Errorf("wait: %w", context.Canceled), locateN2, codes.Canceled, "wait: context canceled"},
		{"deadline", context.DeadlineExceeded, locateN2, codes.DeadlineExceeded, "deadline exceeded"},
		{"anything else", errors.New("disk on fire"), locateN2, codes.Internal, "disk on fire"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Status(c.err, c.locate)
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("Status(%v) = %v: not a status", c.err, err)
			}
			if st.Code() != c.code || !strings.Contains(st.Message(), c.contains) {
				t.Errorf("Status(%v) = %v %q, want %v containing %q", c.err, st.Code(), st.Message(), c.code, c.contains)
			}
		})
	}
	t.Run("nil", func(t *testing.T) {
		if err := Status(nil, locateN2); err != nil {
			t.Errorf("Status(nil) = %v", err)
		}
	})
	t.Run("status passes through", func(t *testing.T) {
		// A forwarded call's answer is already the leader's status: it
		// must not be rewrapped as Internal or re-located.
		if err := Status(passThrough, locateNone); err != passThrough {
			t.Errorf("Status(%v) = %v, want it unchanged", passThrough, err)
		}
	})
}

func TestRequestID(t *testing.T) {
	a, err := RequestID("")
	if err != nil || a == "" {
		t.Fatalf(`RequestID("") = %q, %v`, a, err)
	}
	if b, _ := RequestID(""); b == a {
		t.Errorf("two requests without an id got the same one, %q: their retries would collide", a)
	}
	given := strings.Repeat("r", 128)
	if got, err := RequestID(given); err != nil || got != given {
		t.Errorf("RequestID(128 bytes) = %q, %v: want it kept", got, err)
	}
	_, err = RequestID(strings.Repeat("r", 129))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "request_id: 129 bytes, the limit is 128") {
		t.Errorf("RequestID(129 bytes) = %v, want InvalidArgument naming request_id", err)
	}
}
