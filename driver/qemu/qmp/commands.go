package qmp

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"
)

// Run states (query-status's status) the driver tells apart.
const (
	StatusRunning       = "running"
	StatusPaused        = "paused"      // stop, or an incoming migration of a stopped VM
	StatusInMigrate     = "inmigrate"   // -incoming: waiting for or loading a migration
	StatusPostMigrate   = "postmigrate" // the source after a completed migration
	StatusFinishMigrate = "finish-migrate"
	StatusPrelaunch     = "prelaunch" // -S, not yet started
	StatusShutdown      = "shutdown"
	StatusIOError       = "io-error"
	StatusWatchdog      = "watchdog"
	StatusGuestPanicked = "guest-panicked"
	StatusInternalError = "internal-error"
)

// StatusInfo is query-status's reply.
type StatusInfo struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// QueryStatus reports the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var s StatusInfo
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Stop pauses the vCPUs (QEMU emits STOP).
func (c *Client) Stop(ctx context.Context) error {
	return c.Execute(ctx, "stop", nil, nil)
}

// Cont resumes the vCPUs (QEMU emits RESUME); it is also how an incoming
// migration of a stopped VM starts running.
func (c *Client) Cont(ctx context.Context) error {
	return c.Execute(ctx, "cont", nil, nil)
}

// Quit makes QEMU exit at once, without telling the guest. QEMU replies,
// emits SHUTDOWN and closes the socket; wait on Done, and on the process,
// for the exit. A socket that QEMU closes or resets before the reply
// arrives is taken as QEMU having quit.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return err
}

// SystemPowerdown presses the ACPI power button; the guest decides what
// to do with it (a guest without ACPI support, like SeaBIOS alone,
// ignores it).
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// Getfd hands f's descriptor to QEMU under name, for a later command that
// takes "fd:NAME" (migrate, migrate-incoming). The command that uses it
// takes it over; Closefd releases one that was never used.
func (c *Client) Getfd(ctx context.Context, name string, f *os.File) error {
	return c.ExecuteFD(ctx, "getfd", struct {
		FDName string `json:"fdname"`
	}{name}, nil, f)
}

// Closefd closes the descriptor QEMU holds under name.
func (c *Client) Closefd(ctx context.Context, name string) error {
	return c.Execute(ctx, "closefd", struct {
		FDName string `json:"fdname"`
	}{name}, nil)
}

// Actions is set-action's arguments: what QEMU does on a guest event
// instead of its default. Empty fields are left as they are.
type Actions struct {
	// Reboot: "reset" or "shutdown".
	Reboot string `json:"reboot,omitempty"`
	// Shutdown: "poweroff" or "pause".
	Shutdown string `json:"shutdown,omitempty"`
	// Panic: "pause", "shutdown", "exit-failure" or "none".
	Panic string `json:"panic,omitempty"`
	// Watchdog: "reset", "shutdown", "poweroff", "pause", "debug",
	// "none" or "inject-nmi".
	Watchdog string `json:"watchdog,omitempty"`
}

// SetAction sets what QEMU does on guest reboot, shutdown, panic and
// watchdog expiry.
func (c *Client) SetAction(ctx context.Context, a Actions) error {
	return c.Execute(ctx, "set-action", a, nil)
}
