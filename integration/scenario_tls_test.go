package integration

import (
	"fmt"
	"path/filepath"
	"testing"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

// TestScenarioMoveTLS measures the live-migration stream over mutual TLS
// against plaintext in one run (make bench-moves-tls): two clusters side by
// side, one with TLS, each moving the same VM (-move.mem, filled, its guest
// dirtying nothing) between its two followers; the moves alternate between
// the clusters, -runs of each, so that the machine's load falls on both
// alike. The figure is the stream's rate (the move's bytes over the time
// it took to send them) and its median over the moves.
func TestScenarioMoveTLS(t *testing.T) {
	if !*scenario {
		t.Skip("scenario runner: run with -scenario (make bench-moves-tls)")
	}
	binary(t, "haven")
	mem := *benchMoveMem
	runs := max(*scenarioRuns, 3)
	pki := newTestPKI(t, filepath.Join(t.TempDir(), "pki"), "bench CA")
	benches := []*moveBench{newMoveBench(t, 0, mem), newMoveBench(t, 0, mem, withTLS(pki))}
	labels := []string{"plaintext", "tls"}
	// rates are the source's stream rate as it reported it; overall the
	// bytes sent over the move's whole time, switchover and commit
	// included.
	rates, overall := [2][]float64{}, [2][]float64{}
	// cpu is the two ends' agents' CPU time per GiB sent: where TLS's
	// cost shows on a machine whose cores are the bottleneck.
	cpu := [2][]float64{}
	for i := 0; i < runs; i++ {
		// Alternate which goes first, so neither always follows the
		// other's kill of its 1 GiB source copy.
		for k := range 2 {
			j := (i + k) % 2
			r := benches[j].move(havenv1.MoveKind_MOVE_KIND_LIVE, 0)
			if !r.completed {
				t.Fatalf("%s move %d: %s (%s)", labels[j], i, r.op.GetOutcome(), r.op.GetReason())
			}
			rate := float64(r.op.GetProgress().GetRateBytesPerSec())
			rates[j] = append(rates[j], rate)
			overall[j] = append(overall[j], float64(r.op.GetProgress().GetBytesSent())/r.total.Seconds())
			cpu[j] = append(cpu[j], (r.cpu[0]+r.cpu[1]).Seconds()/(float64(r.op.GetProgress().GetBytesSent())/(1<<30)))
			t.Logf("%s move %d: %d bytes, stream %.0f MiB/s, total %s, CPU source %s target %s", labels[j], i, r.op.GetProgress().GetBytesSent(), rate/(1<<20), r.total, r.cpu[0], r.cpu[1])
		}
	}
	p, s := medianF(rates[0]), medianF(rates[1])
	po, so := medianF(overall[0]), medianF(overall[1])
	fmt.Printf("scenario move-tls mem=%dMiB runs=%d stream plaintext_MiB/s_median=%.0f (%s) tls_MiB/s_median=%.0f (%s) tls_over_plaintext=%.2f"+
		" whole-move plaintext_MiB/s_median=%.0f (%s) tls_MiB/s_median=%.0f (%s) tls_over_plaintext=%.2f"+
		" cpu_s_per_GiB_both_ends plaintext_median=%.2f tls_median=%.2f\n",
		mem>>20, runs, p/(1<<20), mibs(rates[0]), s/(1<<20), mibs(rates[1]), s/p,
		po/(1<<20), mibs(overall[0]), so/(1<<20), mibs(overall[1]), so/po, medianF(cpu[0]), medianF(cpu[1]))
}

func mibs(rs []float64) string {
	out := ""
	for i, r := range rs {
		if i > 0 {
			out += ","
		}
		out += fmt.Sprintf("%.0f", r/(1<<20))
	}
	return out
}
