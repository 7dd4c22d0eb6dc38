package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/haven-ha/haven/internal/rpcclient"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func newGroupCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group",
		Short: "Create, inspect, start, stop and delete groups (the unit of failover)",
		Args:  argsExactly(0, "a subcommand (create, get, list, start, stop, delete)"),
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newGroupCreateCmd(g), newGroupGetCmd(g), newGroupListCmd(g), newGroupStartCmd(g), newGroupStopCmd(g), newGroupDeleteCmd(g))
	return cmd
}

// vmFlags are the flags that build the standard group; they make no sense
// together with -f, which gives the whole spec.
var vmFlags = []string{"vcpus", "memory", "disk-size", "priority", "preferred-owner", "possible-owner", "anti-affinity", "preferred-site", "label", "kernel", "initrd", "cmdline", "machine"}

func newGroupCreateCmd(g *globalOptions) *cobra.Command {
	var (
		file, requestID          string
		vcpus                    int32
		memory, diskSize, prio   string
		site                     string
		preferred, possible, aac []string
		labels                   []string
		boot                     vmOptions
	)
	cmd := &cobra.Command{
		Use:   "create (NAME [flags] | -f FILE [NAME])",
		Short: "Create a group: a standard VM group from flags, or any group from a spec file",
		Long: `Create a group.

With NAME and flags, the group is the standard VM group: resources 'config',
'disk0' (an image NAME/disk0.img on shared storage; --disk-size 0 leaves it
out) and 'vm', which depends on both.

With -f FILE (YAML or JSON, '-' for stdin), FILE is a haven.v1.GroupSpec with
the API's field names, e.g.

  name: web
  priority: PRIORITY_HIGH
  resources:
    - {name: config, kind: RESOURCE_KIND_CONFIG}
    - name: vm
      kind: RESOURCE_KIND_VM
      dependsOn: [config]
      vm: {vcpus: 2, memoryBytes: 2147483648}

Sizes are powers of 1024 whatever the spelling: 512M = 512MiB = 536870912.`,
		Example: `  haven group create web --vcpus 2 --memory 4G --priority high --label tier=web
  haven group create sql1 --vcpus 4 --memory 16G --anti-affinity sql:hard:sites
  haven group create tiny --memory 256M --disk-size 0 --kernel /srv/vmlinuz --initrd /srv/initrd.gz --cmdline console=ttyS0
  haven group create -f web.yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var spec *havenv1.GroupSpec
			switch {
			case file != "":
				for _, f := range vmFlags {
					if cmd.Flags().Changed(f) {
						return usagef(cmd, "--%s cannot be combined with -f: put it in the spec file", f)
					}
				}
				if len(args) > 1 {
					return usagef(cmd, "with -f, NAME is optional and alone; got %d arguments", len(args))
				}
				var err error
				if spec, err = readSpecFile(cmd.InOrStdin(), file); err != nil {
					return err
				}
				if len(args) == 1 {
					switch spec.GetName() {
					case "":
						spec.Name = args[0]
					case args[0]:
					default:
						return usagef(cmd, "NAME %q differs from name %q in %s", args[0], spec.GetName(), file)
					}
				}
			case len(args) != 1:
				return usagef(cmd, "group create takes NAME (or -f FILE), got %d arguments", len(args))
			default:
				o := defaultVMOptions()
				if vcpus < 1 {
					return usagef(cmd, "--vcpus %d: must be at least 1", vcpus)
				}
				o.vcpus = vcpus
				var err error
				if o.memoryBytes, err = parseSize(memory); err != nil {
					return usagef(cmd, "--memory: %v", err)
				}
				if o.diskBytes, err = parseSize(diskSize); err != nil {
					return usagef(cmd, "--disk-size: %v", err)
				}
				if o.priority, err = parsePriority(prio); err != nil {
					return usagef(cmd, "--priority: %v", err)
				}
				if o.labels, err = parseLabels(labels); err != nil {
					return usagef(cmd, "--label: %v", err)
				}
				if o.antiAffinity, err = parseAntiAffinity(aac); err != nil {
					return usagef(cmd, "--anti-affinity: %v", err)
				}
				o.preferred, o.possible, o.site = preferred, possible, site
				o.kernel, o.initrd, o.cmdline, o.machine = boot.kernel, boot.initrd, boot.cmdline, boot.machine
				spec = standardGroupSpec(args[0], o)
			}
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.CreateGroup(ctx, &havenv1.CreateGroupRequest{Spec: spec, RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeGroupDetail(w, resp.GetGroup()) })
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "group spec as YAML or JSON (haven.v1.GroupSpec); - reads stdin")
	f.Int32Var(&vcpus, "vcpus", 1, "virtual CPUs of the VM")
	f.StringVar(&memory, "memory", "512MiB", "memory of the VM (512M, 4G, 4GiB or bytes)")
	f.StringVar(&diskSize, "disk-size", "1GiB", "size of disk0; 0 creates no disk")
	f.StringVar(&prio, "priority", "medium", "high, medium, low or no-auto-start (restart order after a failure)")
	f.StringArrayVar(&preferred, "preferred-owner", nil, "node the group should run on, in order of preference (repeatable)")
	f.StringArrayVar(&possible, "possible-owner", nil, "node the group may run on; when given, no other (repeatable)")
	f.StringArrayVar(&aac, "anti-affinity", nil, "CLASS[:hard][:sites]: groups sharing a class are kept on different nodes; hard never shares a node, sites also spreads over sites (repeatable)")
	f.StringVar(&site, "preferred-site", "", "site the group should run in when it can")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.StringVar(&boot.kernel, "kernel", "", "qemu: boot this kernel (an absolute path on every node that may run the group) instead of the disks")
	f.StringVar(&boot.initrd, "initrd", "", "qemu: the initrd for --kernel")
	f.StringVar(&boot.cmdline, "cmdline", "", "qemu: the kernel command line for --kernel")
	f.StringVar(&boot.machine, "machine", "", "qemu: the machine type (default: the node's, q35)")
	f.StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

func readSpecFile(stdin io.Reader, path string) (*havenv1.GroupSpec, error) {
	var (
		data []byte
		err  error
		name = path
	)
	if path == "-" {
		name = "stdin"
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading group spec: %w", err)
	}
	return parseSpecFile(name, data)
}

// consistentHelp explains --consistent wherever a read offers it.
const consistentHelp = "ask the leader, which first verifies it still leads: never stale (default: the agent's own copy, milliseconds behind)"

func newGroupGetCmd(g *globalOptions) *cobra.Command {
	var consistent bool
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Show one group with its desired and observed state, owner, failures and resources",
		Args:  argsExactly(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.GetGroup(ctx, &havenv1.GetGroupRequest{Name: args[0], Consistent: consistent})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeGroupDetail(w, resp.GetGroup()) })
			})
		},
	}
	cmd.Flags().BoolVar(&consistent, "consistent", false, consistentHelp)
	return cmd
}

func newGroupListCmd(g *globalOptions) *cobra.Command {
	var (
		consistent       bool
		state, node, sit string
		labels           []string
		pageSize         int32
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List groups with their state and owner",
		Long: `List groups with their state and owner, sorted by name. The agent answers
a page at a time; the list follows every page. Filters are ANDed.`,
		Example: `  haven group list --state failed
  haven group list --site a --label tier=gold --label app=db`,
		Args: argsExactly(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &havenv1.ListGroupsRequest{Consistent: consistent, Node: node, Site: sit, PageSize: pageSize}
			if state != "" {
				v, ok := havenv1.GroupState_value["GROUP_STATE_"+strings.ToUpper(state)]
				if !ok || v == 0 {
					return usagef(cmd, "--state %q: want offline, starting, online, stopping or failed", state)
				}
				req.State = havenv1.GroupState(v)
			}
			var err error
			if req.Labels, err = parseLabels(labels); err != nil {
				return usagef(cmd, "--label: %v", err)
			}
			if pageSize < 0 {
				return usagef(cmd, "--page-size %d: must not be negative", pageSize)
			}
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := rpcclient.AllGroups(ctx, c, req)
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error { return writeGroupsTable(w, resp.GetGroups()) })
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&consistent, "consistent", false, consistentHelp)
	f.StringVar(&state, "state", "", "only groups in this state (offline, starting, online, stopping, failed)")
	f.StringVar(&node, "node", "", "only groups owned by this node")
	f.StringVar(&sit, "site", "", "only groups owned by a node of this site")
	f.StringArrayVar(&labels, "label", nil, "only groups with label key=value (repeatable, ANDed)")
	f.Int32Var(&pageSize, "page-size", 0, "groups per call to the agent (0: the agent's default)")
	return cmd
}

func newGroupDeleteCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a group",
		Args:    argsExactly(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.DeleteGroup(ctx, &havenv1.DeleteGroupRequest{Name: args[0], RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "deleted group %s\n", args[0])
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

func newGroupStartCmd(g *globalOptions) *cobra.Command {
	var requestID, node string
	cmd := &cobra.Command{
		Use:   "start NAME",
		Short: "Start a group: the leader places it on a node, which starts its resources in dependency order",
		Args:  argsExactly(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.StartGroup(ctx, &havenv1.StartGroupRequest{Name: args[0], Node: node, RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					grp := resp.GetGroup()
					_, err := fmt.Fprintf(w, "group %s %s on %s (epoch %d)\n", args[0], groupStateWord(grp.GetState()), grp.GetOwner(), grp.GetEpoch())
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "start it on this node (it must be a possible owner)")
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}

func newGroupStopCmd(g *globalOptions) *cobra.Command {
	var requestID string
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a group; it stays offline until started",
		Args:  argsExactly(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c havenv1.ClusterServiceClient) error {
				resp, err := c.StopGroup(ctx, &havenv1.StopGroupRequest{Name: args[0], RequestId: requestID})
				if err != nil {
					return err
				}
				return g.render(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "group %s %s\n", args[0], groupStateWord(resp.GetGroup().GetState()))
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&requestID, "request-id", "", requestIDUsage)
	return cmd
}
