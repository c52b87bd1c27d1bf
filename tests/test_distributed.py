"""Issue #24: training under torchrun. Two gloo processes that share each global batch take the same steps as one
process with that batch; rank 0 alone writes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a tiny spatial autoencoder, 4 steps of 16 frames
TINY_AE = ["--stage", "ae", "--ae-arch", "spatial", "--ae-width", "8", "--latent-channels", "2", "--epochs", "1",
           "--ae-samples-per-epoch", "64", "--batch-size", "16", "--spot-check", ""]
TOLERANCE = 1e-5  # largest |weight difference| after 4 Adam steps: float sums in another order, nothing more


def test_each_process_takes_its_share_of_the_global_batch():
    batches = [list(range(6)), list(range(6, 9)), [9]]
    shares = [list(train.ShardedBatches(batches, train.Distributed(rank, 2))) for rank in (0, 1)]
    assert shares[0] == [[0, 2, 4], [6, 8]] and shares[1] == [[1, 3, 5], [7]]  # the last, too small, skipped by both
    one = train.Distributed()
    assert one.main and one.shard(np.arange(5)).tolist() == list(range(5)) and one.mean(3.0) == 3.0
    assert isinstance(one.wrap(train.Objective(torch.nn.Linear(2, 2), lambda m, x: m(x).sum())), train.Objective)
    assert not train.Distributed(1, 2).main


def run(args, processes: int, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, os.path.join(ROOT, "train.py")] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         os.path.join(ROOT, "train.py")]
    proc = subprocess.run(launcher + args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_two_gloo_processes_reach_one_process_weights(tiny_dataset, tmp_path):
    common = ["--dataset", tiny_dataset, "--cache-dir", str(tmp_path / "cache")] + TINY_AE
    out1 = run(common + ["--out", str(tmp_path / "one")], 1, tmp_path)
    out2 = run(common + ["--out", str(tmp_path / "two")], 2, tmp_path)
    assert "(2 processes)" in out2 and out2.count("autoencoder epoch 1/1") == 1  # rank 0 alone prints
    timings = json.load(open(tmp_path / "two" / "timings.json"))
    assert timings["processes"] == 2 and 0 < timings["peak_memory_gb_per_process"] < 4
    one = torch.load(tmp_path / "one" / "autoencoder_train_state.pt", weights_only=True)
    a, b = one["model"], torch.load(tmp_path / "two" / "autoencoder_train_state.pt", weights_only=True)["model"]
    init = train.build_autoencoder(train.config_from(one)).state_dict()  # untrained weights, for scale
    moved = max(float((a[k].float() - init[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    print(f"2 processes vs 1: largest weight difference {diff:.2e}; training moved the weights by up to {moved:.2e}")
    assert moved > 100 * TOLERANCE and diff < TOLERANCE, (moved, diff)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))  # nothing written twice


def test_a_hub_layout_dataset_loads_as_the_hub_id_would(tiny_dataset, tmp_path):
    """--dataset with a hub id goes through datasets.load_dataset; a local copy of a hub repository (parquet shards
    under data/, as push_to_hub writes them) takes the same path, without a network."""
    import datasets
    ds = datasets.load_from_disk(tiny_dataset)
    repo = tmp_path / "user" / "tetris"
    os.makedirs(repo / "data")
    for i in range(2):  # two shards, push_to_hub's names
        ds.shard(2, i, contiguous=True).to_parquet(str(repo / "data" / f"train-{i:05d}-of-00002.parquet"))
    hub = train.open_dataset(str(repo))
    assert train.hub_layout(str(repo)) and not train.hub_layout(tiny_dataset)
    assert hub.num_rows == ds.num_rows and hub["episode_id"] == ds["episode_id"] and hub["actions"] == ds["actions"]
    assert np.array_equal(np.asarray(hub[5]["observations"]), np.asarray(ds[5]["observations"]))  # an Image column
    a = train.load_tiles(str(repo), cache_dir=str(tmp_path / "cache"))
    b = train.load_tiles(tiny_dataset, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(a.frames(np.arange(len(a.episodes))), b.frames(np.arange(len(b.episodes))))


TINY_TILES = ["--ae-arch", "tiles", "--dynamics", "tiles", "--tile-codes", "1024", "--hidden", "16", "--conv-blocks",
              "2", "--state-width", "16", "--history", "2", "--dyn-samples-per-epoch", "64", "--batch-size", "32",
              "--unroll", "2", "--epochs", "1", "--spot-check", ""]


def test_bf16_autocast_trains_the_tile_world(tiny_dataset, tmp_path, monkeypatch):
    """--amp bf16 (the GPU path's autocast, here on the CPU): the step runs in bfloat16, the weights stay float32."""
    monkeypatch.setattr(train, "DIST", train.DIST)  # train.main sets it: the other tests get the default back
    out = str(tmp_path / "bf16")
    seen = set()  # the dtypes the tile dynamics' convolutions gave while training

    def spy(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d) and module.training and torch.is_tensor(output):
            seen.add(output.dtype)
    hook = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        train.main(["--dataset", tiny_dataset, "--out", out, "--cache-dir", str(tmp_path / "cache"), "--amp", "bf16"]
                   + TINY_TILES)
    finally:
        hook.remove()
    assert seen == {torch.bfloat16}  # every training convolution ran under the autocast
    row = json.loads(open(os.path.join(out, "dynamics_log.jsonl")).readline())
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"]) and row["val_loss"] < 20
    model, _ = train.load_model(os.path.join(out, "dynamics.pt"), "dynamics")
    assert all(p.dtype == torch.float32 for p in model.parameters()) and train.DIST.amp == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_and_a_bad_amp_are_one_line_errors(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "DIST", train.DIST)
    for flags, words in ((["--device", "cuda"], "no CUDA GPU"), (["--amp", "fp8"], "auto, bf16 or off")):
        with pytest.raises(SystemExit) as e:
            train.main(["--dataset", tiny_dataset, "--out", str(tmp_path / "x")] + flags)
        assert words in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "x")
