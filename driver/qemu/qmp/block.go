package qmp

import "context"

// BlockdevAdd adds a block node graph. args is blockdev-add's arguments,
// a struct or map, e.g. a qcow2 image:
//
//	map[string]any{"driver": "qcow2", "node-name": "drive-d1",
//		"file": map[string]any{"driver": "file", "filename": path, "node-name": "file-d1"}}
//
// The image is locked against other QEMU processes from then on.
func (c *Client) BlockdevAdd(ctx context.Context, args any) error {
	return c.Execute(ctx, "blockdev-add", args, nil)
}

// BlockdevDel removes a block node that no device uses any more; the
// children it was added with go with it.
func (c *Client) BlockdevDel(ctx context.Context, nodeName string) error {
	return c.Execute(ctx, "blockdev-del", struct {
		NodeName string `json:"node-name"`
	}{nodeName}, nil)
}

// DeviceAdd hot-plugs a device. args holds "driver", "id", "bus" and the
// device's properties, e.g. {"driver": "scsi-hd", "id": "d1", "drive":
// "drive-d1", "bus": "scsi0.0", "channel": 0, "scsi-id": 0, "lun": 1}.
func (c *Client) DeviceAdd(ctx context.Context, args map[string]any) error {
	return c.Execute(ctx, "device_add", args, nil)
}

// DeviceDel asks for a device's removal. It returns before the device is
// gone: QEMU emits DEVICE_DELETED with the id when it is (subscribe
// before the call and wait with DeviceDeleted(id)). With ACPI hot-plug
// that needs the guest's consent, which a guest may never give.
func (c *Client) DeviceDel(ctx context.Context, id string) error {
	return c.Execute(ctx, "device_del", struct {
		ID string `json:"id"`
	}{id}, nil)
}

// ObjectAdd creates a QOM object: args holds "qom-type", "id" and the
// type's properties.
func (c *Client) ObjectAdd(ctx context.Context, args map[string]any) error {
	return c.Execute(ctx, "object-add", args, nil)
}

// ObjectDel deletes the QOM object id.
func (c *Client) ObjectDel(ctx context.Context, id string) error {
	return c.Execute(ctx, "object-del", struct {
		ID string `json:"id"`
	}{id}, nil)
}

// ObjectProperty is one entry of qom-list.
type ObjectProperty struct {
	Name string `json:"name"`
	// Type is the property's type; "child<scsi-hd>" for a child object.
	Type string `json:"type"`
}

// QOMList lists the properties of the object at a QOM path. The devices
// added with an id are the children of "/machine/peripheral".
func (c *Client) QOMList(ctx context.Context, path string) ([]ObjectProperty, error) {
	var props []ObjectProperty
	err := c.Execute(ctx, "qom-list", struct {
		Path string `json:"path"`
	}{path}, &props)
	return props, err
}
