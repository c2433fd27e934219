# Two commands matter: `make reproduce` (fresh machine -> finished embedded default) and `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
CORES  ?= all
PARAMS ?= params/default.yaml
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FMNIST_LOCAL  := data/raw/fashion-mnist/train-images-idx3-ubyte.gz
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: reproduce test setup data report ui lint bench clean

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST: Debian's package when we may install it, else the files in data/raw/fashion-mnist/.
data: setup
	@if [ -f $(FMNIST_LOCAL) ] || [ -f $(FMNIST_DEBIAN) ]; then echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or put the four IDX .gz files into data/raw/fashion-mnist/"; exit 1; fi

reproduce: data
	snakemake --cores $(CORES) --configfile $(PARAMS)

test: setup
	$(PY) -m pytest

report: setup
	snakemake --configfile $(PARAMS) --report results/report.html

ui: setup
	mlflow ui --backend-store-uri sqlite:///$(abspath results)/mlflow.db --host 127.0.0.1 --port 5000

lint: setup
	snakemake --lint

bench: setup
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf results .snakemake
