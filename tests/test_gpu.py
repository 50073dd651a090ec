"""The GPU paths, each against its CPU reference: bf16 autocast (channels-last), extraction from pinned batches,
the torch AP engine, faiss-gpu, NCCL ranks. Every test skips without what it needs (CI has no GPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.metrics import average_precision_per_query, retrieval_metrics, topk_neighbours

REPO = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def random_encoder(name: str, device: str):
    import timm

    from probes.encoders import Encoder
    from probes.zoo.registry import IMAGENET, Arch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    return Encoder(model, name=f"{name}-random", method="random-init", arch=Arch(name), format="timm",
                   source="timm random initialisation", checkpoint_sha256="0" * 64, transform=IMAGENET, device=device)


@cuda
@pytest.mark.parametrize("name", ["vit_small_patch16_224", "resnet50"])
def test_bf16_autocast_is_recorded_and_stays_close_to_fp32(name):
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = random_encoder(name, "cpu").extract(images, ["patch_mean"])["patch_mean"]
    fast = random_encoder(name, "cuda").configure(precision="bf16")
    assert fast.forward_protocol()["precision"] == "bf16-autocast"
    out = fast.extract(images.pin_memory(), ["patch_mean"])["patch_mean"]
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    cosine = torch.nn.functional.cosine_similarity(out, reference, dim=1)
    assert cosine.min() > 0.99
    exact = random_encoder(name, "cuda").configure(precision="fp32")
    assert exact.forward_protocol()["precision"] == "fp32"
    assert (exact.extract(images, ["patch_mean"])["patch_mean"] - reference).abs().max() < 1e-3


@cuda
def test_extraction_on_the_gpu_matches_the_cpu_in_fp32():
    from probes.features import extract
    from probes.options import RunOptions
    from test_features import Images

    view = Images(24, seed=0)
    view.dataset.images = torch.nn.functional.interpolate(view.dataset.images, size=224)
    cpu = extract(random_encoder("vit_small_patch16_224", "cpu"), view, ["cls"],
                  run=RunOptions(batch_size=8, cache=False, quiet=True))["cls"]
    gpu = extract(random_encoder("vit_small_patch16_224", "cuda"), view, ["cls"],
                  run=RunOptions(batch_size=8, num_workers=2, cache=False, quiet=True))["cls"]
    assert (gpu - cpu).abs().max() < 1e-3


@cuda
@pytest.mark.parametrize("include_self", [True, False])
def test_the_torch_ap_engine_on_the_gpu_equals_the_numpy_engine(include_self):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3000, 64, generator=generator)
    features[100:200] = features[0]                          # ties
    labels = torch.randint(0, 5, (3000,), generator=generator)
    cpu = average_precision_per_query(features, labels, include_self=include_self, engine="numpy")
    gpu = average_precision_per_query(features, labels, include_self=include_self, device="cuda", engine="torch")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-9)
    a = retrieval_metrics(features, labels, include_self=include_self)
    b = retrieval_metrics(features, labels, include_self=include_self, device="cuda")
    for key in ("AP", "mAP", "P@1", "P@5", "P@10"):
        assert b[key] == pytest.approx(a[key], abs=1e-9)


@cuda
def test_faiss_gpu_neighbours_equal_the_exact_torch_search():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss without GPU support (pip install 'partprobe[gpu]')")
    features = torch.randn(2000, 64, generator=torch.Generator().manual_seed(1))
    sims_gpu, ids_gpu = topk_neighbours(features, None, 10, exclude_self=True, backend="faiss", device="cuda")
    sims_ref, ids_ref = topk_neighbours(features, None, 10, exclude_self=True, backend="torch")
    torch.testing.assert_close(sims_gpu, sims_ref, atol=1e-4, rtol=0)
    assert (ids_gpu == ids_ref).float().mean() > 0.99          # only near-ties may swap


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_ranks_extract_what_one_process_does(tmp_path):
    worker = REPO / "tests" / "distributed_worker.py"
    env = {**os.environ, "PARTPROBE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(worker), tmp_path / "single"], env={**env, "PARTPROBE_HOME":
                   str(tmp_path / "home1")}, check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(worker), tmp_path / "sharded"], env=env, check=True, timeout=300)
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)["features"]
    for rank in (0, 1):
        got = torch.load(tmp_path / "sharded" / f"rank{rank}.pt", weights_only=True)["features"]
        for name, values in single.items():
            assert torch.allclose(got[name], values, atol=1e-4)
