GO ?= go

.PHONY: all build test check proto lint fmt tidy-check proto-check unit integration

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
	@cp go.mod /tmp/haven-go.mod.bak; cp go.sum /tmp/haven-go.sum.bak
	@$(GO) mod tidy
	@if ! git diff --quiet -- go.mod go.sum; then echo "go mod tidy changes go.mod/go.sum: run it and commit"; git diff -- go.mod go.sum | head -40; exit 1; fi

unit:
	$(GO) test -race ./fsm/... ./quorum/... ./heartbeat/... ./agent/... ./placement/... ./cmd/...

integration:
	$(GO) test -count=1 -timeout 15m ./integration/...

test: check unit integration
