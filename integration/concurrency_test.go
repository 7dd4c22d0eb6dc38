package integration

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

var (
	concurrencySeed     = flag.Int64("concurrency.seed", 0, "seed of the concurrent-clients test (0: from the clock; the test prints it)")
	concurrencyDuration = flag.Duration("concurrency.duration", 25*time.Second, "how long the concurrent clients send requests (make concurrency runs it longer)")
	concurrencyClients  = flag.Int("concurrency.clients", 20, "how many concurrent clients send requests")
)

const (
	// A request is tried this many times, always with the same request id,
	// before its outcome is given up as unknown.
	concAttempts    = 8
	concAttemptTime = 3 * time.Second
	concBackoff     = 50 * time.Millisecond
	concMaxBackoff  = time.Second
)

// TestConcurrentClientsLinearizable: concurrent clients (twenty unless
// -concurrency.clients says otherwise) create, start, stop,
// delete and read groups of their own through random agents of a
// three-node cluster whose leader is SIGKILLed and restarted half way. The
// history of requests and answers must be linearizable against a model of
// each group's existence and desired state (checked with porcupine): no
// acknowledged stop or start lost, no deleted group back, no group created
// twice. Afterwards every agent holds the same groups, every group reaches
// the state it should be in, and the invariant checker finds nothing.
//
// A request that never gets a definite answer is retried with its request
// id and, when the retries run out, enters the history with an unknown
// outcome: the model lets it take effect at any point after it was sent,
// or never. The client schedule and the crash are reproducible from the
// printed seed (the timing of a real cluster is not).
func TestConcurrentClientsLinearizable(t *testing.T) {
	runConcurrency(t, *concurrencyClients, *concurrencyDuration)
}

// runConcurrency is one run of clients against a new three-node cluster
// built with opts, checked as TestConcurrentClientsLinearizable says; it
// returns the run, whose stats hold what the clients measured.
func runConcurrency(t *testing.T, clientCount int, duration time.Duration, opts ...option) *concRun {
	seed := *concurrencySeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("concurrency seed %d (rerun with -args -concurrency.seed=%d)", seed, seed)
	c := newCluster(t, opts...)
	c.startN(3)
	if c.nodes[0].cfg.ACL.Enabled {
		c.bootstrapACL(30 * time.Second)
	}
	c.leader(30 * time.Second)

	r := &concRun{t: t, c: c, seed: seed, t0: time.Now(), finalClient: clientCount, stats: newLoadStats()}
	r.down.Store(-1)
	end := time.Now().Add(duration)
	clients := make([]*concClient, clientCount)
	var wg sync.WaitGroup
	// Should the test end early, the clients stop before the cluster does.
	t.Cleanup(func() {
		r.quit.Store(true)
		wg.Wait()
	})
	for i := range clients {
		clients[i] = r.newClient(i, rand.New(rand.NewSource(seed+int64(i)+1)))
		wg.Go(func() { clients[i].run(end) })
	}

	// Half way: SIGKILL the leader; once the others have elected one, start
	// it again.
	time.Sleep(duration / 2)
	victim := c.leader(30 * time.Second)
	r.victim = victim.name
	r.down.Store(int32(slices.Index(c.nodes, victim)))
	r.killedAt = r.now()
	t.Logf("+%s: SIGKILL the leader %s", ms(r.killedAt), victim.name)
	victim.kill()
	// Down until the others have elected a leader among themselves: the
	// clients meet the election, then a cluster that lost its old leader.
	next := c.leader(30 * time.Second)
	t.Logf("+%s: %s leads", ms(r.now()), next.name)
	victim.start()
	r.restartedAt = r.now()
	r.down.Store(-1)
	t.Logf("+%s: %s started again", ms(r.restartedAt), victim.name)
	wg.Wait()
	r.stats.elapsed = time.Since(r.t0)
	t.Logf("+%s: clients done", ms(r.now()))

	if len(r.unexpected) > 0 {
		t.Fatalf("harness error, not a finding: answers the test does not expect:\n  %s", strings.Join(r.unexpected, "\n  "))
	}
	var history []porcupine.Operation
	var names []string
	for _, cl := range clients {
		history = append(history, cl.ops...)
		names = append(names, cl.names...)
	}
	sort.Strings(names)
	leader := c.leader(30 * time.Second)
	history = append(history, r.finalReads(leader, names)...)
	r.closeHistory(history)
	r.checkLinearizable(history)
	r.agents(30 * time.Second)
	running := r.settled(leader, 45*time.Second)
	c.checkInvariants(running)
	return r
}

// The model: per group, whether it exists, whether it should run
// (desired RUN), and which incarnation it is (every create sends a spec
// labelled with a number of its own, so a group created twice shows).

type concOp uint8

const (
	opCreate concOp = iota
	opStart
	opStop
	opDelete
	opGet
)

func (o concOp) String() string {
	return [...]string{"create", "start", "stop", "delete", "get"}[o]
}

type concResult uint8

const (
	resOK concResult = iota
	resNotFound
	resExists
	// Refused by a rule (FailedPrecondition, ResourceExhausted): no change.
	resRefused
	// No definite answer after every retry: applied or not.
	resUnknown
)

func (r concResult) String() string {
	return [...]string{"ok", "NotFound", "AlreadyExists", "refused", "unknown"}[r]
}

type groupIn struct {
	op   concOp
	name string
	inc  int // create: the incarnation its spec carries
}

type groupOut struct {
	res concResult
	run bool // get: the desired state read is RUN
	inc int  // get: the incarnation read
}

type groupState struct {
	exists bool
	run    bool
	inc    int
}

func (s groupState) String() string {
	switch {
	case !s.exists:
		return "absent"
	case s.run:
		return fmt.Sprintf("#%d RUN", s.inc)
	default:
		return fmt.Sprintf("#%d STOPPED", s.inc)
	}
}

// groupStep is the sequential specification: the states a group can be in
// after the operation, none when the answer is impossible from s.
func groupStep(s groupState, in groupIn, out groupOut) []groupState {
	absent := groupState{}
	same := []groupState{s}
	switch {
	case out.res == resNotFound && in.op != opCreate:
		if s.exists {
			return nil
		}
		return same
	case in.op == opCreate:
		created := groupState{exists: true, inc: in.inc}
		switch out.res {
		case resOK:
			if !s.exists {
				return []groupState{created}
			}
		case resExists:
			if s.exists {
				return same
			}
		case resRefused: // admission control: nothing created
			if !s.exists {
				return same
			}
		case resUnknown:
			if !s.exists {
				return []groupState{s, created}
			}
			return same
		}
		return nil
	case in.op == opGet:
		if out.res == resOK && s.exists && s.run == out.run && s.inc == out.inc {
			return same
		}
		return nil
	}
	if out.res == resExists {
		return nil
	}
	if !s.exists {
		if out.res == resUnknown {
			return same
		}
		return nil
	}
	// The group exists; start, stop or delete.
	next := s
	switch in.op {
	case opStart:
		next.run = true
	case opStop:
		next.run = false
	case opDelete:
		if s.run {
			// Only a group that should not run can go; a refusal or
			// an unknown outcome changes nothing.
			if out.res == resOK {
				return nil
			}
			return same
		}
		next = absent
	}
	switch out.res {
	case resOK:
		return []groupState{next}
	case resRefused:
		return same
	default: // resUnknown
		return []groupState{s, next}
	}
}

func (in groupIn) String() string {
	if in.op == opCreate {
		return fmt.Sprintf("create %s #%d", in.name, in.inc)
	}
	return in.op.String() + " " + in.name
}

func describeOp(in groupIn, out groupOut) string {
	if in.op == opGet && out.res == resOK {
		d := "STOPPED"
		if out.run {
			d = "RUN"
		}
		return fmt.Sprintf("%s -> #%d %s", in, out.inc, d)
	}
	return fmt.Sprintf("%s -> %s", in, out.res)
}

var groupModel = (&porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		for _, op := range history {
			name := op.Input.(groupIn).name
			by[name] = append(by[name], op)
		}
		names := make([]string, 0, len(by))
		for n := range by {
			names = append(names, n)
		}
		sort.Strings(names)
		out := make([][]porcupine.Operation, 0, len(names))
		for _, n := range names {
			out = append(out, by[n])
		}
		return out
	},
	Init: func() []any { return []any{groupState{}} },
	Step: func(state, input, output any) []any {
		var out []any
		for _, s := range groupStep(state.(groupState), input.(groupIn), output.(groupOut)) {
			out = append(out, s)
		}
		return out
	},
	Hash: func(state any) uint64 {
		s := state.(groupState)
		h := uint64(s.inc) << 2
		if s.exists {
			h |= 1
		}
		if s.run {
			h |= 2
		}
		return h
	},
	DescribeOperation:         func(in, out any) string { return describeOp(in.(groupIn), out.(groupOut)) },
	DescribeState:             func(s any) string { return s.(groupState).String() },
	DescribeOperationMetadata: func(m any) string { return m.(*opInfo).String() },
}).ToModel()

// opInfo is what the history keeps about an operation beside its input
// and output: for the failure report, not for the check.
type opInfo struct {
	client   int
	reqID    string
	attempts int
	via      string     // the agent that gave the last answer
	code     codes.Code // of the last answer
	msg      string
	final    bool
	// The group as the answer showed it.
	found            bool
	state            havenv1.GroupState
	reason, owner    string
	epoch, modifyIdx uint64
	desired          havenv1.DesiredState // as sent, maybe unspecified
	// Reads: the agent that answered and whether it said the answer was
	// verified by the leader (ReadMeta.consistent).
	answeredBy string
	verified   bool
	// Reads the server did not verify: stale when the copy read is older
	// than a write acknowledged before the read was sent (set by
	// diagnose).
	stale bool
}

func (i *opInfo) String() string {
	var b strings.Builder
	if i.final {
		b.WriteString("final read")
	} else {
		fmt.Fprintf(&b, "req %s", i.reqID)
	}
	fmt.Fprintf(&b, " via %s, %d attempt", i.via, i.attempts)
	if i.attempts != 1 {
		b.WriteString("s")
	}
	if i.code != codes.OK {
		fmt.Fprintf(&b, ", last: %s %q", i.code, trim(i.msg, 90))
	}
	if i.found {
		fmt.Fprintf(&b, "; %s", strings.TrimPrefix(i.state.String(), "GROUP_STATE_"))
		if i.owner != "" {
			fmt.Fprintf(&b, " on %s", i.owner)
		}
		fmt.Fprintf(&b, " epoch %d idx %d", i.epoch, i.modifyIdx)
		if i.desired != havenv1.DesiredState_DESIRED_STATE_UNSPECIFIED {
			fmt.Fprintf(&b, " desired %s", strings.TrimPrefix(i.desired.String(), "DESIRED_STATE_"))
		}
		if i.reason != "" {
			fmt.Fprintf(&b, " (%s)", trim(i.reason, 60))
		}
	}
	return b.String()
}

func trim(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// desiredOf is a group's desired state; a server that does not set it
// yet has it follow the observed state.
func desiredOf(g *havenv1.Group) havenv1.DesiredState {
	if d := g.GetDesired(); d != havenv1.DesiredState_DESIRED_STATE_UNSPECIFIED {
		return d
	}
	switch g.GetState() {
	case havenv1.GroupState_GROUP_STATE_STARTING, havenv1.GroupState_GROUP_STATE_ONLINE:
		return havenv1.DesiredState_DESIRED_STATE_RUN
	}
	return havenv1.DesiredState_DESIRED_STATE_STOPPED
}

func incarnationOf(g *havenv1.Group) int {
	n, err := strconv.Atoi(g.GetSpec().GetLabels()["incarnation"])
	if err != nil {
		return -1
	}
	return n
}

// concSpec is a small VM group. Every incarnation of a name uses the same
// disk and VM names, as an operator who deletes a group and creates it
// again over its existing disk does: epochs continue above the old ones,
// so the disk takes the new group's claims.
func concSpec(name string, inc int) *havenv1.GroupSpec {
	return &havenv1.GroupSpec{
		Name:   name,
		Labels: map[string]string{"incarnation": strconv.Itoa(inc)},
		Resources: []*havenv1.Resource{
			{Name: "config", Kind: havenv1.ResourceKind_RESOURCE_KIND_CONFIG},
			{Name: "disk0", Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK, Disk: &havenv1.DiskSpec{Path: fmt.Sprintf("disks/%s.img", name), SizeBytes: 16 << 20}},
			{Name: "vm", Kind: havenv1.ResourceKind_RESOURCE_KIND_VM, DependsOn: []string{"config", "disk0"}, Vm: &havenv1.VmSpec{Vcpus: 1, MemoryBytes: 64 << 20}},
		},
	}
}

// concRun is one run: the cluster, the clock of the history, and what the
// clients found that is no part of it.
type concRun struct {
	t    *testing.T
	c    *cluster
	seed int64
	t0   time.Time
	// down is the index of the node being killed, -1 when all run.
	down                  atomic.Int32
	victim                string
	killedAt, restartedAt int64

	mu         sync.Mutex
	unexpected []string
	// The server left desired unset in some answer (derived from state).
	derived atomic.Bool
	quit    atomic.Bool
	// finalClient is the client id of the final reads, after the others'.
	finalClient int
	stats       *loadStats
}

func (r *concRun) now() int64 { return time.Since(r.t0).Nanoseconds() }

func ms(ns int64) string { return fmt.Sprintf("%.3fs", float64(ns)/1e9) }

type rpc func(ctx context.Context, api havenv1.ClusterServiceClient) (*havenv1.Group, *havenv1.ReadMeta, error)

// do sends one request until it gets a definite answer, at most
// concAttempts times, to the agent pick chooses each time.
func (r *concRun) do(in groupIn, info *opInfo, pick func() *node, call rpc) groupOut {
	backoff := concBackoff
	for attempt := 1; attempt <= concAttempts && (attempt == 1 || !r.quit.Load()); attempt++ {
		n := pick()
		ctx, cancel := context.WithTimeout(context.Background(), concAttemptTime)
		g, meta, err := call(ctx, n.api())
		cancel()
		info.attempts, info.via, info.code, info.msg = attempt, n.name, status.Code(err), status.Convert(err).Message()
		if !info.final {
			r.stats.attempt(info.code)
		}
		switch info.code {
		case codes.OK:
			if g == nil && in.op != opDelete {
				r.unexpectedf("%s via %s: OK without a group", in, n.name)
				return groupOut{res: resUnknown}
			}
			if g != nil {
				info.found = true
				info.state, info.reason, info.owner = g.GetState(), g.GetStateReason(), g.GetOwner()
				info.epoch, info.modifyIdx, info.desired = g.GetEpoch(), g.GetModifyIndex(), g.GetDesired()
				if g.GetDesired() == havenv1.DesiredState_DESIRED_STATE_UNSPECIFIED {
					r.derived.Store(true)
				}
			}
			if in.op != opGet {
				return groupOut{res: resOK}
			}
			info.answeredBy, info.verified = meta.GetAnsweredBy(), meta.GetConsistent()
			return groupOut{res: resOK, run: desiredOf(g) == havenv1.DesiredState_DESIRED_STATE_RUN, inc: incarnationOf(g)}
		case codes.NotFound:
			return groupOut{res: resNotFound}
		case codes.AlreadyExists:
			return groupOut{res: resExists}
		case codes.FailedPrecondition, codes.ResourceExhausted:
			if in.op != opGet {
				return groupOut{res: resRefused}
			}
		case codes.Unavailable, codes.DeadlineExceeded, codes.Internal, codes.Unknown, codes.Aborted:
			time.Sleep(backoff)
			backoff = min(2*backoff, concMaxBackoff)
			continue
		}
		r.unexpectedf("%s (request %s) via %s: %v", in, info.reqID, n.name, err)
		return groupOut{res: resUnknown}
	}
	return groupOut{res: resUnknown}
}

func (r *concRun) unexpectedf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unexpected = append(r.unexpected, fmt.Sprintf(format, args...))
}

func callFor(in groupIn, reqID string) rpc {
	switch in.op {
	case opCreate:
		spec := concSpec(in.name, in.inc)
		return func(ctx context.Context, api havenv1.ClusterServiceClient) (*havenv1.Group, *havenv1.ReadMeta, error) {
			resp, err := api.CreateGroup(ctx, &havenv1.CreateGroupRequest{Spec: spec, RequestId: reqID})
			return resp.GetGroup(), nil, err
		}
	case opStart:
		return func(ctx context.Context, api havenv1.ClusterServiceClient) (*havenv1.Group, *havenv1.ReadMeta, error) {
			resp, err := api.StartGroup(ctx, &havenv1.StartGroupRequest{Name: in.name, RequestId: reqID})
			return resp.GetGroup(), nil, err
		}
	case opStop:
		return func(ctx context.Context, api havenv1.ClusterServiceClient) (*havenv1.Group, *havenv1.ReadMeta, error) {
			resp, err := api.StopGroup(ctx, &havenv1.StopGroupRequest{Name: in.name, RequestId: reqID})
			return resp.GetGroup(), nil, err
		}
	case opDelete:
		return func(ctx context.Context, api havenv1.ClusterServiceClient) (*havenv1.Group, *havenv1.ReadMeta, error) {
			_, err := api.DeleteGroup(ctx, &havenv1.DeleteGroupRequest{Name: in.name, RequestId: reqID})
			return nil, nil, err
		}
	default:
		return func(ctx context.Context, api havenv1.ClusterServiceClient) (*havenv1.Group, *havenv1.ReadMeta, error) {
			resp, err := api.GetGroup(ctx, &havenv1.GetGroupRequest{Name: in.name, Consistent: true})
			return resp.GetGroup(), resp.GetMeta(), err
		}
	}
}

// belief is what a client thinks one of its groups is, to choose
// requests that mostly make sense.
type belief uint8

const (
	believeAbsent belief = iota
	believeStopped
	believeRunning
	believeUnsure
)

type concClient struct {
	r      *concRun
	id     int
	rng    *rand.Rand
	names  []string
	inc    map[string]int
	belief map[string]belief
	seq    int
	ops    []porcupine.Operation
}

func (r *concRun) newClient(id int, rng *rand.Rand) *concClient {
	cl := &concClient{r: r, id: id, rng: rng, inc: map[string]int{}, belief: map[string]belief{}}
	for j := range 1 + rng.Intn(3) {
		cl.names = append(cl.names, fmt.Sprintf("c%02dg%d", id, j))
	}
	return cl
}

// pick is a random agent other than the one being killed.
func (cl *concClient) pick() *node {
	nodes := cl.r.c.nodes
	down := int(cl.r.down.Load())
	for {
		if i := cl.rng.Intn(len(nodes)); i != down {
			return nodes[i]
		}
	}
}

func (cl *concClient) run(end time.Time) {
	for time.Now().Before(end) && !cl.r.quit.Load() {
		name := cl.names[cl.rng.Intn(len(cl.names))]
		switch cl.exec(cl.choose(name), name) {
		case resRefused:
			// Most likely still stopping: give it time.
			time.Sleep(time.Duration(50+cl.rng.Intn(100)) * time.Millisecond)
		default:
			if cl.rng.Intn(3) > 0 {
				time.Sleep(time.Duration(cl.rng.Intn(40)) * time.Millisecond)
			}
		}
	}
}

// choose picks a request that makes sense for what the client believes,
// or now and then any request, to see the refusals too.
func (cl *concClient) choose(name string) concOp {
	if cl.rng.Intn(5) == 0 {
		return concOp(cl.rng.Intn(5))
	}
	p := cl.rng.Intn(100)
	switch cl.belief[name] {
	case believeAbsent:
		return opCreate
	case believeStopped:
		switch {
		case p < 50:
			return opStart
		case p < 75:
			return opDelete
		}
		return opGet
	case believeRunning:
		if p < 60 {
			return opStop
		}
		return opGet
	}
	return opGet
}

func (cl *concClient) exec(op concOp, name string) concResult {
	in := groupIn{op: op, name: name}
	if op == opCreate {
		cl.inc[name]++
		in.inc = cl.inc[name]
	}
	cl.seq++
	info := &opInfo{client: cl.id, reqID: fmt.Sprintf("c%02d-%d", cl.id, cl.seq)}
	call := cl.r.now()
	out := cl.r.do(in, info, cl.pick, callFor(in, info.reqID))
	ret := cl.r.now()
	if out.res != resUnknown {
		cl.r.stats.answered(op == opGet, time.Duration(ret-call))
	}
	cl.learn(in, out)
	if out.res == resUnknown {
		if op == opGet {
			return out.res // a read that was not answered tells nothing
		}
		ret = -1 // after everything else: set once the history is whole
	}
	cl.ops = append(cl.ops, porcupine.Operation{ClientId: cl.id, Input: in, Call: call, Output: out, Return: ret, Metadata: info})
	return out.res
}

func (cl *concClient) learn(in groupIn, out groupOut) {
	b := cl.belief[in.name]
	switch out.res {
	case resNotFound:
		b = believeAbsent
	case resExists, resUnknown:
		b = believeUnsure
	case resOK:
		switch in.op {
		case opCreate, opStop:
			b = believeStopped
		case opStart:
			b = believeRunning
		case opDelete:
			b = believeAbsent
		case opGet:
			b = believeStopped
			if out.run {
				b = believeRunning
			}
		}
	}
	cl.belief[in.name] = b
}

// finalReads reads every group any client used through the leader, once
// the clients are done: the history's last word on each.
func (r *concRun) finalReads(leader *node, names []string) []porcupine.Operation {
	var ops []porcupine.Operation
	for _, name := range names {
		in := groupIn{op: opGet, name: name}
		info := &opInfo{client: r.finalClient, final: true}
		call := r.now()
		out := r.do(in, info, func() *node { return leader }, callFor(in, ""))
		ret := r.now()
		if out.res == resUnknown {
			r.t.Fatalf("final read of %s through the leader %s: no answer after %d attempts: %s %s", name, leader.name, info.attempts, info.code, info.msg)
		}
		ops = append(ops, porcupine.Operation{ClientId: r.finalClient, Input: in, Call: call, Output: out, Return: ret, Metadata: info})
	}
	return ops
}

// closeHistory ends every operation of unknown outcome after everything
// else, and says what the history holds.
func (r *concRun) closeHistory(history []porcupine.Operation) {
	var last int64
	for _, op := range history {
		last = max(last, op.Return)
	}
	count := map[string]int{}
	unknown, retried := 0, 0
	for i := range history {
		op := &history[i]
		in, out, info := op.Input.(groupIn), op.Output.(groupOut), op.Metadata.(*opInfo)
		if op.Return < 0 {
			op.Return = last + 1
		}
		count[in.op.String()+" "+out.res.String()]++
		if out.res == resUnknown {
			unknown++
		}
		if info.attempts > 1 {
			retried++
		}
	}
	keys := make([]string, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, count[k]))
	}
	r.t.Logf("history: %d operations in %s, %d retried, %d with unknown outcome; %s", len(history), ms(last), retried, unknown, strings.Join(parts, ", "))
	if r.derived.Load() {
		r.t.Logf("the server leaves Group.desired unset: desired is derived from the observed state (STARTING/ONLINE: RUN)")
	}
}

// checkLinearizable runs porcupine over the whole history; when it is not
// linearizable it writes the visualization of the groups that break it and
// fails with each one's operations.
func (r *concRun) checkLinearizable(history []porcupine.Operation) {
	t := r.t
	start := time.Now()
	res, _ := porcupine.CheckOperationsVerbose(groupModel, history, 2*time.Minute)
	t.Logf("linearizability checked in %s", time.Since(start).Round(time.Millisecond))
	switch res {
	case porcupine.Ok:
		t.Logf("linearizable: %d operations on %d groups", len(history), len(groupModel.Partition(history)))
		return
	case porcupine.Unknown:
		t.Fatalf("harness error, not a finding: the linearizability check timed out on %d operations", len(history))
	}
	var bad []porcupine.Operation
	var lost, stale, lostReports, staleReports []string
	for _, ops := range groupModel.Partition(history) {
		if porcupine.CheckOperations(groupModel, ops) {
			continue
		}
		bad = append(bad, ops...)
		name := ops[0].Input.(groupIn).name
		rep, writes := r.diagnose(ops)
		if writes {
			lost, lostReports = append(lost, name), append(lostReports, rep)
		} else {
			stale, staleReports = append(stale, name), append(staleReports, rep)
		}
	}
	t.Logf("violations diagnosed in %s", time.Since(start).Round(time.Millisecond))
	_, info := porcupine.CheckOperationsVerbose(groupModel, bad, time.Minute)
	info.AddAnnotations([]porcupine.Annotation{
		{Tag: "cluster", Start: r.killedAt, Description: "SIGKILL " + r.victim, BackgroundColor: "#fbb"},
		{Tag: "cluster", Start: r.restartedAt, Description: "start " + r.victim, BackgroundColor: "#bfb"},
	})
	vis := "(not written)"
	if dir, err := os.MkdirTemp("", "haven-concurrency-"); err != nil {
		t.Logf("visualization: %v", err)
	} else if path := filepath.Join(dir, "linearizability.html"); porcupine.VisualizePath(groupModel, info, path) != nil {
		t.Logf("visualization: cannot write %s", path)
	} else {
		vis = path
	}
	// The first few of each kind, lost writes first.
	reports := slices.Concat(lostReports[:min(len(lostReports), 3)], staleReports[:min(len(staleReports), 1)])
	more := ""
	if n := len(lostReports) + len(staleReports) - len(reports); n > 0 {
		more = fmt.Sprintf("\n\n(%d more groups in the visualization)", n)
	}
	t.Fatalf("NOT LINEARIZABLE (seed %d; leader %s SIGKILLed at +%s, started at +%s)\n"+
		"acknowledged writes contradicted in %d groups: %s\n"+
		"only reads the server did not verify contradict %d more (stale reads): %s\n"+
		"visualization: %s\n\n%s%s",
		r.seed, r.victim, ms(r.killedAt), ms(r.restartedAt), len(lost), strings.Join(lost, " "), len(stale), strings.Join(stale, " "),
		vis, strings.Join(reports, "\n\n"), more)
}

// diagnose explains why one group's history is not linearizable. The
// server's answers to reads carry the group's modify index: a read that
// the server did not verify (ReadMeta.consistent) and that shows a copy
// older than an acknowledged write is stale; one that shows a copy at
// least as new is as good as verified. If the history is still not
// linearizable with only verified, final and such fresh reads, an
// acknowledged write was lost (writes reports true); otherwise only stale
// reads broke it, which is the server not honouring consistent reads.
func (r *concRun) diagnose(ops []porcupine.Operation) (string, bool) {
	ops = slices.Clone(ops)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	var kept []porcupine.Operation
	var acked uint64 // highest modify index an acknowledged write returned
	deleted := false // a delete acknowledged since
	stale := 0
	for _, op := range ops {
		in, out, info := op.Input.(groupIn), op.Output.(groupOut), op.Metadata.(*opInfo)
		if in.op != opGet {
			kept = append(kept, op)
			if out.res != resUnknown && info.found {
				acked, deleted = max(acked, info.modifyIdx), false
			}
			if in.op == opDelete && out.res == resOK {
				deleted = true
			}
			continue
		}
		switch {
		case info.final || info.verified:
			kept = append(kept, op)
		case info.found && info.modifyIdx >= acked && !deleted:
			kept = append(kept, op)
		case info.found && info.modifyIdx < acked:
			info.stale = true
			stale++
		}
	}
	writes := !porcupine.CheckOperations(groupModel, kept)
	show := ops
	if writes {
		show = kept
	}
	culprit := firstIllegal(show)
	name := ops[0].Input.(groupIn).name
	var b strings.Builder
	if writes {
		fmt.Fprintf(&b, "group %s: an acknowledged write is contradicted by the state read later (a lost stop or start, a deleted group back, a group created twice); stale reads left out:", name)
	} else {
		fmt.Fprintf(&b, "group %s: only reads the server did not verify (ReadMeta.consistent unset; %d provably older than an acknowledged write) contradict the history: GetGroup{consistent: true} was answered from a stale copy:", name, stale)
	}
	from, to := max(culprit-10, 0), min(culprit+4, len(show))
	if from > 0 {
		fmt.Fprintf(&b, "\n     … %d earlier operations", from)
	}
	for i := from; i < to; i++ {
		mark := "   "
		if i == culprit {
			mark = ">>>"
		}
		b.WriteString("\n  " + mark + " " + opLine(show[i]))
	}
	if to < len(show) {
		if to < len(show)-1 {
			fmt.Fprintf(&b, "\n     … %d later operations", len(show)-1-to)
		}
		b.WriteString("\n      " + opLine(show[len(show)-1]))
	}
	if culprit >= 0 && culprit < len(show) {
		fmt.Fprintf(&b, "\n  >>> is the first operation that no order of the ones before it explains")
		if w := lastAcked(show[:culprit]); w != nil {
			winfo := w.Metadata.(*opInfo)
			fmt.Fprintf(&b, "; the last acknowledged write before it: %s at +%s (%s)", describeOp(w.Input.(groupIn), w.Output.(groupOut)), ms(w.Return), winfo.reqID)
			c := show[culprit]
			if cinfo := c.Metadata.(*opInfo); c.Input.(groupIn).op == opGet && cinfo.found && winfo.found && cinfo.modifyIdx >= winfo.modifyIdx {
				fmt.Fprintf(&b, ".\n      The read's copy (idx %d) is not older than that write's answer (idx %d): the write was overwritten, not read stale.", cinfo.modifyIdx, winfo.modifyIdx)
			}
		}
	}
	return b.String(), writes
}

// firstIllegal is the index of the first operation (by call time) whose
// history up to it is not linearizable.
func firstIllegal(ops []porcupine.Operation) int {
	lo, hi := 0, len(ops) // ops[:hi] is illegal, ops[:lo] legal
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if porcupine.CheckOperations(groupModel, ops[:mid]) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi - 1
}

func lastAcked(ops []porcupine.Operation) *porcupine.Operation {
	for i := len(ops) - 1; i >= 0; i-- {
		in, out := ops[i].Input.(groupIn), ops[i].Output.(groupOut)
		if in.op != opGet && out.res == resOK {
			return &ops[i]
		}
	}
	return nil
}

func opLine(op porcupine.Operation) string {
	info := op.Metadata.(*opInfo)
	who := fmt.Sprintf("c%02d", info.client)
	if info.final {
		who = "end"
	}
	ret := "+" + ms(op.Return)
	if op.Output.(groupOut).res == resUnknown {
		ret = "(never)"
	}
	read := ""
	if op.Input.(groupIn).op == opGet && !info.final {
		switch {
		case info.verified:
			read = " [verified by " + info.answeredBy + "]"
		case info.stale:
			read = " [not verified, STALE]"
		default:
			read = " [not verified]"
		}
	}
	return fmt.Sprintf("+%s..%s %s %s%s; %s", ms(op.Call), ret, who, describeOp(op.Input.(groupIn), op.Output.(groupOut)), read, info)
}

// agents waits until every agent's own copy lists the same groups with
// the same desired state, owner and epoch.
func (r *concRun) agents(timeout time.Duration) {
	r.t.Helper()
	type entry struct {
		name    string
		desired havenv1.DesiredState
		owner   string
		epoch   uint64
	}
	waitFor(r.t, timeout, "every agent lists the same groups", func() error {
		var first []entry
		var firstName string
		for _, n := range r.c.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := n.api().ListGroups(ctx, &havenv1.ListGroupsRequest{})
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %v", n.name, err)
			}
			var list []entry
			for _, g := range resp.GetGroups() {
				list = append(list, entry{g.GetSpec().GetName(), desiredOf(g), g.GetOwner(), g.GetEpoch()})
			}
			sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
			if first == nil {
				first, firstName = list, n.name
				continue
			}
			if !slices.Equal(first, list) {
				return fmt.Errorf("%s and %s differ: %s", firstName, n.name, listDiff(first, list))
			}
		}
		return nil
	})
	r.t.Logf("every agent lists the same groups")
}

func listDiff[E comparable](a, b []E) string {
	var out []string
	for _, e := range a {
		if !slices.Contains(b, e) {
			out = append(out, fmt.Sprintf("-%v", e))
		}
	}
	for _, e := range b {
		if !slices.Contains(a, e) {
			out = append(out, fmt.Sprintf("+%v", e))
		}
	}
	if len(out) > 10 {
		out = append(out[:10], "…")
	}
	return strings.Join(out, " ")
}

// settled waits until every group that should run is ONLINE and every
// other is OFFLINE, and returns the ones that run.
func (r *concRun) settled(leader *node, timeout time.Duration) []string {
	r.t.Helper()
	var running []string
	waitFor(r.t, timeout, "every group online or offline as desired", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := leader.api().ListGroups(ctx, &havenv1.ListGroupsRequest{})
		if err != nil {
			return err
		}
		running = nil
		var off []string
		for _, g := range resp.GetGroups() {
			want := havenv1.GroupState_GROUP_STATE_OFFLINE
			if desiredOf(g) == havenv1.DesiredState_DESIRED_STATE_RUN {
				want = havenv1.GroupState_GROUP_STATE_ONLINE
				running = append(running, g.GetSpec().GetName())
			}
			if g.GetState() != want {
				off = append(off, fmt.Sprintf("%s: desired %s, state %s on %q epoch %d (%s)", g.GetSpec().GetName(),
					desiredOf(g), g.GetState(), g.GetOwner(), g.GetEpoch(), g.GetStateReason()))
			}
		}
		if len(off) > 0 {
			return fmt.Errorf("%d groups not there yet:\n  %s", len(off), strings.Join(off, "\n  "))
		}
		return nil
	})
	r.t.Logf("every group is where it should be: %d online, the others offline", len(running))
	return running
}
