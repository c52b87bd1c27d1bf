# make play: set up, then play the shipped neural Tetris (headless where there is no display)
# make test: set up, then run the tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: play test venv data train evaluate bench clean

play: venv
	$(PY) main.py $(ARGS)

test: venv
	$(PY) -m pytest -q tests $(ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	$(VENV)/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $@

# The recipe behind the shipped checkpoints and the README tables (see results/README.md).
data: venv
	$(PY) collect.py --episodes 50 --max-steps 1200 --seed 0 --out data/tetris_train
	$(PY) collect.py --episodes 20 --max-steps 1200 --seed 1000 --out data/tetris_test

train: venv
	$(PY) train.py --config configs/tetris.yaml --dataset data/tetris_train
	mkdir -p runs/tetris_ft && cp runs/tetris/autoencoder.pt runs/tetris_ft/
	$(PY) train.py --config configs/tetris_finetune.yaml --dataset data/tetris_train --stage dynamics --export checkpoints/tetris

evaluate: venv
	$(PY) evaluate.py --dataset data/tetris_test --checkpoint checkpoints/tetris --out results/eval_tetris

bench: venv
	$(PY) collect.py --benchmark
	$(PY) train.py --benchmark --config configs/tetris.yaml --dataset data/tetris_train
	$(PY) main.py --benchmark --frames 600

clean:
	rm -rf $(VENV) .cache runs
