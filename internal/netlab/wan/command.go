//go:build linux

package wan

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

// Command is the delay program: the whole of havenwan (the integration
// lab's build of it) and of `haven lab-wan` (the one an installed haven
// binary carries, which haven dev runs), so that there is one delayer:
//
//	PROG --netns hvab12c-r --link queue=1,delay=30ms,jitter=10ms [--link ...]
//
// It prints "ready" once every queue is bound. On SIGTERM or SIGINT it
// lets every packet it holds go, unbinds, prints one line of counters per
// link and returns 0; 2 means a bad command line, 1 a failure. name is the
// program's name in its messages.
func Command(name string, args []string, stdout, stderr io.Writer) int {
	if os.Getenv("GOMAXPROCS") == "" {
		// The work is serial (one heap, one lock) and tiny per packet; a
		// second P only adds idle threads spinning for work. Measured on
		// 2 vCPUs: 13 % instead of 18 % of a core at 1,000 packets/s, 46 %
		// instead of 56 % at 20,000.
		runtime.GOMAXPROCS(1)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	fs.StringVar(&cfg.NetNS, "netns", "", "network namespace (name in /run/netns, or a path) whose queues to bind; empty: this process's")
	fs.Func("link", "hold each packet of NFQUEUE queue N for D±J, given as `queue=N,delay=D,jitter=J`; repeat for more links", func(s string) error {
		k, err := ParseLink(s)
		cfg.Links = append(cfg.Links, k)
		return err
	})
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || len(cfg.Links) == 0 {
		fmt.Fprintf(stderr, "%s: want one or more --link and no arguments\n", name)
		fs.Usage()
		return 2
	}
	d, err := New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := d.Start(ctx); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	fmt.Fprintln(stdout, "ready")
	<-d.Done()
	for _, s := range d.Stats().Links {
		fmt.Fprintln(stdout, s)
	}
	if err := d.Err(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}
