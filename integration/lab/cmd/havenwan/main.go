// Command havenwan delays the packets that iptables NFQUEUE rules send to
// its queues, as a WAN between two sites would: the network lab's stand-in
// for netem, which the kernels haven is tested on lack. See package wan.
//
//	havenwan --netns hvab12c-r --link queue=1,delay=30ms,jitter=10ms [--link ...]
//
// It prints "ready" once every queue is bound. On SIGTERM or SIGINT it lets
// every packet it holds go, unbinds, prints one line of counters per link
// and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/haven-ha/haven/integration/lab/wan"
)

func main() {
	if os.Getenv("GOMAXPROCS") == "" {
		// The work is serial (one heap, one lock) and tiny per packet; a
		// second P only adds idle threads spinning for work. Measured on
		// 2 vCPUs: 13 % instead of 18 % of a core at 1,000 packets/s, 46 %
		// instead of 56 % at 20,000.
		runtime.GOMAXPROCS(1)
	}
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("havenwan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg wan.Config
	fs.StringVar(&cfg.NetNS, "netns", "", "network namespace (name in /run/netns, or a path) whose queues to bind; empty: this process's")
	fs.Func("link", "hold each packet of NFQUEUE queue N for D±J, given as `queue=N,delay=D,jitter=J`; repeat for more links", func(s string) error {
		k, err := wan.ParseLink(s)
		cfg.Links = append(cfg.Links, k)
		return err
	})
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || len(cfg.Links) == 0 {
		fmt.Fprintln(stderr, "havenwan: want one or more --link and no arguments")
		fs.Usage()
		return 2
	}
	d, err := wan.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "havenwan:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := d.Start(ctx); err != nil {
		fmt.Fprintln(stderr, "havenwan:", err)
		return 1
	}
	fmt.Fprintln(stdout, "ready")
	<-d.Done()
	for _, s := range d.Stats().Links {
		fmt.Fprintln(stdout, s)
	}
	if err := d.Err(); err != nil {
		fmt.Fprintln(stderr, "havenwan:", err)
		return 1
	}
	return 0
}
