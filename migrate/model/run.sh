#!/bin/bash
# usage: run.sh [NAME ["SPIN -D flags"]]   (needs spin and gcc: apt-get install -y spin)
# Checks switch.pml with the flags (none: the full protocol) in runs/NAME
# beside this script (or under $MODEL_RUNS): exhaustive breadth-first search,
# so a counterexample is a shortest one; its annotated trail is trail.txt.
# pan is built with gcc -O0 (PAN_CFLAGS overrides): at these sizes compiling
# pan.c with -O2 takes longer than the search it speeds up.
# Prints one summary line; exit status 0 = no error (and, where the witnesses
# are compiled in, every witness reached), 1 = counterexample or a witness
# not reached, 2 = tool failure.
name=${1:-full}; flags=${2:-}; caller=$PWD
here=$(cd "$(dirname "$0")" && pwd)
command -v spin > /dev/null || { echo "spin not found: apt-get install -y spin" >&2; exit 2; }
command -v gcc > /dev/null || { echo "gcc not found" >&2; exit 2; }
d=${MODEL_RUNS:-$here/runs}/$name; rm -rf "$d"; mkdir -p "$d"; cd "$d" || exit 2
cp "$here/switch.pml" .
echo "flags: $flags" > info.txt
spin $flags -a switch.pml > spin_a.log 2>&1 || { cat spin_a.log >&2; exit 2; }
gcc ${PAN_CFLAGS:--O0} -DSAFETY -DBFS -DVECTORSZ=256 -o pan pan.c 2> gcc.log || { cat gcc.log >&2; exit 2; }
start=$(date +%s.%N)
./pan -m10000000 > pan.out 2>&1
secs=$(echo "$(date +%s.%N) - $start" | bc)
errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' pan.out)
states=$(sed -n 's/^ *\([0-9e+.]*\) states, stored.*/\1/p' pan.out)
depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' pan.out)
[ -n "$errors" ] || { cat pan.out >&2; exit 2; }
what=
if [ -f switch.pml.trail ]; then
  spin $flags -t switch.pml 2>&1 | grep -vE "^(spin: trail|#processes|.*proc .* terminates|[0-9]+ processes created)" | sed '/^\t\t/d; /^ *$/d; s/^ *//' > trail.txt
  what=$(sed -n 's/^VIOLATED //p' trail.txt | paste -sd, -)
  [ -n "$what" ] || what=$(grep -m1 -E "^pan:[0-9]+: " pan.out)
  what="$what; trail: ${d#$caller/}/trail.txt"
fi
# the witnesses (switch.pml W1-W6): in a run without errors each must have
# been reached, or the pass says nothing; "w = n" unreached = Wn not reached
if [ "$errors" = 0 ] && grep -q "witness W1 reached" pan.c pan.m 2> /dev/null; then
  missing=$(sed -n '/unreached in proctype monitor/,/of [0-9]* states)/p' pan.out | sed -n 's/.*"w = \([1-9]\)".*/W\1/p' | paste -sd, -)
  if [ -n "$missing" ]; then what="WITNESSES NOT REACHED: $missing"; errors=witness; else what="witnesses W1-W6 reached"; fi
fi
printf "%-14s errors=%s states=%s depth=%s time=%.2fs %s\n" "$name" "$errors" "$states" "$depth" "$secs" "$what"
[ "$errors" = 0 ]
