package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFormatError(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{
			status.Error(codes.InvalidArgument, `group "a": resource "vm": dependency cycle vm -> config -> vm`),
			`error: InvalidArgument: group "a": resource "vm": dependency cycle vm -> config -> vm`,
		},
		{
			// A follower that cannot reach the leader names it; shown as is.
			status.Error(codes.Unavailable, "no leader reachable; last known leader a1 at 10.0.1.1:7949"),
			"error: Unavailable: no leader reachable; last known leader a1 at 10.0.1.1:7949",
		},
		{status.Error(codes.NotFound, `group "x" not found`), `error: NotFound: group "x" not found`},
		{status.Error(codes.AlreadyExists, `group "web" already exists`), `error: AlreadyExists: group "web" already exists`},
		{status.Error(codes.ResourceExhausted, "no node has 64GiB free"), "error: ResourceExhausted: no node has 64GiB free"},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), "error: DeadlineExceeded: context deadline exceeded"},
		{errors.New("reading group spec: open x.yaml: no such file or directory"), "error: reading group spec: open x.yaml: no such file or directory"},
		{&usageError{cmdPath: "haven group get", err: errors.New("haven group get takes NAME, got 0 argument(s)")}, "error: haven group get takes NAME, got 0 argument(s)"},
	}
	for _, tt := range tests {
		if got := formatError(tt.err); got != tt.want {
			t.Errorf("formatError(%v) =\n %q\nwant\n %q", tt.err, got, tt.want)
		}
	}
}

// TestCommandLineMistakes runs the command tree on mistakes that are caught
// before any connection is made, so no agent is needed.
func TestCommandLineMistakes(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"members", "extra"}, "takes no arguments"},
		{[]string{"-o", "yaml", "members"}, `--output "yaml"`},
		{[]string{"--timeout", "0s", "status"}, "--timeout"},
		{[]string{"--bogus", "members"}, "unknown flag: --bogus"},
		{[]string{"group", "get"}, "takes NAME"},
		{[]string{"group", "delete", "a", "b"}, "takes NAME"},
		{[]string{"group", "create"}, "takes NAME (or -f FILE)"},
		{[]string{"group", "create", "web", "--memory", "lots"}, "--memory"},
		{[]string{"group", "create", "web", "--disk-size", "1X"}, "--disk-size"},
		{[]string{"group", "create", "web", "--vcpus", "0"}, "--vcpus 0"},
		{[]string{"group", "create", "web", "--priority", "urgent"}, "--priority"},
		{[]string{"group", "create", "web", "--label", "novalue"}, "--label"},
		{[]string{"group", "create", "-f", "x.yaml", "--vcpus", "2"}, "--vcpus cannot be combined with -f"},
		{[]string{"dev", "--nodes", "0"}, "--nodes 0"},
		{[]string{"dev", "--base-port", "65530"}, "--base-port 65530"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			root := newRootCmd(func(string) string { return "" })
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(tt.args)
			err := root.Execute()
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v (%T), want a usage error", err, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestAddrDefault(t *testing.T) {
	for env, want := range map[string]string{"": defaultAddr, "10.0.0.5:7949": "10.0.0.5:7949"} {
		root := newRootCmd(func(k string) string {
			if k == "HAVEN_ADDR" {
				return env
			}
			return ""
		})
		if got := root.PersistentFlags().Lookup("addr").DefValue; got != want {
			t.Errorf("HAVEN_ADDR=%q: --addr defaults to %q, want %q", env, got, want)
		}
	}
}

func TestDescribeWrappedStatus(t *testing.T) {
	err := fmt.Errorf("creating demo: %w", status.Error(codes.Unavailable, "leader is 10.0.1.1:7949"))
	if got := describeError(err); !strings.HasPrefix(got, "Unavailable: ") || !strings.Contains(got, "10.0.1.1:7949") {
		t.Errorf("describeError = %q", got)
	}
}
