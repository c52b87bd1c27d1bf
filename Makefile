# make play: set up, then play the shipped neural Tetris (headless where there is no display)
# make test: set up, then run the tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: play test venv data train candidate sweeps evaluate bench clean

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

# The shipped models (phase 1): autoencoder and dynamics, then the dynamics fine-tuned on 12-step rollouts.
train: venv
	$(PY) train.py --config configs/tetris.yaml --dataset data/tetris_train
	mkdir -p runs/tetris_ft && cp runs/tetris/autoencoder.pt runs/tetris_ft/
	$(PY) train.py --config configs/tetris_finetune.yaml --dataset data/tetris_train --stage dynamics --export checkpoints/tetris

# The phase 2/3 candidate (not shipped: it loses to the shipped model on the changed pixels, see README):
# the phase 1 autoencoder fine-tuned with a VGG perceptual loss and latent noise, VAE dynamics on it,
# then those fine-tuned on 12-step rollouts. Needs runs/tetris from make train.
candidate: venv
	$(PY) train.py --config configs/tetris_p2.yaml --dataset data/tetris_train
	mkdir -p runs/tetris_p2_ft && cp runs/tetris_p2/autoencoder.pt runs/tetris_p2_ft/
	$(PY) train.py --config configs/tetris_p2_finetune.yaml --dataset data/tetris_train --stage dynamics

# Phase 2 and 3 sweeps: each trains its settings into runs/sweeps/ and writes results/sweep_<name>.*
# (vae_beta and multistep need runs/tetris_p2/autoencoder.pt from make candidate)
sweeps: venv
	for s in perceptual latent_noise capacity vae_beta multistep; do $(PY) sweep.py configs/sweeps/$$s.yaml || exit 1; done

evaluate: venv
	$(PY) evaluate.py --dataset data/tetris_test --checkpoint checkpoints/tetris --out results/eval_tetris --autoencoder-figures

bench: venv
	$(PY) collect.py --benchmark
	$(PY) train.py --benchmark --config configs/tetris.yaml --dataset data/tetris_train
	$(PY) main.py --benchmark --frames 600

clean:
	rm -rf $(VENV) .cache runs
