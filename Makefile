# posed: the two commands are `make run` and `make test`; the rest are steps.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: setup build release run doctor test lint fmt clean cuda-runtime

# Idempotent: system packages, the MLX wheel and the patched mlx-sys (Linux).
setup:
	@scripts/install-deps.sh
	@scripts/setup-mlx.sh

build: setup
	$(CARGO) build --workspace

release: setup
	$(CARGO) build --release --bin posed

doctor: release
	target/release/posed doctor

FIXTURES ?= ../shared/fixtures

# The main job: report the runtime, check the hand models against the
# PyTorch reference, then the daemon demo (replay -> gRPC -> subscriber).
run: release
	target/release/posed doctor
	target/release/posed fixture check --dir $(FIXTURES)/hands
	scripts/demo.sh $(FIXTURES)/hands 5

# Every test, after installing what they need.
test: setup
	$(CARGO) test --workspace --no-fail-fast

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# A folder that makes the same binary run on an NVIDIA GPU (see deploy/cuda/README.md).
cuda-runtime:
	deploy/cuda/make-runtime.sh dist/mlx-cuda

clean:
	$(CARGO) clean
