# make play: set up, then play the shipped neural Tetris (headless where there is no display)
# make test: set up, then run the tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: play test venv data train train-tiles train-tiles-round9 train-tiles-round7 train-tiles-head-other train-tiles-screen-wide train-tiles-round6 train-tiles-long train-tiles-round5 train-tiles-hidden train-phase1 train-long train-conv train-discrete train-flow train-l1 candidate sweeps evaluate bench clean

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

# What ships in checkpoints/tetris (phases 2 and 3): the phase 1 autoencoder, fine-tuned with a VGG16
# perceptual loss and latent noise; VAE dynamics on it (4-step rollouts), then fine-tuned on 12-step
# rollouts with the temperature-0 prediction fitted and fed forward. About 76 min here.
train: venv
	$(PY) train.py --config configs/tetris.yaml --dataset data/tetris_train --stage ae
	$(PY) train.py --config configs/tetris_p2.yaml --dataset data/tetris_train --stage ae
	mkdir -p runs/tetris_p3 runs/tetris_p3_mw
	cp runs/tetris_p2/autoencoder.pt runs/tetris_p3/ && cp runs/tetris_p2/autoencoder.pt runs/tetris_p3_mw/
	$(PY) train.py --config configs/tetris_p3.yaml --dataset data/tetris_train --stage dynamics
	$(PY) train.py --config configs/tetris_p3_mw.yaml --dataset data/tetris_train --stage dynamics --export checkpoints/tetris

# Phase 1's model (checkpoints/phase1, kept for comparison): deterministic dynamics, fine-tuned on 12-step rollouts.
train-phase1: venv
	$(PY) train.py --config configs/tetris.yaml --dataset data/tetris_train
	mkdir -p runs/tetris_ft && cp runs/tetris/autoencoder.pt runs/tetris_ft/
	$(PY) train.py --config configs/tetris_finetune.yaml --dataset data/tetris_train --stage dynamics --export checkpoints/phase1

# Issue #3's stability experiment, not shipped: the shipped run fine-tuned with a 32-step long view
# (configs/tetris_long.yaml). Needs runs/tetris_p2/autoencoder.pt and runs/tetris_p3_mw/dynamics.pt from make train.
train-long: venv
	mkdir -p runs/tetris_long && cp runs/tetris_p2/autoencoder.pt runs/tetris_long/
	$(PY) train.py --config configs/tetris_long.yaml --dataset data/tetris_train --stage dynamics

# Issue #3's stability experiments on the shipped autoencoder: convolutional dynamics (configs/tetris_conv.yaml),
# then fine-tuned into two codes, "nothing changes" and "something changes", that play commits to
# (configs/tetris_conv_change.yaml). Needs runs/tetris_p2/autoencoder.pt from make train.
train-conv: venv
	mkdir -p runs/tetris_conv runs/tetris_conv_change
	cp runs/tetris_p2/autoencoder.pt runs/tetris_conv/ && cp runs/tetris_p2/autoencoder.pt runs/tetris_conv_change/
	$(PY) train.py --config configs/tetris_conv.yaml --dataset data/tetris_train --stage dynamics
	$(PY) train.py --config configs/tetris_conv_change.yaml --dataset data/tetris_train --stage dynamics

# Issue #3's flow-matching dynamics on the shipped autoencoder (configs/tetris_flow.yaml): samples of the latent's
# change, started from the conv dynamics of make train-conv. Needs runs/tetris_p2/autoencoder.pt and
# runs/tetris_conv/dynamics.pt.
train-flow: venv
	mkdir -p runs/tetris_flow && cp runs/tetris_p2/autoencoder.pt runs/tetris_flow/
	$(PY) train.py --config configs/tetris_flow.yaml --dataset data/tetris_train --stage dynamics

# Issue #3's stability bar, round 4: the long view (make train-long) fine-tuned with an L1 latent loss, whose
# prediction is the median of the futures rather than their mean (configs/tetris_long_l1.yaml).
train-l1: venv
	mkdir -p runs/tetris_long_l1 && cp runs/tetris_p2/autoencoder.pt runs/tetris_long_l1/
	$(PY) train.py --config configs/tetris_long_l1.yaml --dataset data/tetris_train --stage dynamics

# The discrete dynamics tried on the shipped model (configs/tetris_discrete.yaml: 8 codes, winner takes all;
# configs/tetris_change.yaml: 2 codes, change or not). Needs runs/tetris_p2/autoencoder.pt and
# runs/tetris_p3_mw/dynamics.pt from make train.
train-discrete: venv
	mkdir -p runs/tetris_discrete runs/tetris_change
	cp runs/tetris_p2/autoencoder.pt runs/tetris_discrete/ && cp runs/tetris_p2/autoencoder.pt runs/tetris_change/
	$(PY) train.py --config configs/tetris_discrete.yaml --dataset data/tetris_train --stage dynamics
	$(PY) train.py --config configs/tetris_change.yaml --dataset data/tetris_train --stage dynamics

# The first phase 2/3 candidate (not shipped: its VAE dynamics lost on the changed pixels, see README).
# Needs runs/tetris_p2/autoencoder.pt from make train.
candidate: venv
	mkdir -p runs/tetris_p2_ft && cp runs/tetris_p2/autoencoder.pt runs/tetris_p2_ft/
	$(PY) train.py --config configs/tetris_p2.yaml --dataset data/tetris_train --stage dynamics
	$(PY) train.py --config configs/tetris_p2_finetune.yaml --dataset data/tetris_train --stage dynamics

# Phase 2 and 3 sweeps: each trains its settings into runs/sweeps/ and writes results/sweep_<name>.*
# (vae_beta and multistep need runs/tetris_p2/autoencoder.pt from make train)
sweeps: venv
	for s in perceptual latent_noise capacity vae_beta multistep; do $(PY) sweep.py configs/sweeps/$$s.yaml || exit 1; done

# Issue #3's round 10: the tile world that ships in checkpoints/tiles. First round 7: native 8x8 tiles as codes, conv
# dynamics with a recurrent state of RAM bytes (round 6's, plus the piece counts, lines and score the screen prints),
# each byte drawn as a learnt map of where the screen shows it (configs/tetris_tiles_screen.yaml; about 22 min on 2
# cores). Then rounds 8 to 10: a wider state head fitted alone on round 7's frozen trunk, every training row each
# epoch, reading the board around the piece, beside a play head for the bytes of play that reads no number the screen
# prints, and the play rules learnt from the data (configs/tetris_tiles_play_head.yaml; about 12 min, 4 of them the
# trunk's features, then cached).
train-tiles: venv
	$(PY) train.py --config configs/tetris_tiles_screen.yaml --dataset data/tetris_train
	mkdir -p runs/tetris_tiles_play_head && cp runs/tetris_tiles_screen/autoencoder.pt runs/tetris_tiles_play_head/
	$(PY) train.py --config configs/tetris_tiles_play_head.yaml --dataset data/tetris_train --stage dynamics --export checkpoints/tiles

# Rounds 8 and 9 (shipped in checkpoints/tiles before round 10): the state head alone, without the play head (the play
# rules it exports are this code's, round 10's numbers among them). Run after the first line of make train-tiles.
train-tiles-round9: venv
	mkdir -p runs/tetris_tiles_head_local && cp runs/tetris_tiles_screen/autoencoder.pt runs/tetris_tiles_head_local/
	$(PY) train.py --config configs/tetris_tiles_head_local.yaml --dataset data/tetris_train --stage dynamics --export runs/tetris_tiles_head_local/export

# Round 7 alone (shipped in checkpoints/tiles before round 8): the first line of make train-tiles, exported.
train-tiles-round7: venv
	$(PY) train.py --config configs/tetris_tiles_screen.yaml --dataset data/tetris_train --export runs/tetris_tiles_screen/export

# Round 8, tried and not shipped: the state head fitted without the board window around the piece, and with dropout
# on its input. Run after make train-tiles (they reuse its cached trunk features).
train-tiles-head-other: venv
	mkdir -p runs/tetris_tiles_head runs/tetris_tiles_head_dropout
	cp runs/tetris_tiles_screen/autoencoder.pt runs/tetris_tiles_head/ && cp runs/tetris_tiles_screen/autoencoder.pt runs/tetris_tiles_head_dropout/
	$(PY) train.py --config configs/tetris_tiles_head.yaml --dataset data/tetris_train --stage dynamics
	$(PY) train.py --config configs/tetris_tiles_head_dropout.yaml --dataset data/tetris_train --stage dynamics

# Round 7, tried and not shipped: the same with a wider state head that also gets the buttons as they are.
train-tiles-screen-wide: venv
	$(PY) train.py --config configs/tetris_tiles_screen_wide.yaml --dataset data/tetris_train

# Round 6 (shipped in checkpoints/tiles before round 7): round 6's 16 state bytes, no byte map
# (configs/tetris_tiles_local.yaml; about 25 min).
train-tiles-round6: venv
	$(PY) train.py --config configs/tetris_tiles_local.yaml --dataset data/tetris_train

# Round 6, tried and not shipped: 8 epochs more (better held-out rollouts, but it stalled in play), then a 4-step
# self-fed fine-tune of that (worse everywhere). Run after make train-tiles-round6.
train-tiles-long: venv
	mkdir -p runs/tetris_tiles_local_long && cp runs/tetris_tiles_local/autoencoder.pt runs/tetris_tiles_local_long/
	$(PY) train.py --config configs/tetris_tiles_local_long.yaml --dataset data/tetris_train --stage dynamics
	mkdir -p runs/tetris_tiles_local_unroll && cp runs/tetris_tiles_local/autoencoder.pt runs/tetris_tiles_local_unroll/
	$(PY) train.py --config configs/tetris_tiles_local_unroll.yaml --dataset data/tetris_train --stage dynamics

# Round 5: the same world with round 5's pooled state head (configs/tetris_tiles_piece.yaml), then fine-tuned on
# 4-step self-fed rollouts (configs/tetris_tiles_unroll.yaml). The first try, with the hidden bytes only, is
# configs/tetris_tiles.yaml (make train-tiles-hidden).
train-tiles-round5: venv
	$(PY) train.py --config configs/tetris_tiles_piece.yaml --dataset data/tetris_train
	mkdir -p runs/tetris_tiles_unroll && cp runs/tetris_tiles_piece/autoencoder.pt runs/tetris_tiles_unroll/
	$(PY) train.py --config configs/tetris_tiles_unroll.yaml --dataset data/tetris_train --stage dynamics

train-tiles-hidden: venv
	$(PY) train.py --config configs/tetris_tiles.yaml --dataset data/tetris_train

evaluate: venv
	$(PY) evaluate.py --dataset data/tetris_test --checkpoint checkpoints/tetris --out results/eval_tetris --autoencoder-figures

bench: venv
	$(PY) collect.py --benchmark
	$(PY) train.py --benchmark --config configs/tetris.yaml --dataset data/tetris_train
	$(PY) main.py --benchmark --frames 600

clean:
	rm -rf $(VENV) .cache runs
