package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/internal/waitfor"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// result is what a call made in another goroutine returned.
type result[T any] struct {
	v   T
	err error
}

// async runs call in a goroutine; receive its result from the channel.
func async[T any](call func() (T, error)) <-chan result[T] {
	ch := make(chan result[T], 1)
	go func() {
		v, err := call()
		ch <- result[T]{v, err}
	}()
	return ch
}

// asyncErr is async for a call that returns only an error.
func asyncErr(call func() error) <-chan result[struct{}] {
	return async(func() (struct{}, error) { return struct{}{}, call() })
}

func await[T any](t *testing.T, ch <-chan result[T]) (T, error) {
	t.Helper()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(testTimeout):
		t.Fatal("call did not return")
		var zero T
		return zero, nil
	}
}

func TestDialNegotiatesBeforeReturning(t *testing.T) {
	f := newFakeQMP(t)
	f.negotiate = false
	f.start()
	ctx := testContext(t)

	dialed := async(func() (*Client, error) { return Dial(ctx, f.path, testLogger(t)) })
	r := f.next()
	if r.Execute != "qmp_capabilities" || r.Arguments != nil {
		t.Fatalf("first command: %s %s, want qmp_capabilities without arguments", r.Execute, r.Arguments)
	}
	select {
	case <-dialed:
		t.Fatal("Dial returned before capabilities negotiation was answered")
	default:
	}
	f.reply(r, struct{}{})
	c, err := await(t, dialed)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := Version{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7+deb12u18+b3"}
	if c.Version() != want {
		t.Errorf("version %+v, want %+v", c.Version(), want)
	}
}

func TestDialFailsWhenNegotiationIsRefused(t *testing.T) {
	f := newFakeQMP(t)
	f.negotiate = false
	f.start()
	ctx := testContext(t)

	dialed := async(func() (*Client, error) { return Dial(ctx, f.path, testLogger(t)) })
	f.replyError(f.next(), "CommandNotFound", "Capabilities negotiation is already complete")
	_, err := await(t, dialed)
	var qerr *Error
	if !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" {
		t.Fatalf("Dial: %v, want a CommandNotFound *Error", err)
	}
}

// QEMU accepts a second client of its socket but never greets it.
func TestDialWithoutGreetingEndsWithContext(t *testing.T) {
	f := newFakeQMP(t)
	f.greeting = ""
	f.start()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()

	_, err := Dial(ctx, f.path, testLogger(t))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: %v, want DeadlineExceeded", err)
	}
}

func TestDialRejectsAServerThatIsNotQMP(t *testing.T) {
	f := newFakeQMP(t)
	f.greeting = `{"hello": "world"}`
	f.start()

	_, err := Dial(testContext(t), f.path, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Fatalf("Dial: %v, want a greeting error", err)
	}
}

func TestDialMissingSocket(t *testing.T) {
	_, err := Dial(testContext(t), filepath.Join(t.TempDir(), "none.qmp"), nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Dial: %v, want ErrNotExist", err)
	}
}

func TestConcurrentCallsMatchOutOfOrderRepliesByID(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	type echo struct {
		N int `json:"n"`
	}
	const calls = 5
	var results [calls]<-chan result[echo]
	for i := range calls {
		results[i] = async(func() (echo, error) {
			var e echo
			err := c.Execute(ctx, "echo", echo{i}, &e)
			return e, err
		})
	}
	reqs := make([]fakeRequest, calls)
	for i := range reqs {
		reqs[i] = f.next()
	}
	// Replies in the reverse order of arrival, each echoing its args.
	for i := len(reqs) - 1; i >= 0; i-- {
		var args echo
		if err := json.Unmarshal(reqs[i].Arguments, &args); err != nil {
			t.Fatal(err)
		}
		f.reply(reqs[i], args)
	}
	for i := range results {
		e, err := await(t, results[i])
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if e.N != i {
			t.Errorf("call %d got the reply to call %d", i, e.N)
		}
	}
}

func TestErrorReplyIsAnError(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	done := asyncErr(func() error { return c.Execute(ctx, "device_del", map[string]string{"id": "d9"}, nil) })
	f.replyError(f.next(), "DeviceNotFound", "Device 'd9' not found")
	_, err := await(t, done)
	var qerr *Error
	if !errors.As(err, &qerr) {
		t.Fatalf("Execute: %v, want a *Error", err)
	}
	if qerr.Class != "DeviceNotFound" || qerr.Desc != "Device 'd9' not found" {
		t.Errorf("error %+v", qerr)
	}
	if errors.Is(err, ErrClosed) {
		t.Error("a refused command reads as a closed connection")
	}

	// The connection is still good.
	done = asyncErr(func() error { return c.Execute(ctx, "cont", nil, nil) })
	f.reply(f.next(), struct{}{})
	if _, err := await(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestEventsInterleavedWithReplies(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	stops := c.Subscribe(EventStop, EventResume)
	defer stops.Close()
	all := c.Subscribe()
	defer all.Close()

	var status StatusInfo
	done := asyncErr(func() error { return c.Execute(ctx, "query-status", nil, &status) })
	r := f.next()
	t0 := time.Unix(1796071303, 909478000)
	f.event(EventStop, nil, t0)
	f.event(EventDeviceDeleted, DeviceDeletedData{Path: "/machine/peripheral/d1/virtio-backend"}, t0.Add(time.Millisecond))
	f.reply(r, StatusInfo{Status: StatusPaused})
	f.event(EventResume, nil, t0.Add(2*time.Millisecond))

	if _, err := await(t, done); err != nil {
		t.Fatal(err)
	}
	if status.Status != StatusPaused {
		t.Errorf("status %q", status.Status)
	}
	for _, want := range []string{EventStop, EventResume} {
		e, err := stops.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e.Name != want {
			t.Errorf("filtered subscription: %s, want %s", e.Name, want)
		}
	}
	for i, want := range []string{EventStop, EventDeviceDeleted, EventResume} {
		e, err := all.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e.Name != want {
			t.Errorf("subscription to all: %s, want %s", e.Name, want)
		}
		if at := t0.Add(time.Duration(i) * time.Millisecond); !e.Timestamp.Equal(at) {
			t.Errorf("%s at %v, want %v", e.Name, e.Timestamp, at)
		}
	}
}

// A subscriber that does not read neither loses events nor holds up
// replies to others.
func TestSlowSubscriberLosesNothingAndBlocksNoOne(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	slow := c.Subscribe(EventMigrationPass)
	defer slow.Close()

	const events = 2000
	done := asyncErr(func() error { return c.Execute(ctx, "query-migrate", nil, nil) })
	r := f.next()
	for i := range events {
		f.event(EventMigrationPass, map[string]int{"pass": i}, time.Now())
	}
	f.reply(r, struct{}{})
	if _, err := await(t, done); err != nil {
		t.Fatal(err)
	}

	for i := range events {
		e, err := slow.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Pass int `json:"pass"`
		}
		if err := e.Decode(&d); err != nil {
			t.Fatal(err)
		}
		if d.Pass != i {
			t.Fatalf("event %d is pass %d", i, d.Pass)
		}
	}
}

func TestWaitSkipsEventsThatDoNotMatch(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	sub := c.Subscribe(EventDeviceDeleted)
	defer sub.Close()
	// virtio-blk's first event names its backend, not the device.
	f.event(EventDeviceDeleted, DeviceDeletedData{Path: "/machine/peripheral/d1/virtio-backend"}, time.Now())
	f.event(EventDeviceDeleted, DeviceDeletedData{Device: "d2", Path: "/machine/peripheral/d2"}, time.Now())
	f.event(EventDeviceDeleted, DeviceDeletedData{Device: "d1", Path: "/machine/peripheral/d1"}, time.Now())

	e, err := sub.Wait(ctx, DeviceDeleted("d1"))
	if err != nil {
		t.Fatal(err)
	}
	var d DeviceDeletedData
	if err := e.Decode(&d); err != nil || d.Path != "/machine/peripheral/d1" {
		t.Fatalf("matched %s (%v)", e.Data, err)
	}

	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := sub.Wait(waitCtx, DeviceDeleted("d1")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with no event left: %v, want DeadlineExceeded", err)
	}
}

func TestCancelledCallDropsItsLateReply(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	type who struct {
		Who string `json:"who"`
	}
	slowCtx, cancel := context.WithCancel(ctx)
	slow := asyncErr(func() error { return c.Execute(slowCtx, "slow", nil, &who{}) })
	r1 := f.next()
	cancel()
	if _, err := await(t, slow); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v, want Canceled", err)
	}

	// A call whose ctx has already ended sends nothing.
	if err := c.Execute(slowCtx, "never", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("call with an ended ctx: %v, want Canceled", err)
	}

	fast := async(func() (who, error) {
		var w who
		err := c.Execute(ctx, "fast", nil, &w)
		return w, err
	})
	r2 := f.next()
	if r2.Execute != "fast" {
		t.Fatalf("fake received %s, want fast", r2.Execute)
	}
	f.reply(r1, who{"slow"})
	f.reply(r2, who{"fast"})
	w, err := await(t, fast)
	if err != nil {
		t.Fatal(err)
	}
	if w.Who != "fast" {
		t.Fatalf("the next call got the reply of %q", w.Who)
	}
}

func TestServerClosingFailsPendingAndFutureCalls(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	sub := c.Subscribe()
	defer sub.Close()
	pending := asyncErr(func() error { return c.Execute(ctx, "quit", nil, nil) })
	f.next()
	f.event(EventShutdown, ShutdownData{Reason: "host-qmp-quit"}, time.Now())
	f.hangUp()

	_, err := await(t, pending)
	if !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Fatalf("pending call: %v, want ErrClosed caused by EOF", err)
	}
	select {
	case <-c.Done():
	case <-time.After(testTimeout):
		t.Fatal("Done not closed")
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err: %v", c.Err())
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("call after the end: %v, want ErrClosed", err)
	}

	// The event sent before the end is delivered, then the end.
	e, err := sub.Next(ctx)
	if err != nil || e.Name != EventShutdown {
		t.Fatalf("Next: %v %v, want SHUTDOWN", e.Name, err)
	}
	if _, err := sub.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after the end: %v, want ErrClosed", err)
	}
	if _, ok := <-sub.C(); ok {
		t.Fatal("C still open after the end")
	}
	late := c.Subscribe()
	defer late.Close()
	if _, err := late.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next on a subscription made after the end: %v, want ErrClosed", err)
	}
}

func TestQuitTakesTheSocketsEndAsDone(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()

	quit := asyncErr(func() error { return c.Quit(testContext(t)) })
	f.next()
	f.hangUp()
	if _, err := await(t, quit); err != nil {
		t.Fatalf("Quit: %v", err)
	}
}

func TestCloseFailsPendingCalls(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	sub := c.Subscribe()
	pending := asyncErr(func() error { return c.Execute(ctx, "query-status", nil, nil) })
	f.next()
	c.Close()
	if _, err := await(t, pending); !errors.Is(err, ErrClosed) {
		t.Fatalf("pending call: %v, want ErrClosed", err)
	}
	if !strings.Contains(c.Err().Error(), "closed by the client") {
		t.Errorf("Err: %v", c.Err())
	}
	if _, err := sub.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next: %v, want ErrClosed", err)
	}
	sub.Close()
	sub.Close()
	c.Close()
}

func TestClosedSubscriptionEnds(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	sub := c.Subscribe()
	f.event(EventStop, nil, time.Now())
	sub.Close()
	for range sub.C() {
		// Events queued before Close may or may not come; C must close.
	}
	if _, err := sub.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next: %v, want ErrClosed", err)
	}
	// The connection is not affected.
	done := asyncErr(func() error { return c.Stop(ctx) })
	f.reply(f.next(), struct{}{})
	if _, err := await(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestFileDescriptorPassing(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	path := filepath.Join(t.TempDir(), "state")
	file, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()

	done := asyncErr(func() error { return c.Getfd(ctx, "save", file) })
	r := f.next()
	if r.Execute != "getfd" || string(r.Arguments) != `{"fdname":"save"}` {
		t.Fatalf("command %s %s", r.Execute, r.Arguments)
	}
	if len(r.Files) != 1 {
		t.Fatalf("%d descriptors received, want 1", len(r.Files))
	}
	// The descriptor is the file's: what the fake writes through it is
	// in the file.
	if _, err := r.Files[0].WriteString("saved by qemu"); err != nil {
		t.Fatal(err)
	}
	r.Files[0].Close()
	f.reply(r, struct{}{})
	if _, err := await(t, done); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "saved by qemu" {
		t.Fatalf("file holds %q", got)
	}
	// Our descriptor is still usable.
	if _, err := file.WriteString("!"); err != nil {
		t.Fatal(err)
	}
}

// Commands with descriptors go one at a time: QEMU would close an
// unclaimed descriptor when the next one arrives.
func TestCommandsWithDescriptorsAreSerialised(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	file, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	first := asyncErr(func() error { return c.Getfd(ctx, "a", file) })
	r1 := f.next()
	second := asyncErr(func() error { return c.Getfd(ctx, "b", file) })
	// A command without a descriptor is not held up meanwhile.
	other := asyncErr(func() error { return c.Execute(ctx, "query-status", nil, nil) })
	r := f.next()
	if r.Execute != "query-status" {
		t.Fatalf("%s sent while getfd a awaits its reply", r.Execute)
	}
	f.reply(r, struct{}{})
	if _, err := await(t, other); err != nil {
		t.Fatal(err)
	}
	for _, file := range r1.Files {
		file.Close()
	}
	f.reply(r1, struct{}{})
	if _, err := await(t, first); err != nil {
		t.Fatal(err)
	}
	r2 := f.next()
	if string(r2.Arguments) != `{"fdname":"b"}` || len(r2.Files) != 1 {
		t.Fatalf("second getfd: %s with %d descriptors", r2.Arguments, len(r2.Files))
	}
	r2.Files[0].Close()
	f.reply(r2, struct{}{})
	if _, err := await(t, second); err != nil {
		t.Fatal(err)
	}
}

// A write that QEMU stops reading in the middle of is cut off by ctx, and
// the half-sent command ends the connection.
func TestStuckWriteIsCutOffByContext(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	if err := c.Execute(ctx, "stall-reader", nil, nil); err != nil {
		t.Fatal(err)
	}
	cut, cancel := context.WithCancel(ctx)
	defer cancel()
	big := map[string]string{"blob": strings.Repeat("x", 4<<20)} // more than both socket buffers
	done := asyncErr(func() error { return c.Execute(cut, "blockdev-add", big, nil) })
	waitfor.Cond(t, testTimeout, "part of the command to reach the fake", func() bool { return f.unread() > 0 })
	cancel()
	if _, err := await(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute: %v, want Canceled", err)
	}
	select {
	case <-c.Done():
	case <-time.After(testTimeout):
		t.Fatal("a half-sent command left the connection up")
	}
	if !errors.Is(c.Err(), ErrClosed) || !strings.Contains(c.Err().Error(), "cut off") {
		t.Errorf("Err: %v", c.Err())
	}
}

func TestMigrateSetParametersSendsOnlyWhatIsSet(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	done := asyncErr(func() error {
		return c.MigrateSetParameters(ctx, MigrationParameters{
			MaxBandwidth:  new(int64(1 << 30)),
			DowntimeLimit: new(int64(0)), // zero is a value, not absence
		})
	})
	r := f.next()
	if want := `{"max-bandwidth":1073741824,"downtime-limit":0}`; string(r.Arguments) != want {
		t.Errorf("arguments %s, want %s", r.Arguments, want)
	}
	f.reply(r, struct{}{})
	if _, err := await(t, done); err != nil {
		t.Fatal(err)
	}

	done = asyncErr(func() error {
		return c.MigrateSetCapabilities(ctx, map[string]bool{CapReturnPath: true, CapEvents: true, CapMultifd: false})
	})
	r = f.next()
	want := `{"capabilities":[{"capability":"events","state":true},{"capability":"multifd","state":false},{"capability":"return-path","state":true}]}`
	if string(r.Arguments) != want {
		t.Errorf("arguments %s, want %s", r.Arguments, want)
	}
	f.reply(r, struct{}{})
	if _, err := await(t, done); err != nil {
		t.Fatal(err)
	}
}

// Many goroutines calling at once, with events flowing, under -race.
func TestManyConcurrentCallers(t *testing.T) {
	f := newFakeQMP(t)
	f.start()
	c := f.dial()
	ctx := testContext(t)

	const callers, calls = 8, 50
	sub := c.Subscribe()
	defer sub.Close()
	go func() {
		for range callers * calls {
			select {
			case r := <-f.reqs:
				f.event("TICK", nil, time.Now())
				f.reply(r, json.RawMessage(r.Arguments))
			case <-f.stopped:
				return
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Go(func() {
			for j := range calls {
				arg := fmt.Sprintf("%d-%d", i, j)
				var got string
				if err := c.Execute(ctx, "echo", arg, &got); err != nil {
					errs <- err
					return
				}
				if got != arg {
					errs <- fmt.Errorf("sent %s, got %s", arg, got)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for range callers * calls {
		if _, err := sub.Next(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
