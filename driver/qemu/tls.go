package qemu

import (
	"context"

	"github.com/haven-ha/haven/driver/qemu/qmp"
)

// migrationTLS is the id of the QEMU object that holds a move's
// credentials.
const migrationTLS = "haven-migration-tls"

// armTLS makes mon's QEMU load the node's credentials for a live move's
// stream, as the endpoint ("server": the target, "client": the source),
// and returns the parameters that make the stream use them; without
// Config.TLSDir it does nothing. The files are read anew at every move,
// so that certificates and CAs rotated since the QEMU started are the
// ones used; a source's object from an earlier move is replaced.
func (d *Driver) armTLS(ctx context.Context, mon *qmp.Client, endpoint string) (qmp.MigrationParameters, error) {
	var p qmp.MigrationParameters
	if d.cfg.TLSDir == "" {
		return p, nil
	}
	_ = mon.ObjectDel(ctx, migrationTLS) // none yet is the usual case
	if err := mon.ObjectAdd(ctx, map[string]any{
		"qom-type": "tls-creds-x509", "id": migrationTLS, "dir": d.cfg.TLSDir,
		"endpoint": endpoint, "verify-peer": true,
	}); err != nil {
		return p, err
	}
	p.TLSCreds = new(migrationTLS)
	if endpoint == "client" {
		p.TLSHostname = new(d.cfg.TLSHostname)
	}
	return p, nil
}

// plainStream is what a quick move's save sets: a state file is not a
// TLS peer, whatever an earlier live move of the VM armed.
func (d *Driver) plainStream(p qmp.MigrationParameters) qmp.MigrationParameters {
	if d.cfg.TLSDir != "" {
		p.TLSCreds = new("")
	}
	return p
}
