GO ?= go

.PHONY: bench-leader-sim
.PHONY: all build test check proto lint breaking tidy-check proto-check unit integration scenario bench-moves bench-moves-tls wan-steady bench-timing bench-fast-lan bench-qemu chaos concurrency load model model-if-available

all: build

build:
	$(GO) build -o bin/haven ./cmd/haven

proto:
	$(GO) tool buf generate

lint:
	$(GO) tool buf lint

check: lint breaking
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	$(MAKE) proto-check tidy-check

# breaking: the Raft log and snapshots are kept forever, so the protos must
# still read all that was written with the ones before. The baseline is the
# branch main, which a branch merges into (a branch that main has moved past
# fails until rebased, so two branches cannot take one field number). In a
# worktree ".git" is a file; buf reads it as well. In a clone of main, as CI
# runs, only uncommitted edits differ from the baseline: the gate is make
# check on the branch before it merges. Without a main ref the remote's
# default branch (origin/HEAD) is the baseline; with neither (an export, a
# single-branch clone) there is nothing to compare with, and the check says
# so and passes rather than fail for want of a baseline. BREAKING_AGAINST
# (any buf input) sets it. proto/reviewed-breaks.txt lists, as path:message,
# the breaks buf reports that were reviewed as safe for stored data.
breaking:
	@against='$(BREAKING_AGAINST)'; \
	if [ -z "$$against" ]; then \
		for ref in refs/heads/main $$(git symbolic-ref -q refs/remotes/origin/HEAD 2>/dev/null); do \
			if git rev-parse -q --verify "$$ref^{commit}" >/dev/null 2>&1; then against=".git#ref=$$ref"; break; fi; \
		done; \
	fi; \
	if [ -z "$$against" ]; then echo "buf breaking: SKIPPED: no main branch and no origin/HEAD to compare with; set BREAKING_AGAINST"; exit 0; fi; \
	rc=0; out=$$($(GO) tool buf breaking --against "$$against") || rc=$$?; \
	if [ $$rc -ne 100 ]; then [ -n "$$out" ] && echo "$$out"; exit $$rc; fi; \
	left=$$(printf '%s\n' "$$out" | awk 'BEGIN { while ((getline l < "proto/reviewed-breaks.txt") > 0) ok[l] } { k = $$0; sub(/:[0-9]+:[0-9]+:/, ":", k) } k != "" && !(k in ok)'); \
	if [ -n "$$left" ]; then echo "buf breaking against $$against:"; echo "$$left"; exit 1; fi

proto-check:
	@$(GO) tool buf generate
	@git diff --exit-code -- proto || (echo "generated code is stale: run make proto and commit"; exit 1)
	@test -z "$$(git status --porcelain -- proto | grep '^??')" || (echo "untracked generated files: run make proto and commit"; exit 1)

tidy-check:
	@$(GO) mod tidy -diff || (echo "go mod tidy would change go.mod/go.sum: run it and commit"; exit 1)

# The network lab's own tests (internal/netlab: namespaces, rules, WAN
# timing; root) run with the integration tests, as they always have; its
# pure delayer package (internal/netlab/wan) with the unit tests.
unit:
	$(GO) test -race $$($(GO) list ./... | grep -v -e /integration -e '/internal/netlab$$')

# The fuzz targets (go test -fuzz), each for FUZZTIME: the FSM's apply
# of raw log entries and its snapshot restore, the group spec checks, the
# config file. Their corpora are committed in testdata/fuzz; a crash the
# fuzzer finds is written there too, and stays once it is fixed. go test
# runs one fuzz target at a time. The minimization of each new input is
# bounded too, or a short run spends its time there.
FUZZTIME ?= 10s
FUZZ_TARGETS = ./fsm:FuzzApply ./fsm:FuzzRestore ./fsm:FuzzValidateGroupSpec ./agent:FuzzConfig
.PHONY: fuzz fuzz-short
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; echo "fuzz $$fn in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$pkg || exit 1; \
	done

# What make test runs: a few seconds per target. A count, not a duration:
# go1.26's fuzz coordinator can report its own -fuzztime deadline as a
# failure ("context deadline exceeded", no crasher; go.dev/issue/75804,
# fixed in go1.27) and a loaded CI machine hits that window; a count sets
# no deadline. The four targets take about 15 s here (time make fuzz-short).
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=2000x

integration:
	$(GO) test -count=1 -timeout 15m ./internal/netlab/ ./integration/...

# The randomized fault test for longer than the default suite does.
chaos:
	$(GO) test -count=1 -v -timeout 60m -run 'TestRandomFaults' ./integration/ -args -chaos.duration=5m

# The linearizability test of the group API, with more client load than
# the default suite gives it.
# The load test (integration/scenario_load_test.go): fifty clients for a
# minute against three agents whose leader is SIGKILLed once, plaintext and
# with mutual TLS and tokens, alternating; prints throughput, latency and
# errors by code, and the secure runs' cost as ratios.
load:
	$(GO) test -count=1 -v -timeout 60m -run 'TestScenarioLoad' ./integration/ -args -scenario -runs=$(or $(RUNS),3) | grep -E '^(\s+\S+_test.go:[0-9]+: (scenario|history)|---|ok|FAIL)'

concurrency:
	$(GO) test -count=1 -v -timeout 30m -run 'TestConcurrentClientsLinearizable' ./integration/ -args -concurrency.duration=3m

# Whole-cluster figures for the README's performance section (slow). The
# figures of moves are bench-moves', which this leaves out.
scenario:
	$(GO) test -count=1 -v -timeout 60m -run 'TestScenario' -skip 'TestScenarioMove|TestScenarioDrain|TestScenarioQemu' ./integration/ -args -scenario -runs=5 | grep -E '^(scenario|---|ok|FAIL)'

# Figures of moves for the README (integration/scenario_move_test.go): live
# moves of a 1 GiB simulated VM between two agents at guest dirty rates of
# 0, 64, 256 and 1024 MiB/s, against a probe of one stream between the
# same agents; quick moves against the shared directory's write and read
# rates; the drain of a node holding 20 groups (scenario_drain_test.go).
# MOVES per figure (default 20: 20 to 30 minutes on two cores). The whole
# output, the agents' logs of a failed run among it, goes to
# bench-moves.log; the figures to the terminal.
MOVES ?= 20
bench-moves:
	$(GO) test -count=1 -v -timeout 120m -run 'TestScenarioMove|TestScenarioDrain' -skip 'TestScenarioMoveTLS' ./integration/ -args -scenario -moves=$(MOVES) -runs=3 | tee bench-moves.log | grep -E '^(scenario|---|ok|FAIL)'

# The live-migration stream over mutual TLS against plaintext, in one run
# (integration/scenario_tls_test.go): RUNS moves of a 1 GiB VM on each of
# two clusters, alternating.
RUNS ?= 5
bench-moves-tls:
	$(GO) test -count=1 -v -timeout 30m -run 'TestScenarioMoveTLS' ./integration/ -args -scenario -runs=$(RUNS) | tee bench-moves-tls.log | grep -E '^(scenario|---|ok|FAIL)'

# Figures of the stretch cluster for the README (integration/wan_test.go,
# scenario_timing_test.go; needs root for the network lab): ten minutes of
# the steady WAN run with the default timings (false failovers, freezes,
# leader changes, lease round trips and headroom by path, the delay
# programs' cost); detection and kill-to-running times inside a site and
# across the WAN with the default profiles; the fast LAN profile
# (examples/fast-lan.yaml) under a CPU hog for ten minutes, then kills.
wan-steady:
	$(GO) test -count=1 -v -timeout 30m -run 'TestWANSteady' ./integration/ -args -wan.steady=10m -wan.timing=default | grep -E '^(\s+\S+_test.go:[0-9]+: scenario|---|ok|FAIL)'

bench-timing:
	$(GO) test -count=1 -v -timeout 60m -run 'TestScenarioTiming' ./integration/ -args -scenario -runs=3 | grep -E '^(\s+\S+_test.go:[0-9]+: scenario|---|ok|FAIL)'

bench-fast-lan:
	$(GO) test -count=1 -v -timeout 30m -run 'TestScenarioFastLAN' ./integration/ -args -scenario -runs=5 -fastlan.duration=10m | grep -E '^(\s+\S+_test.go:[0-9]+: (scenario|kill)|---|ok|FAIL)'

# Figures of real VMs for the README (integration/scenario_qemu_test.go):
# QEMU under TCG booting the test guest.
bench-qemu:
	$(GO) test -count=1 -v -timeout 60m -run 'TestScenarioQemu' ./integration/ -args -scenario -runs=5 | grep -E '^(\s+\S+_test.go:[0-9]+: run|scenario|---|ok|FAIL)'

# The SPIN model of fencing across a live-migration switchover
# (migrate/model/README.md): the full check, the end-state check, every
# ablation (each must give a counterexample) and the non-vacuity witnesses;
# under a minute on two cores. Needs spin and gcc.
model:
	@command -v spin >/dev/null 2>&1 || { echo "make model: spin is not installed (apt-get install -y spin); gcc is needed too"; exit 1; }
	@command -v gcc >/dev/null 2>&1 || { echo "make model: gcc is not installed"; exit 1; }
	migrate/model/ablate.sh

# make test runs the model where spin and gcc are installed; elsewhere it
# says it skipped, and with HAVEN_REQUIRE_LAB=1 (as .ci/run sets) a skip is
# a failure, like the lab tests'.
model-if-available:
	@if command -v spin >/dev/null 2>&1 && command -v gcc >/dev/null 2>&1; then $(MAKE) --no-print-directory model; \
	elif [ -n "$$HAVEN_REQUIRE_LAB" ]; then echo "make model: spin and gcc are required (HAVEN_REQUIRE_LAB is set)"; exit 1; \
	else echo "make model: SKIPPED: spin or gcc is not installed (apt-get install -y spin gcc)"; fi

test: check unit fuzz-short model-if-available integration

# The leader's duties at scale, without processes (agent/leader's
# TestLeaderSim): one line per figure at each NODESxGROUPS of
# LEADERSIM_SCALE. LEADERSIM_FLAGS adds go test flags, e.g.
# -cpuprofile cpu.out.
LEADERSIM_SCALE ?= 100x10000,1000x100000
bench-leader-sim:
	$(GO) test -v -count=1 -timeout 30m -run '^TestLeaderSim$$' $(LEADERSIM_FLAGS) ./agent/leader/ -leadersim -leadersim.scale=$(LEADERSIM_SCALE)

# The scale scenario (integration/scenario_scale_test.go): for each N of
# SCALE_N, N agents on loopback with 100 light groups each (at most
# 10,000), a steady window (the last N's 10 minutes unless SCALE_FLAGS
# says -scale.steady-last), a node and the leader SIGKILLed; prints the
# README's table. 3, 10 and 32 take about 15 minutes on two cores, 64
# about 10 with -scale.steady-last=2m; 100 about 25 (creation 15 min) and on such a
# machine do not yet keep a Raft leader through creation and the node
# kill every time (README, "Many agents").
SCALE_N ?= 3,10,32,64,100
SCALE_FLAGS ?=
.PHONY: bench-scale
bench-scale:
	$(GO) test -count=1 -v -timeout 180m -run 'TestScenarioScale' ./integration/ -args -scenario -scale.n=$(SCALE_N) $(SCALE_FLAGS) | tee bench-scale.log | grep -E '^(\s+\S+_test.go:[0-9]+: scenario|\||---|ok|FAIL)'
