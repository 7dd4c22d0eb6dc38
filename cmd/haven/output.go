package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/haven-ha/haven/fsm"
	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// writeJSON prints a response message as protojson, so scripts see the
// API's own field names. protojson varies its whitespace from build to build
// on purpose; re-indenting with encoding/json gives scripts and tests the
// same bytes every time without changing a name or a value.
func writeJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// dash keeps empty cells visible: tabwriter would otherwise shift the eye
// to the next column.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func enumWord(s, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s, prefix)), "_", "-")
}

func nodeStatusWord(s havenv1.NodeStatus) string {
	if s == havenv1.NodeStatus_NODE_STATUS_UNSPECIFIED {
		return "unknown"
	}
	return enumWord(s.String(), "NODE_STATUS_")
}

// nodeStatusLabel adds the operator's drain to gossip's verdict.
func nodeStatusLabel(n *havenv1.Node) string {
	if n.GetDraining() {
		return nodeStatusWord(n.GetStatus()) + ", draining"
	}
	return nodeStatusWord(n.GetStatus())
}

func roleWord(n *havenv1.NodeInfo) string {
	role := "-"
	switch {
	case n.GetRaftRole() == havenv1.RaftRole_RAFT_ROLE_NONE && n.GetNode().GetStatus() == havenv1.NodeStatus_NODE_STATUS_ALIVE:
		// Outside the configuration (raft.max_members), it follows the
		// committed log by stream from a member.
		role = "log follower"
	case n.GetRaftRole() != havenv1.RaftRole_RAFT_ROLE_UNSPECIFIED:
		role = enumWord(n.GetRaftRole().String(), "RAFT_ROLE_")
	}
	var marks []string
	if n.GetLeader() {
		marks = append(marks, "leader")
	}
	if n.GetNode().GetWitness() {
		marks = append(marks, "witness")
	}
	if len(marks) > 0 {
		role += " (" + strings.Join(marks, ", ") + ")"
	}
	return role
}

func groupStateWord(s havenv1.GroupState) string {
	if s == havenv1.GroupState_GROUP_STATE_UNSPECIFIED {
		return "unknown"
	}
	return enumWord(s.String(), "GROUP_STATE_")
}

// priorityWord shows an unset priority as what it means, medium.
func priorityWord(p havenv1.Priority) string {
	if p == havenv1.Priority_PRIORITY_UNSPECIFIED {
		p = havenv1.Priority_PRIORITY_MEDIUM
	}
	return enumWord(p.String(), "PRIORITY_")
}

func kindWord(k havenv1.ResourceKind) string {
	if k == havenv1.ResourceKind_RESOURCE_KIND_UNSPECIFIED {
		return "unknown"
	}
	return enumWord(k.String(), "RESOURCE_KIND_")
}

// groupDemand is what the group asks of a node. The API says a zero demand
// is derived from the VM resources; the table shows that derived figure
// (one vCPU = 1000 milli-CPUs) rather than a misleading 0.
func groupDemand(s *havenv1.GroupSpec) (cpuMillis, memoryBytes int64) {
	cpuMillis, memoryBytes = s.GetCpuMillis(), s.GetMemoryBytes()
	var vmCPU, vmMem int64
	for _, r := range s.GetResources() {
		if vm := r.GetVm(); vm != nil {
			vmCPU += int64(vm.GetVcpus()) * 1000
			vmMem += vm.GetMemoryBytes()
		}
	}
	if cpuMillis == 0 {
		cpuMillis = vmCPU
	}
	if memoryBytes == 0 {
		memoryBytes = vmMem
	}
	return cpuMillis, memoryBytes
}

// writeNodesTable prints members sorted by site, then name, so the same
// cluster always reads the same way whatever order the agent answered in.
func writeNodesTable(w io.Writer, resp *havenv1.ListNodesResponse) error {
	nodes := slices.Clone(resp.GetNodes())
	slices.SortStableFunc(nodes, func(a, b *havenv1.NodeInfo) int {
		if c := strings.Compare(a.GetNode().GetSite(), b.GetNode().GetSite()); c != 0 {
			return c
		}
		return strings.Compare(a.GetNode().GetName(), b.GetNode().GetName())
	})
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tSITE\tSTATUS\tROLE\tGOSSIP\tRAFT\tGRPC\tCPU\tMEMORY")
	for _, ni := range nodes {
		n := ni.GetNode()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			dash(n.GetName()), dash(n.GetSite()), nodeStatusLabel(n), roleWord(ni),
			dash(n.GetGossipAddr()), dash(n.GetRaftAddr()), dash(n.GetGrpcAddr()),
			formatCPU(n.GetCapacity().GetCpuMillis()), formatSize(n.GetCapacity().GetMemoryBytes()))
	}
	return tw.Flush()
}

func writeGroupsTable(w io.Writer, groups []*havenv1.Group) error {
	groups = slices.Clone(groups)
	slices.SortStableFunc(groups, func(a, b *havenv1.Group) int {
		return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName())
	})
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tDESIRED\tSTATE\tOWNER\tEPOCH\tPRIORITY\tCPU\tMEMORY\tRESOURCES")
	for _, g := range groups {
		s := g.GetSpec()
		cpu, mem := groupDemand(s)
		var names []string
		for _, r := range s.GetResources() {
			names = append(names, r.GetName())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
			dash(s.GetName()), desiredWord(fsm.Desired(g)), groupStateWord(g.GetState()), dash(g.GetOwner()), g.GetEpoch(),
			priorityWord(s.GetPriority()), formatCPU(cpu), formatSize(mem), dash(strings.Join(names, ",")))
	}
	return tw.Flush()
}

// writeGroupDetail prints one group for a person: its settings as aligned
// key: value lines (optional ones only when set), then its resources.
func desiredWord(d havenv1.DesiredState) string {
	return enumWord(d.String(), "DESIRED_STATE_")
}

func writeGroupDetail(w io.Writer, g *havenv1.Group) error {
	s := g.GetSpec()
	cpu, mem := groupDemand(s)
	tw := newTable(w)
	kv := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	opt := func(k string, vs []string) {
		if len(vs) > 0 {
			kv(k, strings.Join(vs, ", "))
		}
	}
	kv("Name", s.GetName())
	kv("Desired", desiredWord(fsm.Desired(g)))
	kv("State", groupStateWord(g.GetState()))
	if g.GetStateReason() != "" {
		kv("Reason", g.GetStateReason())
	}
	for _, f := range g.GetFailures() {
		kv("Failed on "+f.GetNode(), f.GetTime().AsTime().UTC().Format(time.RFC3339)+": "+f.GetReason())
	}
	kv("Owner", dash(g.GetOwner()))
	kv("Epoch", fmt.Sprint(g.GetEpoch()))
	if dc := g.GetDiskChange(); dc != nil {
		kv("Disk change", diskChangeWord(dc))
	}
	kv("Priority", priorityWord(s.GetPriority()))
	kv("CPU", formatCPU(cpu))
	kv("Memory", formatSize(mem))
	opt("Preferred owners", s.GetPreferredOwners())
	opt("Possible owners", s.GetPossibleOwners())
	var aas []string
	for _, aa := range s.GetAntiAffinity() {
		aas = append(aas, antiAffinityWord(aa))
	}
	opt("Anti-affinity", aas)
	if s.GetPreferredSite() != "" {
		kv("Preferred site", s.GetPreferredSite())
	}
	if len(s.GetLabels()) > 0 {
		var ls []string
		for k, v := range s.GetLabels() {
			ls = append(ls, k+"="+v)
		}
		slices.Sort(ls)
		opt("Labels", ls)
	}
	if f := s.GetFailback(); f != nil && f.GetMode() != havenv1.FailbackMode_FAILBACK_MODE_UNSPECIFIED {
		v := enumWord(f.GetMode().String(), "FAILBACK_MODE_")
		if f.GetMode() == havenv1.FailbackMode_FAILBACK_MODE_WINDOW {
			v += fmt.Sprintf(" %02d:00-%02d:00 UTC", f.GetWindowStartHour(), f.GetWindowEndHour())
		}
		kv("Failback", v)
	}
	if r := s.GetRestart(); r != nil && (r.GetMaxRestarts() > 0 || r.GetPeriod() != nil) {
		kv("Restart", fmt.Sprintf("at most %d in %s", r.GetMaxRestarts(), r.GetPeriod().AsDuration()))
	}
	if t := g.GetCreateTime(); t != nil {
		kv("Created", t.AsTime().UTC().Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintln(tw, "RESOURCE\tKIND\tDEPENDS ON\tDETAILS")
	for _, r := range s.GetResources() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.GetName(), kindWord(r.GetKind()), dash(strings.Join(r.GetDependsOn(), ",")), dash(resourceDetails(r)))
	}
	return tw.Flush()
}

func resourceDetails(r *havenv1.Resource) string {
	switch {
	case r.GetVm() != nil:
		return fmt.Sprintf("vcpus=%d memory=%s", r.GetVm().GetVcpus(), formatSize(r.GetVm().GetMemoryBytes()))
	case r.GetDisk() != nil:
		return fmt.Sprintf("path=%s size=%s slot=%d", r.GetDisk().GetPath(), formatSize(r.GetDisk().GetSizeBytes()), r.GetDisk().GetSlot())
	case r.GetIp() != nil:
		return "address=" + r.GetIp().GetAddress()
	case len(r.GetConfig().GetSettings()) > 0:
		var ls []string
		for k, v := range r.GetConfig().GetSettings() {
			ls = append(ls, k+"="+v)
		}
		slices.Sort(ls)
		return strings.Join(ls, " ")
	}
	return ""
}

// writeStatus prints GetStatus as aligned key: value lines, then a table
// of the sites.
func writeStatus(w io.Writer, s *havenv1.GetStatusResponse) error {
	tw := newTable(w)
	kv := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	leader := "(none)"
	if s.GetLeader() != "" {
		leader = s.GetLeader()
		if s.GetLeaderAddr() != "" {
			leader += " (" + s.GetLeaderAddr() + ")"
		}
	}
	kv("Node", dash(s.GetNode()))
	kv("Leader", leader)
	kv("Raft state", dash(s.GetRaftState()))
	kv("Term", s.GetTerm())
	kv("Commit index", s.GetCommitIndex())
	kv("Applied index", s.GetAppliedIndex())
	kv("Voters", s.GetVoters())
	kv("Nonvoters", s.GetNonvoters())
	kv("Quorum size", s.GetQuorumSize())
	kv("Alive voters", s.GetAliveVoters())
	kv("Nodes", fmt.Sprintf("%d alive / %d total", s.GetAliveNodes(), s.GetNodeCount()))
	kv("Groups", s.GetGroupCount())
	if len(s.GetSiteSummaries()) == 0 {
		// An agent from before the per-site summary.
		kv("Sites", dash(strings.Join(s.GetSites(), ", ")))
	}
	if s.GetReserveK() > 0 || s.GetReserveSites() > 0 {
		kv("Reserve", s.GetReserveSummary())
	} else {
		kv("Reserve", "off (placement.reserve 0, or too few nodes)")
	}
	switch {
	case s.GetReserveSites() > 0:
		kv("Site-loss reserve", "on (placement.reserve_sites 1): every HA group must survive the loss of any one site")
	case s.GetConfiguredReserveSites() > 0:
		kv("Site-loss reserve", "not kept: placement.reserve_sites is 1, but fewer than two sites host groups")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.GetSiteSummaries()) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	return writeSitesTable(w, s.GetSiteSummaries())
}

// writeSitesTable prints one line per site, then why each site whose loss
// breaks the reserve breaks it.
func writeSitesTable(w io.Writer, sites []*havenv1.SiteSummary) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "SITE\tKIND\tNODES\tVOTERS\tLEADER\tRUNNING\tSITE LOSS")
	var why []string
	for _, ss := range sites {
		kind, leader, loss := "data", "-", "-"
		if ss.GetWitnessOnly() {
			kind = "witness"
		}
		if ss.GetLeader() {
			leader = "yes"
		}
		switch ss.GetReserve() {
		case havenv1.SiteReserveState_SITE_RESERVE_STATE_HOLDS:
			loss = "holds"
		case havenv1.SiteReserveState_SITE_RESERVE_STATE_BROKEN:
			loss = "broken"
			why = append(why, ss.GetReserveBreach())
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d\t%s\t%d\t%s\n", dash(ss.GetName()), kind, ss.GetAliveNodes(), ss.GetNodeCount(),
			ss.GetVoters(), leader, ss.GetGroupsRunning(), loss)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range why {
		fmt.Fprintln(w, line)
	}
	return nil
}
