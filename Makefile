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

# The demo's weights: `auto` = the published ones when cached, else
# synthetic full-size ones (made once); or a models folder.
DEMO_MODELS ?= auto
# Full-size WiLoR on a laptop CPU takes seconds per frame (milliseconds on
# Metal or CUDA): the demo waits for its first events up to this long.
DEMO_SECONDS ?= 150
DEMO_EVENTS ?= 3

# The main job: report the runtime, check the hand models against the
# PyTorch reference, then the daemon demo (replay -> gRPC -> subscriber).
run: release
	target/release/posed doctor
	target/release/posed fixture check --dir $(FIXTURES)/hands
	target/release/posed fixture check --dir $(FIXTURES)/body
	target/release/posed fixture check --dir $(FIXTURES)/matte
	scripts/demo.sh $(DEMO_MODELS) $(DEMO_SECONDS) $(DEMO_EVENTS)

# Every test, after installing what they need; then the reliability
# scripts' short runs (faults and a 30 s soak against target/debug/posed).
test: setup
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) test --features cpu-profile --test cpu_profile
	scripts/reliability/ci.sh

# On Linux, lint also type-checks the AVFoundation backend for Apple Silicon
# (--lib only: a dev-dependency's C code needs the macOS SDK).
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets --features cpu-profile -- -D warnings
ifeq ($(shell uname -s),Linux)
	CC_aarch64_apple_darwin=clang AR_aarch64_apple_darwin=llvm-ar $(CARGO) clippy -p posed-capture --lib --target aarch64-apple-darwin -- -D warnings
endif

fmt:
	$(CARGO) fmt --all

# A folder that makes the same binary run on an NVIDIA GPU (see deploy/cuda/README.md).
cuda-runtime:
	deploy/cuda/make-runtime.sh dist/mlx-cuda

clean:
	$(CARGO) clean
