# Set-up is automatic: every target below creates .venv, installs the package and fetches the offline data.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo test test-fast test-avx2 bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt-get exists (the loader falls back to
# torchvision's download elsewhere).
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "warning: could not install dataset-fashion-mnist; res2net train will try torchvision's download"; \
	fi

demo: setup
	$(BIN)/res2net train

# The tests that depend on the CPU's class (precision, fusion, runtimes, training) once more with PyTorch capped
# to AVX2 (oneDNN's convolutions and ATen's kernels: docs/BENCHMARKS.md "CPU classes"), so that an AVX2
# regression fails CI on an AVX-512 machine too.
AVX2_EMULATION := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
AVX2_TESTS := tests/test_hardware.py tests/test_optimize.py tests/test_backends.py tests/test_train.py \
	tests/test_engine.py

test: setup
	bash tools/pytest_parallel.sh $(BIN)/python --durations=15 -m "not serial"
	$(BIN)/python -m pytest -q -m serial
	$(AVX2_EMULATION) bash tools/pytest_parallel.sh $(BIN)/python -m "not serial" $(AVX2_TESTS)

test-fast: setup
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

test-avx2: setup
	$(AVX2_EMULATION) bash tools/pytest_parallel.sh $(BIN)/python -m "not serial" $(AVX2_TESTS)

bench: setup
	$(BIN)/res2net bench --train --out runs/bench

clean:
	rm -rf $(VENV) build *.egg-info
