# Two commands matter: `make reproduce` (fresh machine -> finished embedded default) and `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
CORES  ?= all
PARAMS ?= params/default.yaml
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist
FMNIST_LOCAL  := data/raw/fashion-mnist
FMNIST_FILES  := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: reproduce test setup data report ui lint bench clean fashion-mnist fashion-mnist-missing fashion-mnist-report

# CPU=1, on a Linux machine without a GPU: requirements-cpu.lock, the lock without triton and cuda-bindings
# (5.5 GB instead of 6.4 GB; torch still needs the nvidia-* libraries to import). docs/install.md
LOCK := $(if $(CPU),requirements-cpu.lock,requirements.lock)

$(VENV)/.installed: $(LOCK) pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CPU),--no-deps) -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST into data/raw/fashion-mnist/: byte-identical copies of Debian's package (installed when
# root and missing), so data/raw/ matches the committed data.dvc; then `dvc commit` fills the DVC cache from
# it, the folder's manifest included (each dataset's version is derived from it: docs/data.md). It leaves
# data.dvc alone; where data/raw/ differs from it (a dataset added or changed there), it refuses, and we warn.
data: setup
	@for f in $(FMNIST_FILES); do [ -f $(FMNIST_LOCAL)/$$f ] || missing=1; done; \
	if [ -z "$$missing" ]; then echo "Fashion-MNIST: found in $(FMNIST_LOCAL)/"; \
	else \
	  if [ ! -f $(FMNIST_DEBIAN)/$(firstword $(FMNIST_FILES)) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; fi; \
	  if [ -f $(FMNIST_DEBIAN)/$(firstword $(FMNIST_FILES)) ]; then mkdir -p $(FMNIST_LOCAL) && \
	    for f in $(FMNIST_FILES); do [ -f $(FMNIST_LOCAL)/$$f ] || cp $(FMNIST_DEBIAN)/$$f $(FMNIST_LOCAL)/$$f || exit 1; done; \
	    echo "Fashion-MNIST: copied from $(FMNIST_DEBIAN)/ to $(FMNIST_LOCAL)/"; \
	  else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or put the four IDX .gz files into $(FMNIST_LOCAL)/"; exit 1; fi; \
	fi
	@dvc commit data.dvc || echo "WARNING: data/raw/ differs from data.dvc: 'dvc add data/raw' records it as a new version (commit data.dvc), 'dvc checkout data.dvc' restores the committed one"

# check first: a YAML error then names its file and line (Snakemake's own parse says neither)
reproduce: data
	$(PY) -m pipeline_src check --params $(PARAMS)
	snakemake --cores $(CORES) --configfile $(PARAMS)

# `make test`: all but the slow and SLURM tests (a few minutes); `make test ALL=1`: every test, as CI runs them
test: setup
	$(PY) -m pytest $(if $(ALL),,-m "not slow and not slurm")

report: setup
	snakemake --configfile $(PARAMS) --report results/report.html

# Paper-protocol evidence on the full Fashion-MNIST (several CPU hours; resumable run by run), then the
# published report folder; fashion-mnist-report rebuilds that folder from its committed metrics.json alone.
fashion-mnist: data
	snakemake --cores $(CORES) --configfile params/fashion_mnist.yaml --keep-going --rerun-incomplete
	$(PY) -m pipeline_src report --params params/fashion_mnist.yaml --results results/fashion_mnist --out reports/fashion-mnist

# Only the declared runs the committed report lacks, cells closest to done first (RUNS=N: the first N,
# a batch that fits one session), then collect: Snakemake retrains what they need (a frozen run's base).
fashion-mnist-missing: data
	@targets="$$($(PY) -m pipeline_src missing --params params/fashion_mnist.yaml --report reports/fashion-mnist $(if $(RUNS),--limit $(RUNS)))" || exit 2; \
	if [ -z "$$targets" ]; then echo "reports/fashion-mnist holds every declared run"; exit 0; fi; \
	snakemake $$targets --cores $(CORES) --configfile params/fashion_mnist.yaml --keep-going --rerun-incomplete; status=$$?; \
	$(PY) -m pipeline_src report --params params/fashion_mnist.yaml --results results/fashion_mnist --out reports/fashion-mnist; \
	exit $$status

fashion-mnist-report: setup
	$(PY) -m pipeline_src report --params params/fashion_mnist.yaml --out reports/fashion-mnist

# The MLflow UI on 127.0.0.1:$(PORT): results/'s runs, or with REPORT=reports/fashion-mnist a committed report's
# runs loaded into a store of their own (results/report-mlflow/<name>/); it prints the link to the runs view.
PORT ?= 5000
ui: setup
	$(PY) -m pipeline_src ui --results results $(if $(REPORT),--report $(REPORT)) --port $(PORT)

lint: setup
	snakemake --lint

bench: setup
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf results .snakemake
