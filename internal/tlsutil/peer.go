package tlsutil

import (
	"context"
	"slices"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// PeerIsNode reports whether a gRPC call's caller presented a certificate
// that the server verified and that names NodeName: another agent, as
// opposed to a client. Without TLS nobody is a node.
func PeerIsNode(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return false
	}
	return slices.Contains(info.State.VerifiedChains[0][0].DNSNames, NodeName)
}
