package server

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haven-ha/haven/agent/services/cluster"
	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// rawCodec sends bytes as they are, so a test can put on the wire what no
// generated client would.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// Bad input on the wire gets a status and leaves the server serving: an
// unknown service or method, bytes that are no message, a message over
// the limit (refused before it is decoded).
func TestBadMessagesRefused(t *testing.T) {
	a := startAgent(t, &Forwarder{
		Self: "n1", LeaderOnly: cluster.LeaderOnly, IsLeader: func() bool { return true },
		Locate: func() (string, string, error) { return "", "", errors.New("no leader to ask") },
	})
	conn, err := rpcclient.Dial(a.addr, grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallSendMsgSize(4*MaxMessageBytes)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	invoke := func(method string, req []byte) error {
		var reply []byte
		return conn.Invoke(callCtx(t), method, &req, &reply)
	}
	for _, tc := range []struct {
		what, method string
		req          []byte
		want         codes.Code
	}{
		{"unknown service", "/haven.v1.NoSuchService/Get", nil, codes.Unimplemented},
		{"unknown method", "/haven.v1.ClusterService/NoSuchMethod", nil, codes.Unimplemented},
		{"not a message", "/haven.v1.ClusterService/CreateGroup", []byte{0xff, 0xff, 0xff, 0xff}, codes.Internal},
		{"invalid UTF-8 in a string", "/haven.v1.ClusterService/GetGroup", []byte{0x0a, 0x02, 0xff, 0xfe}, codes.Internal},
		{"over the limit", "/haven.v1.ClusterService/CreateGroup", bytes.Repeat([]byte{0}, MaxMessageBytes+1), codes.ResourceExhausted},
	} {
		if err := invoke(tc.method, tc.req); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
	}
	// Still serving.
	if _, err := a.client.GetGroup(callCtx(t), &havenv1.GetGroupRequest{Name: "web"}); err != nil {
		t.Fatalf("after the bad input: %v", err)
	}
}
