package rpcclient

import (
	"context"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// RetryBackoff spaces the attempts of a retried call: an election with the
// default timings takes a few seconds, so the wait grows to a second.
var RetryBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

// WithRetry makes unary calls on a connection retry Unavailable with
// RetryBackoff; see RetryInterceptor.
func WithRetry() grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(RetryInterceptor(RetryBackoff))
}

// requestIDField is the field a write's request carries its idempotency
// key in. The agent applies a command with a given request id once, however
// often it arrives.
const requestIDField = "request_id"

// RetryInterceptor retries a unary call that fails with Unavailable (no
// leader, a leader change, an outcome unknown after leadership was lost, an
// agent shutting down) until it succeeds, fails otherwise, or its context's
// deadline is near; no other code is retried. A call without a deadline is
// made once.
//
// A write, a request with a string field request_id, is retried with the
// same id every time: when the field is empty the interceptor fills it with
// a new UUID once, on a copy (the caller's message is left as it was), so a
// write that was applied before the reply got lost is not applied twice. A
// read, a method named Get* or List* (AIP-131/132), is simply repeated. Any
// other call is made once: nothing says repeating it is harmless.
//
// Only answers from an agent are retried. A call that reached none (the
// address refuses connections) fails at once, as it would without the
// interceptor: a client talks to one address, and waiting out the deadline
// on it would only delay the error.
//
// gRPC's own retry policy (service config retryPolicy) cannot do this: it
// resends the same bytes, so it cannot put a request id into a write that
// has none, and it caps attempts at five rather than at the deadline.
func RetryInterceptor(b backoff.Config) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		deadline, ok := ctx.Deadline()
		if !ok || !retryable(method, req) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		req = WithRequestID(req)
		var p peer.Peer
		opts = append(opts[:len(opts):len(opts)], grpc.Peer(&p))
		var last error // the agent's last Unavailable answer
		for attempt := 0; ; attempt++ {
			p = peer.Peer{}
			err := invoker(ctx, method, req, reply, cc, opts...)
			if last != nil && ctx.Err() == context.DeadlineExceeded {
				// The deadline ran out during a retry (a slow
				// answer, a scheduler stall): the agent's last answer
				// says more than DeadlineExceeded would.
				return last
			}
			if status.Code(err) != codes.Unavailable || p.Addr == nil {
				return err
			}
			last = err
			wait := delay(b, attempt)
			if time.Until(deadline) < wait {
				// The next attempt could not finish in time; the agent's
				// answer says more than DeadlineExceeded would.
				return err
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				if ctx.Err() == context.DeadlineExceeded {
					return err
				}
				return status.FromContextError(ctx.Err()).Err()
			case <-t.C:
			}
		}
	}
}

// retryable reports whether repeating a call is harmless: a write with a
// request id, or a read.
func retryable(method string, req any) bool {
	if m, ok := req.(proto.Message); ok && idField(m) != nil {
		return true
	}
	name := method[strings.LastIndexByte(method, '/')+1:]
	return strings.HasPrefix(name, "Get") || strings.HasPrefix(name, "List")
}

// idField is m's request_id field when it has one of type string.
func idField(m proto.Message) protoreflect.FieldDescriptor {
	fd := m.ProtoReflect().Descriptor().Fields().ByName(requestIDField)
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated {
		return nil
	}
	return fd
}

// WithRequestID returns req with its request_id set: req itself when it
// has one (or no such field), else a copy with a new UUID. The agent that
// forwards a write to the leader uses it too: the first to see a request
// names it.
func WithRequestID(req any) any {
	m, ok := req.(proto.Message)
	if !ok {
		return req
	}
	fd := idField(m)
	if fd == nil || m.ProtoReflect().Get(fd).String() != "" {
		return req
	}
	c := proto.Clone(m)
	c.ProtoReflect().Set(fd, protoreflect.ValueOfString(uuid.NewString()))
	return c
}

// delay is the wait before retry number attempt+1: BaseDelay grown by
// Multiplier per attempt, capped at MaxDelay, then spread by ±Jitter so that
// clients cut off together do not come back together.
func delay(b backoff.Config, attempt int) time.Duration {
	d := float64(b.BaseDelay)
	for i := 0; i < attempt && d < float64(b.MaxDelay); i++ {
		d *= b.Multiplier
	}
	d = min(d, float64(b.MaxDelay))
	d *= 1 + b.Jitter*(2*rand.Float64()-1)
	return time.Duration(max(d, 0))
}
