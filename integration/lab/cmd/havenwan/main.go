// Command havenwan delays the packets that iptables NFQUEUE rules send to
// its queues, as a WAN between two sites would: the network lab's stand-in
// for netem, which the kernels haven is tested on lack. The integration lab
// builds it, which is quicker than building haven; an installed haven runs
// the same code as `haven lab-wan`. See wan.Command and package wan.
//
//	havenwan --netns hvab12c-r --link queue=1,delay=30ms,jitter=10ms [--link ...]
package main

import (
	"os"

	"github.com/haven-ha/haven/internal/netlab/wan"
)

func main() { os.Exit(wan.Command("havenwan", os.Args[1:], os.Stdout, os.Stderr)) }
