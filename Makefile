# The two quickstart commands of the README, each doing its own setup:
#   make bench   fusedrnn against torch.nn on the local device (ARGS="--quick", "--out DIR", ...)
#   make test    the test suite (ARGS="-k lstm", ...)
# Both create .venv and install fusedrnn into it (editable) on first use, building the
# CPU extension, and the CUDA extension when nvcc and a CUDA build of torch are present
# (FUSEDRNN_BUILD_CUDA=0: never).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.fusedrnn-installed
ARGS ?=

.PHONY: bench test install

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/* csrc/cpu/* csrc/emulation/* csrc/persistent/*)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet "setuptools>=64" wheel "torch>=2.6" numpy ninja pytest pytest-benchmark matplotlib tokenizers tqdm statsmodels onnx onnxscript onnxruntime
	$(VENV)/bin/pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/fusedrnn bench $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)
