#!/bin/bash
# Runs the full protocol, the end-state run and every ablation of README.md,
# two at a time. Exit status 0 only if every run gives what it should: no
# error where "pass", a counterexample where "fail".
#   - each ablation (a)-(e) runs with "one runner" as its only property
#     (RUNNERONLY=1), so its counterexample ends with two VMs of the group
#     running at once; those of (a), (b), (c), (e1) and (e2) need no failover
#     and run without one (FAILOVER=0), which keeps their trails to the plain
#     switchover;
#   - the runs without errors also check that every witness W1-W6 of
#     switch.pml is reached, and the two noresume runs show that a missing
#     witness and a bad end state are caught.
# "ablate.sh all" also runs each ablation with every property checked (its
# shortest counterexample, which may break another invariant first).
here=$(cd "$(dirname "$0")" && pwd)
command -v spin > /dev/null || { echo "ablate.sh: spin not found: install it (apt-get install -y spin)" >&2; exit 2; }
command -v gcc > /dev/null || { echo "ablate.sh: gcc not found" >&2; exit 2; }
runs=${MODEL_RUNS:-$here/runs}; mkdir -p "$runs"; export MODEL_RUNS=$runs
# expect name flags
jobs=(
  "pass quiesce -DQUIESCE=1"
  "pass full"
  "fail a_unpause -DPAUSESTICKY=0 -DRUNNERONLY=1 -DFAILOVER=0"
  "fail b_selfresume -DREADYHOLD=0 -DRUNNERONLY=1 -DFAILOVER=0"
  "fail c_nocas -DCASOP=0 -DRUNNERONLY=1 -DFAILOVER=0"
  "fail d1_viewonly -DACTGRANT=0 -DRUNNERONLY=1"
  "fail d2_grantonly -DACTVIEW=0 -DRUNNERONLY=1"
  "fail d3_nophase -DACTVIEW=2 -DRUNNERONLY=1"
  "fail e1_completes -DNEWLDR=1 -DRUNNERONLY=1 -DFAILOVER=0"
  "fail e2_rollsback -DNEWLDR=2 -DRUNNERONLY=1 -DFAILOVER=0"
  "pass e3_endmove_cas -DNEWLDR=3"
  "fail noresume -DRBRESUME=0"
  "fail noresume_end -DQUIESCE=1 -DRBRESUME=0"
)
if [ "$1" = all ]; then
  jobs+=(
    "fail a_all -DPAUSESTICKY=0"
    "fail b_all -DREADYHOLD=0"
    "fail c_all -DCASOP=0"
    "fail d1_all -DACTGRANT=0"
    "fail d2_all -DACTVIEW=0"
    "fail d3_all -DACTVIEW=2"
    "fail e1_all -DNEWLDR=1"
    "fail e2_all -DNEWLDR=2"
  )
fi
one() {
  local expect=$1 name=$2; shift 2
  local line; line=$("$here/run.sh" "$name" "$*" 2>&1); local rc=$?
  local got=pass; [ $rc = 1 ] && got=fail; [ $rc -gt 1 ] && got=broken
  local mark=ok; [ "$got" = "$expect" ] || mark=WRONG
  printf "%-5s expect=%s got=%-6s %s\n" "$mark" "$expect" "$got" "$line" > "$runs/$name.result"
}
start=$(date +%s.%N)
for j in "${jobs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
  one $j &
done
wait
bad=0
for j in "${jobs[@]}"; do
  set -- $j; cat "$runs/$2.result"; grep -q '^ok ' "$runs/$2.result" || bad=1
done
printf "total wall time %.1fs\n" "$(echo "$(date +%s.%N) - $start" | bc)"
[ $bad = 0 ] && echo "all runs as expected" || echo "SOME RUNS NOT AS EXPECTED"
exit $bad
