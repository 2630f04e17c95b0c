# The README's first two commands: `make demo` and `make test`. Both bootstrap .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lowbit-installed
EXTRAS := dev,nlp,peers

FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: demo test bench peers clean-venv data browser

# Re-runs only when the dependency list changes; the package itself is installed editable.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (root on these machines); LOWBIT_DATA points elsewhere.
data:
	@if [ -z "$$LOWBIT_DATA" ] && [ ! -f $(FASHION_MNIST) ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

# headless Chromium opens the HTML report in the tests (Debian's package; no network at run time)
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

demo: $(STAMP) data
	HF_HUB_OFFLINE=1 $(VENV)/bin/lowbit demo

# pytest exits 5 when it collected nothing: that is a failure, never a silent success.
test: $(STAMP) data browser
	$(VENV)/bin/ruff check src tests benchmarks tools
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP) data peers
	HF_HUB_OFFLINE=1 $(PY) benchmarks/observer_cost.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/weight_sqnr.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/calibration_cost.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ptq_accuracy.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/onnx_speed.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/engine_agreement.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/engine_speed.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/onnx_sizes.py
	cd benchmarks/peers && ../../$(PEERS_VENV)/bin/python nncf_dfq.py --out ../results/peers_nncf_dfq.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/dfq.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/learned_rounding.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/smoothquant.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/qat.py lenet5 --epochs 3
	HF_HUB_OFFLINE=1 $(PY) benchmarks/qat.py resnet20 --epochs 2 --train 20000
	HF_HUB_OFFLINE=1 $(PY) benchmarks/binary_gemm.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/binary_nets.py --part all --epochs 2
	HF_HUB_OFFLINE=1 $(PY) benchmarks/deep_compression.py --part all
	HF_HUB_OFFLINE=1 $(PY) benchmarks/mixed_precision.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/mixed_precision.py --base per-tensor
	HF_HUB_OFFLINE=1 $(PY) benchmarks/optim8bit.py --part memory
	HF_HUB_OFFLINE=1 $(PY) benchmarks/optim8bit.py --part speed
	HF_HUB_OFFLINE=1 $(PY) benchmarks/optim8bit.py --part train --model mlp
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gradient_compression.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gradient_compression.py --seeds 2 3 --only "fp32 all-reduce" "rotated, default" --out benchmarks/results/gradient_compression_seeds2-3
	HF_HUB_OFFLINE=1 $(PY) benchmarks/onebit_residual.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gradient_compression.py --codec-time
	HF_HUB_OFFLINE=1 $(PY) benchmarks/conv_algorithms.py --part all

# Peer quantizers (torchao, NNCF) live in their own environment with the same torch pin; only benchmarks use it.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.peers-installed
peers: $(PEERS_STAMP)
$(PEERS_STAMP): pyproject.toml constraints.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e . torchao==0.18.0 nncf==3.4.0
	touch $(PEERS_STAMP)

clean-venv:
	rm -rf $(VENV)
