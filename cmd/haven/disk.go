package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newDiskCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "disk",
		Short: "Attach a disk to a group, or detach one, also while it runs (hot-plug)",
		Long: `Attach a disk to a group, or detach one, also while it runs.

The change is recorded in the group's spec, so every later start, failover or
move brings it along. A group that runs gets the disk hot-plugged into (or out
of) its VMs by its owner, and the command returns once the owner has done so;
if the owner cannot (a file the driver cannot use, a guest that does not
release the device), the change is undone and the command says why. A group
that does not run only records it: its VMs start with it. Should the owner not
answer within --timeout, the command says the change is pending, and 'haven
group get GROUP' shows how it ends.`,
		Args: argsExactly(0, "a subcommand (attach, detach)"),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newDiskAttachCmd(g), newDiskDetachCmd(g))
	return cmd
}

func newDiskAttachCmd(g *globalOptions) *cobra.Command {
	var name, path, size, format, requestID string
	cmd := &cobra.Command{
		Use:   "attach GROUP --name NAME --path PATH --size SIZE [--format raw|qcow2]",
		Short: "Add a disk to a group; a running group's VMs get it at once",
		Long: `Add a disk to a group; a running group's VMs get it at once.

PATH is relative to the shared storage root (shared_dir) and may belong to no
other group. The disk comes last: the VMs still boot from their first disk.
Refused for a group whose owner's driver cannot hot-plug while it runs (stop
it first), and while it moves or another disk change of it is pending.`,
		Example: `  haven disk attach web --name data --path web/data.img --size 10G
  haven disk attach db --name logs --path db/logs.qcow2 --size 50G --format qcow2`,
		Args: argsExactly(1, "GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case name == "":
				return usagef(cmd, "--name is required: the disk's name in the group")
			case path == "":
				return usagef(cmd, "--path is required: the image, relative to the shared storage root")
			case size == "":
				return usagef(cmd, "--size is required, e.g. 10G")
			case format != "raw" && format != "qcow2":
				return usagef(cmd, "--format %q: must be raw or qcow2", format)
			}
			bytes, err := parseSize(size)
			if err != nil {
				return usagef(cmd, "--size: %v", err)
			}
			if bytes < 1 {
				return usagef(cmd, "--size %s: must be at least one byte", size)
			}
			disk := &havenv1.Resource{Name: name, Kind: havenv1.ResourceKind_RESOURCE_KIND_DISK,
				Disk: &havenv1.DiskSpec{Path: path, SizeBytes: bytes, Format: format}}
			if format == "raw" {
				disk.Disk.Format = "" // raw is the default: the spec stays as group create writes it
			}
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.AttachDisk(ctx, &havenv1.AttachDiskRequest{Group: args[0], Disk: disk, RequestId: requestID})
				if err != nil {
					return err
				}
				return g.renderDiskChange(cmd.OutOrStdout(), resp, args[0], name, resp.GetGroup(), resp.GetChange())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the disk's name in the group (a resource name)")
	f.StringVar(&path, "path", "", "the image, relative to the shared storage root")
	f.StringVar(&size, "size", "", "its size (10G, 512MiB or bytes)")
	f.StringVar(&format, "format", "raw", "its format: raw or qcow2")
	f.StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

func newDiskDetachCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:   "detach GROUP NAME",
		Short: "Take a disk out of a group; a running group's VMs release it at once",
		Long: `Take a disk out of a group; a running group's VMs release it at once.

The disk stays the group's (no other group may take its path) until no VM
holds it. The group's first disk is refused: its VMs boot from it. The image
itself is left on the shared storage.`,
		Example: `  haven disk detach web data`,
		Args:    argsExactly(2, "GROUP NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.DetachDisk(ctx, &havenv1.DetachDiskRequest{Group: args[0], Disk: args[1], RequestId: requestID})
				if err != nil {
					return err
				}
				return g.renderDiskChange(cmd.OutOrStdout(), resp, args[0], args[1], resp.GetGroup(), resp.GetChange())
			})
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

// renderDiskChange prints what became of a disk change; one still pending
// when the call returned is an error, so a script does not go on as if
// the VMs had the disk.
func (g *globalOptions) renderDiskChange(w io.Writer, resp proto.Message, group, disk string, grp *havenv1.Group, dc *havenv1.DiskChange) error {
	if err := g.render(w, resp, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, diskChangeLine(group, disk, grp, dc))
		return err
	}); err != nil {
		return err
	}
	if dc != nil && dc.GetOutcome() == havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_UNSPECIFIED {
		return fmt.Errorf("the %s is still pending on %s: 'haven group get %s' shows how it ends", fsm.DescribeDiskChange(dc), dc.GetNode(), group)
	}
	return nil
}

// diskChangeLine says what became of a disk change, in one line.
func diskChangeLine(group, disk string, grp *havenv1.Group, dc *havenv1.DiskChange) string {
	if dc == nil {
		// A retried request whose change a later one replaced.
		return fmt.Sprintf("group %s: the change of disk %s was made earlier; 'haven group get %s' shows the group's disks", group, disk, group)
	}
	done := "attached to"
	if dc.GetKind() == havenv1.DiskChangeKind_DISK_CHANGE_KIND_DETACH {
		done = "detached from"
	}
	switch dc.GetOutcome() {
	case havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_APPLIED:
		return fmt.Sprintf("disk %s %s group %s, running on %s (epoch %d)", disk, done, group, dc.GetNode(), dc.GetEpoch())
	case havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_RECORDED:
		return fmt.Sprintf("disk %s %s group %s: %s", disk, done, group, dc.GetReason())
	case havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_UNSPECIFIED:
		return fmt.Sprintf("disk %s: pending on %s (epoch %d), group %s", disk, dc.GetNode(), dc.GetEpoch(), groupStateWord(grp.GetState()))
	}
	return fmt.Sprintf("disk %s: %s", disk, diskChangeWord(dc))
}

// diskChangeWord is a change's outcome and reason, for group get.
func diskChangeWord(dc *havenv1.DiskChange) string {
	out := "pending"
	if o := dc.GetOutcome(); o != havenv1.DiskChangeOutcome_DISK_CHANGE_OUTCOME_UNSPECIFIED {
		out = enumWord(o.String(), "DISK_CHANGE_OUTCOME_")
	}
	s := fmt.Sprintf("%s: %s", fsm.DescribeDiskChange(dc), out)
	if dc.GetNode() != "" {
		s += fmt.Sprintf(" on %s at epoch %d", dc.GetNode(), dc.GetEpoch())
	}
	if dc.GetReason() != "" {
		s += " (" + dc.GetReason() + ")"
	}
	return s
}
