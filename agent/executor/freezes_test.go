package executor

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/haven-ha/haven/driver"
	"github.com/haven-ha/haven/internal/fsmtest"
	"github.com/haven-ha/haven/internal/logging/logtest"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// thawingDriver thaws a frozen VM on a lease extension, as drivers do.
type thawingDriver struct{ *fakeDriver }

func (d thawingDriver) ExtendLease(id driver.VMID, epoch uint64, end time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st := d.vms[id]; st.Epoch == epoch && st.State == driver.StateFrozen && time.Now().Before(end) {
		st.State = driver.StateRunning
		d.vms[id] = st
	}
	return nil
}

func (d thawingDriver) freeze(id driver.VMID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.vms[id]
	st.State = driver.StateFrozen
	d.vms[id] = st
}

// Every freeze is reported once with its cause, every thaw once: a lease
// that ran out, a grant that left the group out, and a freeze the next
// grant ended before the executor looked.
func TestFreezesAndThaws(t *testing.T) {
	l := fsmtest.New(t)
	web := l.StartOn("web", "n1")
	id := driver.VMID{Group: "web", Resource: "vm"}
	d := thawingDriver{&fakeDriver{vms: map[driver.VMID]driver.Status{id: {ID: id, Epoch: web.GetEpoch(), State: driver.StateRunning}}}}
	var mu sync.Mutex
	var got []Freeze
	e := New(Config{Node: "n1", State: l.FSM, Driver: d, Logger: logtest.New(t),
		Report: func(context.Context, *havenv1.ReportGroupRequest) error { return nil },
		Freezes: func(f Freeze) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, f)
		}})
	confirm := []*havenv1.GroupEpoch{{Name: "web", Epoch: web.GetEpoch()}}
	ctx := context.Background()
	want := func(step string, fs ...Freeze) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(got, fs) {
			t.Errorf("%s: reported %+v, want %+v", step, got, fs)
		}
		got = nil
	}
	freeze := Freeze{VM: id, Epoch: web.GetEpoch(), Cause: CauseLeaseExpired}
	thaw := Freeze{VM: id, Epoch: web.GetEpoch(), Thawed: true}

	e.Granted(time.Now().Add(-time.Millisecond), confirm)
	d.freeze(id)
	e.reconcile(ctx)
	e.reconcile(ctx)
	want("the lease ran out", freeze)
	e.Granted(time.Now().Add(time.Minute), confirm)
	e.reconcile(ctx)
	want("a grant came", thaw)

	e.Granted(time.Now().Add(time.Minute), nil)
	d.freeze(id)
	e.reconcile(ctx)
	want("grants without the group", Freeze{VM: id, Epoch: web.GetEpoch(), Cause: CauseWithheld})
	e.Granted(time.Now().Add(time.Minute), confirm)
	want("the group confirmed again", thaw)

	e.Granted(time.Now().Add(-time.Millisecond), confirm)
	d.freeze(id)
	e.Granted(time.Now().Add(time.Minute), confirm)
	e.reconcile(ctx)
	want("a freeze the next grant ended", freeze, thaw)
}
