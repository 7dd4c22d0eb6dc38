// Package servicetest holds what the services' handler tests share.
package servicetest

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// WantStatus fails unless err is a status of code whose message holds
// every part.
func WantStatus(t testing.TB, err error, code codes.Code, parts ...string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || err == nil {
		t.Fatalf("error %v: want a %v status", err, code)
	}
	if st.Code() != code {
		t.Fatalf("error %v %q: want %v", st.Code(), st.Message(), code)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Errorf("message %q: want it to contain %q", st.Message(), p)
		}
	}
}
