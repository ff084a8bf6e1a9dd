# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
FASHION_MNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint fashion-mnist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST: Debian's package where we are root with apt; otherwise bingo downloads it with
# torchvision when online, or says exactly what to do.
fashion-mnist:
	@if [ -f $(FASHION_MNIST_DEB) ] || [ -d data/FashionMNIST/raw ] || [ -d data/fashion-mnist ]; then \
		echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "Fashion-MNIST: apt-get failed; bingo will try torchvision's download into data/"; \
	else \
		echo "Fashion-MNIST: not root or no apt; bingo will try torchvision's download into data/"; \
	fi

demo: $(STAMP) fashion-mnist
	$(BIN)/bingo demo --out $(DEMO_OUT) --resume

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

test: lint
	$(BIN)/python -m pytest -q -n 2  # two processes: the tests are single-threaded

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
