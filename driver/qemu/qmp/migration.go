package qmp

import (
	"cmp"
	"context"
	"slices"
)

// Migration capabilities the driver may set (migrate-set-capabilities).
// Some must be equal on both ends (see QEMU.md).
const (
	CapXBZRLE       = "xbzrle"
	CapAutoConverge = "auto-converge"
	CapEvents       = "events" // MIGRATION events on every status change
	CapPostcopyRAM  = "postcopy-ram"
	CapReturnPath   = "return-path"
	// CapPauseBeforeSwitchover: the source stops its vCPUs and waits in
	// MigrationPreSwitchover, before it sends the devices' state, until
	// MigrateContinue or MigrateCancel.
	CapPauseBeforeSwitchover = "pause-before-switchover"
	CapMultifd               = "multifd"
	CapZeroCopySend          = "zero-copy-send"
	// CapLateBlockActivate: an incoming migration that does not start
	// the guest by itself (-S) leaves the disk images inactive, their
	// locks untaken, until cont.
	CapLateBlockActivate = "late-block-activate"
)

// Migration statuses (MigrationInfo.Status and the MIGRATION event).
const (
	MigrationNone           = "none"
	MigrationSetup          = "setup"
	MigrationActive         = "active"
	MigrationPostcopyActive = "postcopy-active"
	// MigrationPostcopyPaused: the stream of a post-copy broke; QEMU
	// waits for a recovery that haven does not attempt.
	MigrationPostcopyPaused = "postcopy-paused"
	MigrationPreSwitchover  = "pre-switchover"
	MigrationDevice         = "device"
	MigrationCompleted      = "completed"
	MigrationFailed         = "failed"
	MigrationCancelling     = "cancelling"
	MigrationCancelled      = "cancelled"
)

// Capability is one entry of migrate-set-capabilities and
// query-migrate-capabilities.
type Capability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}

// MigrateSetCapabilities turns migration capabilities on or off; those
// not named keep their state. QEMU refuses it while a migration runs.
func (c *Client) MigrateSetCapabilities(ctx context.Context, caps map[string]bool) error {
	list := make([]Capability, 0, len(caps))
	for name, on := range caps {
		list = append(list, Capability{name, on})
	}
	// Sorted, so that the command is the same for the same map.
	slices.SortFunc(list, func(a, b Capability) int { return cmp.Compare(a.Capability, b.Capability) })
	return c.Execute(ctx, "migrate-set-capabilities", struct {
		Capabilities []Capability `json:"capabilities"`
	}{list}, nil)
}

// QueryMigrateCapabilities reports every migration capability and its
// state.
func (c *Client) QueryMigrateCapabilities(ctx context.Context) (map[string]bool, error) {
	var list []Capability
	if err := c.Execute(ctx, "query-migrate-capabilities", nil, &list); err != nil {
		return nil, err
	}
	caps := make(map[string]bool, len(list))
	for _, cp := range list {
		caps[cp.Capability] = cp.State
	}
	return caps, nil
}

// MigrationParameters is migrate-set-parameters's arguments and
// query-migrate-parameters's reply. A nil field is not sent, so setting
// one parameter leaves the others as they are; QEMU's reply fills them
// all. Build values with new, e.g. MaxBandwidth: new(int64(1 << 30)).
type MigrationParameters struct {
	// MaxBandwidth caps the pre-copy stream, in bytes per second
	// (default 128 MiB/s, which throttles even loopback).
	MaxBandwidth *int64 `json:"max-bandwidth,omitempty"`
	// DowntimeLimit is the longest pause, in milliseconds, that the final
	// switchover may take; pre-copy goes on until it fits (default 300).
	DowntimeLimit *int64 `json:"downtime-limit,omitempty"`
	// MultifdChannels is the number of streams with CapMultifd; both ends
	// must agree (default 2).
	MultifdChannels *int64 `json:"multifd-channels,omitempty"`
	// CPUThrottleInitial, CPUThrottleIncrement and MaxCPUThrottle are
	// percentages of auto-converge's throttling (defaults 20, 10, 99).
	CPUThrottleInitial   *int64 `json:"cpu-throttle-initial,omitempty"`
	CPUThrottleIncrement *int64 `json:"cpu-throttle-increment,omitempty"`
	MaxCPUThrottle       *int64 `json:"max-cpu-throttle,omitempty"`
	// CPUThrottleTailslow makes the last throttling steps smaller.
	CPUThrottleTailslow *bool `json:"cpu-throttle-tailslow,omitempty"`
	// ThrottleTriggerThreshold: auto-converge throttles once the guest
	// dirties more than this percentage of what was sent in a pass
	// (default 50).
	ThrottleTriggerThreshold *int64 `json:"throttle-trigger-threshold,omitempty"`
	// MaxPostcopyBandwidth caps the post-copy stream, bytes per second;
	// 0 is unlimited.
	MaxPostcopyBandwidth *int64 `json:"max-postcopy-bandwidth,omitempty"`
	// XBZRLECacheSize is the cache of CapXBZRLE, in bytes.
	XBZRLECacheSize *int64 `json:"xbzrle-cache-size,omitempty"`
	// MultifdCompression: "none", "zlib" or "zstd".
	MultifdCompression *string `json:"multifd-compression,omitempty"`
	// TLSCreds is the id of a tls-creds object (ObjectAdd) the stream is
	// encrypted with; "" turns TLS off again.
	TLSCreds *string `json:"tls-creds,omitempty"`
	// TLSHostname is the name the source checks the target's
	// certificate against.
	TLSHostname *string `json:"tls-hostname,omitempty"`
}

// MigrateSetParameters sets the parameters that p does not leave nil.
func (c *Client) MigrateSetParameters(ctx context.Context, p MigrationParameters) error {
	return c.Execute(ctx, "migrate-set-parameters", p, nil)
}

// QueryMigrateParameters reports the migration parameters.
func (c *Client) QueryMigrateParameters(ctx context.Context) (MigrationParameters, error) {
	var p MigrationParameters
	err := c.Execute(ctx, "query-migrate-parameters", nil, &p)
	return p, err
}

// Migrate starts an outgoing migration to uri ("tcp:HOST:PORT",
// "fd:NAME" after Getfd, "exec:CMD") and returns once it has started;
// follow it with QueryMigrate or MIGRATION events.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", struct {
		URI string `json:"uri"`
	}{uri}, nil)
}

// MigrateIncoming makes a QEMU started with "-incoming defer" listen on,
// or read from, uri. With "tcp:127.0.0.1:0" QEMU picks the port;
// QueryMigrate's SocketAddress tells it. A failed or cancelled incoming
// migration makes QEMU exit.
func (c *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", struct {
		URI string `json:"uri"`
	}{uri}, nil)
}

// MigrateCancel cancels the outgoing migration; the source keeps running.
func (c *Client) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// MigrateContinue lets a migration paused at MigrationPreSwitchover
// (CapPauseBeforeSwitchover) go on to its switchover.
func (c *Client) MigrateContinue(ctx context.Context) error {
	return c.Execute(ctx, "migrate-continue", struct {
		State string `json:"state"`
	}{MigrationPreSwitchover}, nil)
}

// MigrateStartPostcopy switches a running migration to post-copy: the
// target runs and pulls the pages it lacks. CapPostcopyRAM must be on at
// both ends before the migration starts.
func (c *Client) MigrateStartPostcopy(ctx context.Context) error {
	return c.Execute(ctx, "migrate-start-postcopy", nil, nil)
}

// MigrationInfo is query-migrate's reply. Times are in milliseconds.
// Which fields QEMU fills depends on the status; a field it leaves out
// reads as zero, or nil where zero is a value of its own.
type MigrationInfo struct {
	// Status is empty before any migration.
	Status string `json:"status"`
	// RAM is present while a migration is active and once it completed.
	RAM *MigrationStats `json:"ram,omitempty"`
	// XBZRLECache is present with CapXBZRLE.
	XBZRLECache *XBZRLECacheStats `json:"xbzrle-cache,omitempty"`
	TotalTime   int64             `json:"total-time"`
	SetupTime   int64             `json:"setup-time"`
	// Downtime is present once a migration completed.
	Downtime *int64 `json:"downtime,omitempty"`
	// ExpectedDowntime is present while a migration is active.
	ExpectedDowntime *int64 `json:"expected-downtime,omitempty"`
	// CPUThrottlePercentage is present once auto-converge throttles.
	CPUThrottlePercentage *int64 `json:"cpu-throttle-percentage,omitempty"`
	ErrorDesc             string `json:"error-desc"`
	// BlockedReasons says why a migration cannot start, if it cannot.
	BlockedReasons []string `json:"blocked-reasons"`
	// SocketAddress is where an incoming tcp migration listens.
	SocketAddress []SocketAddress `json:"socket-address"`
}

// MigrationStats is MigrationInfo.RAM. Sizes are bytes, pages are of
// PageSize bytes.
type MigrationStats struct {
	Transferred int64 `json:"transferred"`
	Remaining   int64 `json:"remaining"`
	// Total is every migratable RAM block, the guest's RAM and the
	// firmware's and ACPI tables' blocks with it.
	Total          int64   `json:"total"`
	Duplicate      int64   `json:"duplicate"` // zero pages
	Normal         int64   `json:"normal"`
	NormalBytes    int64   `json:"normal-bytes"`
	DirtyPagesRate int64   `json:"dirty-pages-rate"` // pages per second
	Mbps           float64 `json:"mbps"`
	DirtySyncCount int64   `json:"dirty-sync-count"` // passes over the dirty bitmap
	// PostcopyRequests is the pages the target asked for in post-copy.
	PostcopyRequests int64 `json:"postcopy-requests"`
	PageSize         int64 `json:"page-size"`
	MultifdBytes     int64 `json:"multifd-bytes"`
	PagesPerSecond   int64 `json:"pages-per-second"`
	PrecopyBytes     int64 `json:"precopy-bytes"`
	DowntimeBytes    int64 `json:"downtime-bytes"`
	PostcopyBytes    int64 `json:"postcopy-bytes"`
}

// XBZRLECacheStats is MigrationInfo.XBZRLECache.
type XBZRLECacheStats struct {
	CacheSize     int64   `json:"cache-size"`
	Bytes         int64   `json:"bytes"`
	Pages         int64   `json:"pages"`
	CacheMiss     int64   `json:"cache-miss"`
	CacheMissRate float64 `json:"cache-miss-rate"`
	EncodingRate  float64 `json:"encoding-rate"`
	Overflow      int64   `json:"overflow"`
}

// SocketAddress is QEMU's SocketAddress union, with the members of the
// "inet" and "unix" types.
type SocketAddress struct {
	Type string `json:"type"` // "inet", "unix", "vsock" or "fd"
	Host string `json:"host"`
	Port string `json:"port"` // a string, as QEMU sends it
	Path string `json:"path"`
}

// QueryMigrate reports the state of the current or last migration, in or
// out. On the source, QEMU 7.2 reports the status completed (here and in
// the MIGRATION event) a moment before it computes TotalTime, Downtime
// and Mbps: they read 0 until the run state (QueryStatus) is
// StatusPostMigrate, which QEMU sets together with them.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}
