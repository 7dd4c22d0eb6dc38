GO ?= go

.PHONY: all build test check proto lint tidy-check proto-check unit integration scenario chaos concurrency

all: build

build:
	$(GO) build -o bin/haven ./cmd/haven

proto:
	$(GO) tool buf generate

lint:
	$(GO) tool buf lint

check: lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	$(MAKE) proto-check tidy-check

proto-check:
	@$(GO) tool buf generate
	@git diff --exit-code -- proto || (echo "generated code is stale: run make proto and commit"; exit 1)
	@test -z "$$(git status --porcelain -- proto | grep '^??')" || (echo "untracked generated files: run make proto and commit"; exit 1)

tidy-check:
	@$(GO) mod tidy -diff || (echo "go mod tidy would change go.mod/go.sum: run it and commit"; exit 1)

unit:
	$(GO) test -race $$($(GO) list ./... | grep -v /integration)

integration:
	$(GO) test -count=1 -timeout 15m ./integration/...

# The randomized fault test for longer than the default suite does.
chaos:
	$(GO) test -count=1 -v -timeout 60m -run 'TestRandomFaults' ./integration/ -args -chaos.duration=5m

# The linearizability test of the group API, with more client load than
# the default suite gives it.
concurrency:
	$(GO) test -count=1 -v -timeout 30m -run 'TestConcurrentClientsLinearizable' ./integration/ -args -concurrency.duration=3m

# Whole-cluster figures for the README's performance section (slow).
scenario:
	$(GO) test -count=1 -v -timeout 60m -run 'TestScenario' ./integration/ -args -scenario -runs=5 | grep -E '^(scenario|---|ok|FAIL)'

test: check unit integration
