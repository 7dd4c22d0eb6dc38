// Package wan makes a WAN out of a network lab's router: iptables NFQUEUE
// rules send each packet that crosses between two sites to a queue, and a
// Delayer holds it there for the link's delay, give or take its jitter,
// before it gives the ACCEPT verdict. The kernels haven is tested on have no
// netem; this is its user-space stand-in. Loss is not the Delayer's job: the
// iptables statistic match drops packets before they reach a queue.
//
// A Delayer binds its queues inside a named network namespace (the lab's
// router) while the process itself stays where it is, so the program that
// runs it (wan.Command: havenwan, haven lab-wan) needs no `ip netns exec`.
//
// Bind before any rule sends packets to a queue (the lab adds its NFQUEUE
// rules only once the delay program says it is ready): go-nfqueue reads the
// replies to its configuration requests from the socket that also delivers
// packets, and a packet arriving mid-setup fails the bind. Rules should carry
// --queue-bypass, so packets pass undelayed when no Delayer is bound.
package wan
