# make play: set up, then play the shipped neural Tetris (headless where there is no display)
# make test: set up, then run the tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: play test venv data train sweeps evaluate bench clean

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

# Phase 1 models (runs/tetris), then the shipped ones: that autoencoder fine-tuned with a perceptual
# loss and latent noise, and VAE dynamics on it (configs/tetris_p2.yaml).
train: venv
	$(PY) train.py --config configs/tetris.yaml --dataset data/tetris_train
	$(PY) train.py --config configs/tetris_p2.yaml --dataset data/tetris_train --export checkpoints/tetris

# Phase 2 and 3 sweeps: each trains its settings into runs/sweeps/ and writes results/sweep_<name>.*
# (vae_beta and multistep need runs/tetris_p2/autoencoder.pt from make train)
sweeps: venv
	for s in perceptual latent_noise capacity vae_beta multistep; do $(PY) sweep.py configs/sweeps/$$s.yaml || exit 1; done

evaluate: venv
	$(PY) evaluate.py --dataset data/tetris_test --checkpoint checkpoints/tetris --out results/eval_shipped --autoencoder-figures

bench: venv
	$(PY) collect.py --benchmark
	$(PY) train.py --benchmark --config configs/tetris.yaml --dataset data/tetris_train
	$(PY) main.py --benchmark --frames 600

clean:
	rm -rf $(VENV) .cache runs
