// Package netlab builds a small routed network out of Linux network
// namespaces, cuts it into partitions and puts WAN links between its sites
// on demand. The integration tests use it through integration/lab (which
// fails the test where this returns an error), and `haven dev --sites`
// runs a stretch cluster in it.
//
// Layout of one lab (P is the per-run prefix, e.g. "hvk3x9q"):
//
//	P-r        router namespace: one bridge P-bS per site (10.77.S.1/24),
//	           ip_forward=1, and the iptables chain HAVEN_LAB hooked into
//	           FORWARD that holds every fault rule
//	P-h-NAME   one namespace per host: eth0 = 10.77.S.H/24, default route
//	           via 10.77.S.1; the other end of its veth (P-vN) is a port of
//	           its site's bridge in the router namespace
//	delayer    one process per WAN link with a delay (SetWAN), in the root
//	           namespace, bound to an NFQUEUE queue of P-r (--netns P-r):
//	           the delay program of package wan, as Options.Delayer names it
//	           (havenwan in the integration tests, `haven lab-wan` in haven dev)
//
// Every link is created directly inside a lab namespace, never in the root
// namespace, so deleting the namespaces removes everything but the delay
// processes, which Close stops and the reaper finds by their --netns.
// Only addresses inside these namespaces, or loopback, are ever contacted.
//
// The lab needs root and a few commands; Check says what is missing.
package netlab
