# Set-up and everyday commands. `make help` lists them.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv images base-image wheelhouse push test test-fast lint format demo demo-host serve-demo sample-data bench fuzz clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(STAMP) ## Create .venv with the project and pinned dependencies (reused when up to date)

.venv-sdk3/.installed-stamp: constraints-sdk3.txt
	@# SDK v3 conflicts with v2 (.venv): local_mode/fit_v3.py runs in its own venv, without torch
	test -x .venv-sdk3/bin/python || $(PYTHON) -m venv .venv-sdk3
	.venv-sdk3/bin/python -m pip install -q -c constraints-sdk3.txt 'sagemaker>=3,<4'
	touch $@

.PHONY: venv-sdk3
venv-sdk3: .venv-sdk3/.installed-stamp ## Create .venv-sdk3 with SDK v3 (sagemaker 3.x) for local_mode/fit_v3.py

# AWS's PyTorch inference toolkit, pinned: tests/test_portable_artifact.py serves model.tar.gz with it.
DLC_TOOLKIT := sagemaker-pytorch-inference==2.0.25
.venv-dlc/.installed-stamp: $(STAMP)
	@# It ships its own sagemaker_inference (for TorchServe), so it cannot share .venv. Its dependencies
	@# (torch, torchvision, Pillow, numpy, scipy, boto3, ...) come from .venv through a .pth file, which
	@# puts .venv's site-packages AFTER this venv's own: the toolkit's sagemaker_inference wins.
	test -x .venv-dlc/bin/python || $(PYTHON) -m venv .venv-dlc
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
		> "$$(.venv-dlc/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/byoc-dot-venv.pth"
	.venv-dlc/bin/python -m pip install -q --no-deps '$(DLC_TOOLKIT)'
	touch $@

.PHONY: venv-dlc
venv-dlc: .venv-dlc/.installed-stamp ## Create .venv-dlc with AWS's PyTorch inference toolkit (tests the portable artifact)

images: venv ## Build the training and serving images offline (engine, base image, wheelhouse) and print sizes
	docker/build.sh

base-image: ## Build the Debian base image with debootstrap from this machine's apt mirror
	docker/engine.sh
	docker/base-image.sh

wheelhouse: venv ## Download and build every wheel the images install into build/wheelhouse
	docker/wheelhouse.sh

REGION ?= $(AWS_DEFAULT_REGION)
ACCOUNT ?=
NAME ?= byoc-classifier
TAG ?= latest
push: venv ## Push the images to ECR (REGION=, ACCOUNT=, NAME=, TAG=) and print the image URIs
	@test -n "$(REGION)" || (echo "error: set REGION=... (or AWS_DEFAULT_REGION)" >&2; exit 2)
	$(BIN)/python -m ecr.push --region $(REGION) $(if $(ACCOUNT),--account $(ACCOUNT)) --name $(NAME) --tag $(TAG)

test: venv venv-sdk3 venv-dlc images ## Lint and run the whole suite (builds the images first)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q --durations=15

test-fast: venv ## The suite without the slow end-to-end runs
	$(BIN)/pytest -q -m "not slow"

lint: venv ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

sample-data: venv ## Generate the embedded sample dataset into data/sample
	$(BIN)/make-sample-data data/sample

serve-demo: venv ## Serve build/demo/model (after make demo-host) on http://localhost:8080 until Ctrl-C
	SAGEMAKER_BASE_DIR=build/demo $(BIN)/serve

SDK ?= v3
demo: images venv-sdk3 ## Build the images, train and deploy in SageMaker local mode on the sample data, classify, clean up (SDK=v2: with SDK v2)
	$(if $(filter v2,$(SDK)),$(BIN)/python -m local_mode.demo --sdk v2,.venv-sdk3/bin/python -m local_mode.demo --sdk v3)

demo-host: venv ## The same training without Docker: `train` on the host, then classify with the artifact
	$(BIN)/python scripts/demo_host.py

bench: images ## Print training throughput; serving latency and throughput (batching on/off, runtimes, int8, a burst)
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/input_pipeline.py
	$(BIN)/python bench/serve_latency.py
	$(BIN)/python bench/serve_runtimes.py
	$(BIN)/python bench/serve_int8.py
	$(BIN)/python bench/int8_accuracy.py
	test -f build/demo/model/artifact.json || $(BIN)/python scripts/demo_host.py
	$(BIN)/python bench/burst.py --image byoc-classifier-serving-cpu:latest --model build/demo/model --clients 512 --requests 4
	$(BIN)/python bench/burst.py --image byoc-classifier-serving-cpu:latest --model build/demo/model --clients 1024 --requests 2

.PHONY: bench-input
bench-input: venv ## CPU ms per training image: the course's stock pipeline against ours (real photos from Debian's opencv-doc)
	$(BIN)/python bench/input_pipeline.py

# The HTTP servers bench/http_servers.py compares, pinned here, never in .venv or constraints.txt (only
# uvicorn and h11, the chosen one, go in the images).
HTTP_SERVERS := uvicorn==0.54.0 h11==0.16.0 httptools==0.9.0 hypercorn==0.18.0 granian==2.8.9
.venv-http/.installed-stamp:
	test -x .venv-http/bin/python || $(PYTHON) -m venv .venv-http
	.venv-http/bin/python -m pip install -q $(HTTP_SERVERS)
	touch $@

.PHONY: bench-http
bench-http: .venv-http/.installed-stamp ## Conformance and overhead of uvicorn (h11, httptools), hypercorn, granian and http.server
	.venv-http/bin/python bench/http_servers.py

.PHONY: gpu-serving-deps
gpu-serving-deps: venv ## build/gpu-deps: what bench/gpu_serving.py needs beside torch on a GPU machine
	rm -rf build/gpu-deps
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt --target build/gpu-deps \
		uvicorn h11 click psutil multi-model-server
	rm -rf build/gpu-deps/mms/frontend build/gpu-deps/bin

# OpenVINO, for bench/runtimes/compare.py only: pinned here, never in .venv or constraints.txt (the
# images' pins). torch, torchvision, onnx, onnxscript and onnxruntime come from .venv through a .pth file.
OPENVINO := openvino==2026.4.1
.venv-runtimes/.installed-stamp: $(STAMP)
	test -x .venv-runtimes/bin/python || $(PYTHON) -m venv .venv-runtimes
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
		> "$$(.venv-runtimes/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/byoc-dot-venv.pth"
	.venv-runtimes/bin/python -m pip install -q -c constraints.txt '$(OPENVINO)'
	touch $@

.PHONY: bench-runtimes
bench-runtimes: .venv-runtimes/.installed-stamp ## Eager, channels_last, torch.compile, ONNX Runtime, OpenVINO side by side (batch 1, 8)
	.venv-runtimes/bin/python bench/runtimes/compare.py

fuzz: images ## Fuzz the serving container with 10,000 payloads under -m 2g (model: build/demo/model)
	test -f build/demo/model/artifact.json || $(BIN)/python scripts/demo_host.py
	$(BIN)/python bench/fuzz.py --image byoc-classifier-serving-cpu:latest --model build/demo/model \
		--count 10000 --seed 1 --clients 8 --memory 2g --network host

clean: ## Remove build outputs and the generated sample data (keeps .venv)
	rm -rf build data .pytest_cache .ruff_cache
