// Package supervise runs a VM process (QEMU) under a lease supervisor: a
// small process of its own, the haven binary in a hidden mode, that
// enforces step 4 of the driver package's fencing contract, the gate,
// whatever happens to the agent. The agent may be SIGKILLed or SIGSTOPped;
// its VMs must still not run past its lease, and a restarted agent must be
// able to take them back.
//
// The supervisor (Main) starts the child with Pdeathsig SIGKILL, so the
// child never outlives it, and runs in a session of its own, so a signal
// to the agent's process group reaches neither. A timer at the lease end
// sends the child SIGSTOP, which stops every thread and which the child
// can neither catch nor delay, and waits until /proc shows every thread
// stopped: the child is then frozen. Only Extend or Arm thaw it, with
// SIGCONT, and they check their new lease end against the clock under the
// same mutex as the timer's freeze, at the moment of the thaw: a late
// thaw, from an agent that read a valid lease and was then paused past
// it, is refused. No lease end (0) means no gate yet, for a migration's
// target QEMU, which must answer QMP and runs no guest code until told.
//
// Clients (Start, Dial) come and go: a client that disconnects or dies
// changes nothing. When the child exits the supervisor keeps its exit
// status for Status until a client Releases it; then it removes its socket
// and exits. A supervisor that was killed leaves its socket file behind;
// connecting to it is refused (Dial says ErrNoSupervisor) and the next
// Start at that path replaces it.
//
// # Protocol
//
// The control socket is a unix stream socket (mode 0600) that speaks JSON
// lines: one request per line, one reply line each, in order. Times are
// CLOCK_MONOTONIC nanoseconds, the clock every process of the host shares
// (MonoFromTime); the wall clock is never used.
//
//	{"op":"status"}
//	{"op":"extend","epoch":E,"until":T}   renew (never backwards), thaw; arms an unarmed child
//	{"op":"arm","epoch":E,"until":T}      new epoch (higher, or equal while unarmed) and its first lease
//	{"op":"signal","signal":"TERM"|"KILL"}
//	{"op":"wait","timeout_ms":N}          reply once the child has exited, or after N ms
//	{"op":"release"}                      the child has exited: reply, remove the socket, exit
//
// Every reply carries the status as of the request, taken in the same
// critical section as its effect, and on a refusal a code and a message:
//
//	{"status":{"protocol":1,"state":"running","epoch":E,"lease_end":T,"freezes":0,"pid":P,"supervisor_pid":S}}
//	{"status":{...,"state":"frozen","frozen_at":T2,...},"code":"lease_expired","error":"extend to a lease end 2ms ago"}
//
// States are unarmed, running, frozen and exited (with "exit":{"code":C}
// or {"code":-1,"signal":N}). Codes are lease_expired
// (driver.ErrLeaseExpired), stale_epoch (driver.ErrStaleEpoch), exited
// (ErrExited), alive (ErrAlive: release while the child lives),
// bad_request and failed.
//
// Start passes the supervisor an inherited pipe (-ready-fd 3) on which it
// writes one reply once its socket listens and the child runs, or the
// reason it could not start, so that Start waits on an event and not on
// polls of the socket.
//
// # Limits
//
// The supervisor is the watchdog: while it is itself stopped (SIGSTOP by
// pid; a signal to the agent's process group misses it), nothing stops the
// child at its lease end. Killing it kills the child, which is safe. The
// supervisor and the child stay in the agent's cgroup: a freeze of that
// cgroup freezes all three, which is safe too, but a service manager that
// kills the agent's whole cgroup on stop (systemd's default KillMode)
// kills every VM with each agent restart; the agent's unit should use
// KillMode=process or give the VMs a scope of their own.
package supervise
