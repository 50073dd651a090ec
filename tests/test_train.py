"""Recipes, schedules, optimiser, best/last selection and resumption of probes.train, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

import probes.train as train_mod
from probes.heads import build_head
from probes.train import (LARS, PRESETS, TensorSource, best_and_last, lr_schedule, make_batches, resolve_recipe,
                          train_probe, wd_schedule)

pytestmark = pytest.mark.usefixtures("one_thread")     # the fixture is in conftest.py


def test_learning_rate_scales_with_batch_over_256():
    assert resolve_recipe("partaware", "linear").lr == pytest.approx(0.1 * 1024 / 256)         # 0.4
    assert resolve_recipe("partaware", "attentive").lr == pytest.approx(0.01 * 1024 / 256)     # 0.04
    assert resolve_recipe("partaware", "linear", batch_size=64).lr == pytest.approx(0.025)
    assert resolve_recipe("partaware", "attentive", base_lr=0.02, batch_size=512).lr == pytest.approx(0.04)
    assert resolve_recipe("mae-linear", "linear").lr == pytest.approx(6.4)                     # MAE: blr 0.1, B 16384
    # CAE attentive and V-JEPA give an absolute learning rate: no batch scaling
    assert resolve_recipe("cae-attentive", "attentive", batch_size=64).lr == pytest.approx(0.4)
    assert resolve_recipe("vjepa", "attentive", batch_size=64).lr == pytest.approx(1e-3)


def test_partaware_schedule_is_per_epoch_cosine_without_warmup():
    recipe = resolve_recipe("partaware", "linear", epochs=4, batch_size=256)   # lr 0.1
    values = lr_schedule(recipe, iters_per_epoch=3)
    per_epoch = [0.1, 0.1 * (1 + math.sqrt(0.5)) / 2, 0.05, 0.1 * (1 - math.sqrt(0.5)) / 2]
    assert values == pytest.approx([v for v in per_epoch for _ in range(3)])


def test_mae_schedule_warms_up_per_iteration_then_half_cosine():
    recipe = resolve_recipe("mae-linear", "linear", epochs=4, warmup_epochs=2, batch_size=256)  # lr 0.1
    values = lr_schedule(recipe, iters_per_epoch=2)      # fractional epochs 0, .5, 1, 1.5, 2, 2.5, 3, 3.5
    cos = lambda t: 0.05 * (1 + math.cos(math.pi * (t - 2) / 2))
    assert values == pytest.approx([0.0, 0.025, 0.05, 0.075, cos(2), cos(2.5), cos(3), cos(3.5)])


def test_cae_attentive_schedule_is_beit_cosine_scheduler():
    recipe = resolve_recipe("cae-attentive", "attentive", epochs=3, warmup_epochs=1)   # lr 0.4, min 1e-6
    values = lr_schedule(recipe, iters_per_epoch=3)
    warmup = [0.0, 0.2, 0.4]                                   # np.linspace(0, 0.4, 3)
    rest = [1e-6 + 0.5 * (0.4 - 1e-6) * (1 + math.cos(math.pi * i / 6)) for i in range(6)]
    assert values == pytest.approx(warmup + rest)


def test_vjepa_schedules_step_before_each_iteration():
    recipe = resolve_recipe("vjepa", "attentive", epochs=2)     # lr 1e-3 -> 0, wd 1e-3 -> 1e-6
    lrs, wds = lr_schedule(recipe, 2), wd_schedule(recipe, 2)
    assert lrs == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in (1, 2, 3, 4)])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)
    assert wds == pytest.approx([1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in (1, 2, 3, 4)])
    assert wd_schedule(resolve_recipe("partaware", "linear", epochs=2), 2) == [0.0] * 4


def test_best_and_last_from_a_scripted_sequence():
    got = best_and_last([50.0, 70.0, 70.0, 60.0], [80.0, 90.0, 91.0, 85.0])
    assert got == {"top1_best": 70.0, "best_epoch": 2, "top1_last": 60.0, "top5_at_best": 90.0, "top5_last": 85.0}
    with pytest.raises(ValueError):
        best_and_last([])


def test_training_loop_reports_best_and_last_of_its_evaluations(monkeypatch):
    scripted = iter([40.0, 75.5, 62.0, 75.5, 70.25])
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"top1": next(scripted)})
    train, evaluation = separable_sources()
    recipe = resolve_recipe("partaware", "linear", epochs=5, batch_size=16)
    result = train_probe(build_head("linear", 8, 3), train, evaluation, recipe, num_classes=3, progress=False)
    assert [h["top1"] for h in result.history] == [40.0, 75.5, 62.0, 75.5, 70.25]
    assert result.selection() == {"top1_best": 75.5, "best_epoch": 2, "top1_last": 70.25}
    # the optimiser ran with the schedule's value at the start of each epoch
    assert [h["lr"] for h in result.history] == pytest.approx(
        [0.1 * 16 / 256 * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(5)])


def test_lars_step_matches_hand_computation():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))        # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    opt.step()
    dp = torch.tensor([[0.3, 1.4]])                           # grad + 0.1 w
    q = 0.001 * 5.0 / dp.norm()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * q * dp)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))   # 1-D: no trust ratio, no decay
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    w_before = w.detach().clone()
    opt.step()
    dp2 = torch.tensor([[0.0, 1.0]]) + 0.1 * w_before
    mu = 0.9 * (q * dp) + 0.001 * w_before.norm() / dp2.norm() * dp2
    assert torch.allclose(w.detach(), w_before - 0.5 * mu, atol=1e-7)


def test_make_batches_merges_a_final_singleton_only_for_batch_statistics():
    assert make_batches(range(5), 2, drop_last=False, merge_singleton=False) == [[0, 1], [2, 3], [4]]
    assert make_batches(range(5), 2, drop_last=False, merge_singleton=True) == [[0, 1], [2, 3, 4]]
    assert make_batches(range(5), 2, drop_last=True, merge_singleton=True) == [[0, 1], [2, 3]]


def separable_sources(n=96, dim=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(n) % classes
    x = centers[y] + torch.randn(n, dim, generator=g)
    return TensorSource(x[: n // 2 + 8], y[: n // 2 + 8]), TensorSource(x[n // 2 + 8:], y[n // 2 + 8:])


@pytest.mark.parametrize("head_name,preset", [("linear", "partaware"), ("partaware", "partaware")])
def test_interrupted_training_resumes_to_the_identical_result(tmp_path, head_name, preset):
    train, evaluation = separable_sources()
    if head_name != "linear":      # attentive heads take tokens: 3 noisy copies of each vector
        g = torch.Generator().manual_seed(1)
        train = TensorSource(train.inputs[:, None] + 0.1 * torch.randn(len(train), 3, 8, generator=g), train.labels)
        evaluation = TensorSource(evaluation.inputs[:, None].repeat(1, 3, 1), evaluation.labels)
    recipe = resolve_recipe(preset, "linear" if head_name == "linear" else "attentive", epochs=5, batch_size=16,
                            eval_batch_size=16)

    def fresh_head():
        torch.manual_seed(0)
        return build_head(head_name, 8, 3, num_heads=2)

    full = fresh_head()
    whole = train_probe(full, train, evaluation, recipe, num_classes=3, seed=3, progress=False)

    fingerprint = {"test": head_name, "recipe": recipe.to_dict()}
    part = fresh_head()
    first = train_probe(part, train, evaluation, recipe, num_classes=3, seed=3, fingerprint=fingerprint,
                        stop_after_epochs=2, progress=False)
    assert first.epochs_done == 2
    state_file = train_mod.state_path_for(fingerprint)
    assert state_file.is_file() and state_file.parent.name == "train_state"
    resumed_head = fresh_head()                  # a new process: fresh weights, the state file restores them
    second = train_probe(resumed_head, train, evaluation, recipe, num_classes=3, seed=3, fingerprint=fingerprint,
                         progress=False)
    assert second.resumed_from_epoch == 2 and second.epochs_done == 5
    assert second.history == whole.history
    for a, b in zip(resumed_head.state_dict().values(), full.state_dict().values()):
        assert torch.equal(a, b)
    assert whole.selection()["top1_last"] >= 90.0       # and it did learn the separable classes
    # a third call finds all epochs done and trains nothing
    third = train_probe(fresh_head(), train, evaluation, recipe, num_classes=3, seed=3, fingerprint=fingerprint,
                        progress=False)
    assert third.history == whole.history and third.resumed_from_epoch == 5


def test_state_saved_for_another_configuration_is_refused(tmp_path):
    train, evaluation = separable_sources()
    recipe = resolve_recipe("partaware", "linear", epochs=2, batch_size=16)
    path = tmp_path / "state.pt"
    train_probe(build_head("linear", 8, 3), train, evaluation, recipe, num_classes=3, state_path=path,
                fingerprint={"a": 1}, progress=False)
    with pytest.raises(ValueError, match="not this one"):
        train_probe(build_head("linear", 8, 3), train, evaluation, recipe, num_classes=3, state_path=path,
                    fingerprint={"a": 2}, progress=False)


def test_bad_training_input_is_rejected_clearly():
    train, evaluation = separable_sources()
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_recipe("simclr", "linear")
    with pytest.raises(ValueError, match="unknown recipe field"):
        resolve_recipe("partaware", "linear", learning_rate=0.1)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        resolve_recipe("partaware", "linear", epochs=0)
    with pytest.raises(ValueError, match="nothing would train"):
        train_probe(build_head("linear", 8, 3), train, evaluation, resolve_recipe("mae-linear", "linear", epochs=12),
                    num_classes=3, progress=False)
    with pytest.raises(ValueError, match="labels must lie"):
        train_probe(build_head("linear", 8, 2), train, evaluation, resolve_recipe("partaware", "linear", epochs=1),
                    num_classes=2, progress=False)
    with pytest.raises(ValueError, match="inputs but"):
        TensorSource(torch.zeros(3, 2), torch.zeros(4))
    assert set(PRESETS) == {"partaware", "mae-linear", "cae-linear", "cae-attentive", "vjepa"}
