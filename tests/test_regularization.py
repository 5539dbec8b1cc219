"""Regularizers: clipping, early stopping, penalties, the EMA, mixing; each against its plain
formula, and the per-step ones without device reads or per-tensor Python calls."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from trainkit.registry import REGULARIZERS, load_components
from trainkit.regularization import EarlyStopping, GradClip, Regularizer


def model_with_grads(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = scale * torch.randn(p.shape, generator=generator)
    return model


def total_norm(model: nn.Module, p: float = 2.0) -> float:
    return torch.linalg.vector_norm(
        torch.cat([q.grad.flatten() for q in model.parameters()]), ord=p
    ).item()


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("norm_type", [2.0, 1.0])
def test_clip_by_norm_limits_the_total_norm(norm_type):
    model = model_with_grads(10.0)
    before = grads(model)
    norm_before = total_norm(model, norm_type)
    assert norm_before > 5.0
    GradClip(max_norm=1.5, by="norm", norm_type=norm_type).before_optimizer_step(model)
    assert total_norm(model, norm_type) == pytest.approx(1.5, rel=1e-4)
    assert total_norm(model, norm_type) <= 1.5 * (1 + 1e-5)
    # The direction is kept: every gradient is scaled by the same factor.
    factor = 1.5 / norm_before
    for g, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g * factor, rtol=1e-4, atol=1e-6)


def test_clip_by_norm_leaves_small_gradients_alone():
    model = model_with_grads(0.01)
    before = grads(model)
    assert total_norm(model) < 1.0
    GradClip(max_norm=1.0).before_optimizer_step(model)
    for g, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=0)


def test_clip_by_value_clamps_each_element():
    model = model_with_grads(1.0)
    before = grads(model)
    assert max(g.abs().max().item() for g in before) > 0.5
    GradClip(max_norm=0.5, by="value").before_optimizer_step(model)
    for g, p in zip(before, model.parameters(), strict=True):
        assert torch.equal(p.grad, g.clamp(-0.5, 0.5))
        assert p.grad.abs().max().item() <= 0.5


def test_clip_defaults_and_other_hooks():
    clip = GradClip()
    assert (clip.max_norm, clip.by, clip.norm_type) == (1.0, "norm", 2.0)
    assert clip.penalty(nn.Linear(1, 1)) is None
    assert clip.should_stop(0.5, "max") is False
    assert clip.state_dict() == {}


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_max_mode(patience):
    stopper = EarlyStopping(patience=patience, min_delta=0.01)
    assert not stopper.should_stop(0.50, "max")  # first value: the best so far
    assert not stopper.should_stop(0.60, "max")  # improves
    decisions = [stopper.should_stop(v, "max") for v in [0.605, 0.59, 0.609, 0.2][:patience]]
    # 0.605 and 0.609 improve on 0.60 by less than min_delta: no improvement either.
    assert decisions == [False] * (patience - 1) + [True]
    assert stopper.best == 0.60
    assert stopper.bad_epochs == patience


def test_early_stopping_min_mode():
    stopper = EarlyStopping(patience=2, min_delta=0.0)
    values = [1.0, 0.8, 0.8, 0.7, 0.9, 0.75, 0.6, 0.65, 0.6]
    decisions = [stopper.should_stop(v, "min") for v in values]
    # 0.8 again does not improve (improvement must be > min_delta); 0.7 resets; 0.9 and
    # 0.75 are two bad ones in a row -> stop.
    assert decisions == [False, False, False, False, False, True, False, False, True]
    assert stopper.best == 0.6


def test_early_stopping_improvement_resets_the_count():
    stopper = EarlyStopping(patience=2)
    assert [stopper.should_stop(v, "max") for v in [0.1, 0.1, 0.2, 0.1, 0.3, 0.3, 0.3]] == [
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    ]


def test_early_stopping_in_min_mode_ignores_increases():
    stopper = EarlyStopping(patience=1)
    stopper.should_stop(1.0, "min")
    assert stopper.should_stop(2.0, "min") is True
    assert stopper.best == 1.0


def test_early_stopping_state_dict_round_trip():
    stopper = EarlyStopping(patience=3, min_delta=0.05)
    for v in [0.5, 0.7, 0.72]:
        stopper.should_stop(v, "max")
    state = stopper.state_dict()
    assert state == {"best": 0.7, "bad_epochs": 1}
    restored = EarlyStopping(patience=3, min_delta=0.05)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # The restored one and the original make the same decisions from here.
    for v in [0.74, 0.71]:
        assert restored.should_stop(v, "max") == stopper.should_stop(v, "max")
    assert restored.bad_epochs == stopper.bad_epochs == 3
    assert restored.should_stop(0.7, "max") is True


def test_fresh_early_stopping_state():
    stopper = EarlyStopping()
    assert (stopper.patience, stopper.min_delta) == (10, 0.0)
    state = stopper.state_dict()
    assert math.isnan(state["best"]) and state["bad_epochs"] == 0


def test_base_regularizer_does_nothing():
    regularizer = Regularizer()
    model = model_with_grads(3.0)
    before = grads(model)
    assert regularizer.penalty(model) is None
    regularizer.before_optimizer_step(model)
    assert all(torch.equal(g, p.grad) for g, p in zip(before, model.parameters(), strict=True))
    assert regularizer.should_stop(0.0, "min") is False


def test_registry_builds_regularizers():
    load_components()
    clip = REGULARIZERS.build({"name": "grad_clip", "max_norm": 2.0, "by": "value"})
    assert isinstance(clip, GradClip) and (clip.max_norm, clip.by) == (2.0, "value")
    stopper = REGULARIZERS.build({"name": "early_stopping", "patience": 4})
    assert isinstance(stopper, EarlyStopping) and stopper.patience == 4


# --- penalties and settings ------------------------------------------------------------


def _linear_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def test_l1_adds_strength_times_sign_to_the_gradient():
    from trainkit.regularization import L1

    model = _linear_model()
    L1(strength=0.01).penalty(model).backward()
    for parameter in model.parameters():
        if parameter.ndim > 1:
            assert torch.allclose(parameter.grad, 0.01 * parameter.detach().sign())
        else:
            assert parameter.grad is None  # biases are not penalized by default


def test_l2_adds_strength_times_weight_to_the_gradient():
    from trainkit.regularization import L2

    model = _linear_model()
    penalty = L2(strength=0.1).penalty(model)
    expected = 0.05 * sum((p.detach() ** 2).sum() for p in model.parameters() if p.ndim > 1)
    assert penalty.item() == pytest.approx(expected.item())
    penalty.backward()
    assert torch.allclose(model[0].weight.grad, 0.1 * model[0].weight.detach())


def _with_zeros(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model[0].weight[0].zero_()  # |w| has no slope at 0: the penalty must give it 0 there
    return model


@pytest.mark.parametrize("weights_only", [True, False])
def test_l1_and_l2_match_their_plain_formulas_in_value_and_gradient(weights_only):
    from trainkit.regularization import L1, L2

    for regularizer, formula in [
        (L1(0.01, weights_only=weights_only), lambda p: 0.01 * p.abs().sum()),
        (L2(0.1, weights_only=weights_only), lambda p: 0.05 * p.pow(2).sum()),
    ]:
        model = _with_zeros(_linear_model())
        chosen = [p for p in model.parameters() if p.ndim > 1 or not weights_only]
        references = [p.detach().clone().requires_grad_() for p in chosen]
        expected = sum(formula(p) for p in references)
        expected.backward()
        penalty = regularizer.penalty(model)
        penalty.backward()
        assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
        for parameter, reference in zip(chosen, references, strict=True):
            torch.testing.assert_close(parameter.grad, reference.grad, rtol=1e-6, atol=1e-9)
        assert torch.all(model[0].weight.grad[0] == 0)  # the zeroed row


class TorchCalls(TorchFunctionMode):
    """Records the name of every torch function and tensor method called from Python."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


class DeviceReads(TorchDispatchMode):
    """Counts the op that .item(), bool(t), int(t) and float(t) come down to: a device read."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def _calls_per_step(make_step, depth: int) -> list[str]:
    model, step = _bn_model(depth), make_step()
    step(model)  # the first call builds what it keeps (and the EMA's first update copies)
    step(model)
    with TorchCalls() as calls, DeviceReads() as reads:
        step(model)
    assert reads.count == 0
    return calls.names


@pytest.mark.parametrize("name", ["l1", "l2", "ema"])
def test_a_step_makes_the_same_few_calls_for_any_number_of_tensors_and_reads_nothing(name):
    from trainkit.regularization import EMA, L1, L2

    def make_step():
        if name == "ema":
            return EMA(decay=0.9).after_optimizer_step
        return {"l1": L1, "l2": L2}[name](weights_only=False).penalty

    shallow, deep = _calls_per_step(make_step, depth=1), _calls_per_step(make_step, depth=6)
    assert len(list(_bn_model(6).parameters())) == 26
    assert shallow == deep
    assert len(deep) <= 6, deep


def test_penalty_include_patterns_choose_parameters():
    from trainkit.errors import UserError
    from trainkit.regularization import L1

    model = _linear_model()
    L1(strength=1.0, include=["1.*"], weights_only=False).penalty(model).backward()
    assert model[0].weight.grad is None and model[1].bias.grad is not None
    with pytest.raises(UserError, match="matches no parameter"):
        L1(include=["classifier.*"]).penalty(_linear_model())


def test_a_penalty_leaves_out_frozen_parameters_and_takes_them_in_once_unfrozen():
    """finetune.freeze, then finetune.unfreeze_at_epoch: the penalty is chosen at the first
    step, while some parameters are frozen, and follows them as they are unfrozen."""
    from trainkit.regularization import L2

    model, l2 = _linear_model(), L2(strength=2.0, include=["0.*"])
    expected = (model[0].weight.detach() ** 2).sum().item()
    model[0].weight.requires_grad_(False)
    assert l2.penalty(model).item() == pytest.approx(expected)  # a constant while frozen
    model[0].weight.requires_grad_(True)
    penalty = l2.penalty(model)
    assert penalty.item() == pytest.approx(expected)
    penalty.backward()
    assert torch.allclose(model[0].weight.grad, 2.0 * model[0].weight.detach())


def test_settings_regularizers_configure_the_other_nodes():
    from trainkit import config
    from trainkit.errors import UserError
    from trainkit.registry import REGULARIZERS

    cfg = config.compose(config.prepare(["model=mlp"]))
    REGULARIZERS.build({"name": "weight_decay", "strength": 0.01}).configure(cfg)
    REGULARIZERS.build({"name": "dropout", "rate": 0.3}).configure(cfg)
    REGULARIZERS.build({"name": "label_smoothing", "smoothing": 0.2}).configure(cfg)
    assert cfg.optimizer.weight_decay == 0.01
    assert cfg.model.dropout == 0.3
    assert cfg.loss.label_smoothing == 0.2
    cfg.loss = {"name": "no_smoothing_loss"}
    with pytest.raises(UserError):
        REGULARIZERS.build({"name": "label_smoothing"}).configure(cfg)


def test_label_smoothing_target_matches_the_documented_convention():
    """-sum(((1 - eps) * onehot + eps / C) * log_softmax), as torch documents it."""
    from trainkit.registry import LOSSES

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    eps = 0.2
    smoothed = (1 - eps) * torch.nn.functional.one_hot(target, 3) + eps / 3
    expected = -(smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss = LOSSES.build({"name": "cross_entropy", "label_smoothing": eps}, num_classes=3)
    assert loss(logits, target).item() == pytest.approx(expected.item())


# --- EMA -----------------------------------------------------------------------------


def test_ema_follows_its_formula_and_round_trips():
    from trainkit.regularization import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(decay=0.5, warmup=False)
    history = []
    for value in (1.0, 3.0, 7.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.after_optimizer_step(model)
        history.append(value)
    # first update copies, then ema = 0.5 * ema + 0.5 * w: 1 -> 2 -> 4.5
    averaged = ema.evaluation_model(model)
    assert averaged is not model
    assert torch.allclose(averaged.weight, torch.full_like(model.weight, 4.5))
    assert torch.equal(model.weight, torch.full_like(model.weight, 7.0))  # training weights

    restored = EMA(decay=0.5, warmup=False)
    restored.load_state_dict(checkpoint_round_trip(ema.state_dict()))
    assert torch.equal(restored.evaluation_model(model).weight, averaged.weight)


def test_ema_warmup_starts_from_the_first_steps_weights_then_decays_as_documented():
    """The first step's weights, then d = (1 + n) / (10 + n) at the n-th update: 2/11, 3/12."""
    from trainkit.regularization import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(decay=0.999, warmup=True)
    expected = None
    for n, value in enumerate((1.0, 3.0, 7.0)):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.after_optimizer_step(model)
        decay = (1 + n) / (10 + n)
        expected = value if expected is None else decay * expected + (1 - decay) * value
    average = ema.evaluation_model(model).weight
    assert torch.allclose(average, torch.full_like(average, expected))


def checkpoint_round_trip(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_without_updates_ema_evaluates_the_model_itself():
    from trainkit.regularization import EMA

    model = torch.nn.Linear(3, 2)
    assert EMA().evaluation_model(model) is model


def _bn_model(depth: int = 2) -> nn.Module:
    """Convolutions with BatchNorm: parameters, floating buffers and num_batches_tracked."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)) for _ in range(depth)]
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def _train(model: nn.Module, steps: range, after_step) -> None:
    """SGD on fixed batches (batch i the same in every run); BatchNorm statistics move too."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # stateless: resumes need no state
    model.train()
    for step in steps:
        inputs = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(step))
        model(inputs).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after_step(model)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_a_reference_loop_over_weights_and_batchnorm_statistics(warmup):
    from trainkit.regularization import EMA

    model, ema = _bn_model(), EMA(decay=0.8, warmup=warmup)
    reference: dict[str, torch.Tensor] = {}
    updates = itertools.count()

    def check(model):
        ema.after_optimizer_step(model)
        n = next(updates)  # updates averaged before this one
        decay = min(0.8, (1 + n) / (10 + n)) if warmup else 0.8
        for key, value in model.state_dict().items():
            if n == 0 or not value.is_floating_point():
                reference[key] = value.clone()  # the first update copies; counts are copied
            else:
                reference[key] = decay * reference[key] + (1 - decay) * value
        averaged = ema.evaluation_model(model).state_dict()
        assert averaged.keys() == model.state_dict().keys()
        for key, value in averaged.items():
            torch.testing.assert_close(value, reference[key], rtol=1e-6, atol=1e-7, msg=key)

    _train(model, range(12), check)
    averaged = ema.evaluation_model(model)
    assert averaged is not model and not averaged.training
    assert not any(p.requires_grad for p in averaged.parameters())
    assert not torch.equal(averaged[0][1].running_mean, model[0][1].running_mean)


@pytest.mark.parametrize("already_built", [False, True], ids=["resume", "rollback"])
def test_ema_restored_from_a_checkpoint_continues_bitwise(already_built):
    """A resumed run builds its EMA from the checkpoint; a rolled-back one loads the
    checkpoint into the model and the EMA it already has, in place."""
    from trainkit.regularization import EMA

    model, ema = _bn_model(), EMA(decay=0.9)
    _train(model, range(3), ema.after_optimizer_step)
    saved_model = checkpoint_round_trip(model.state_dict())
    saved_ema = checkpoint_round_trip(ema.state_dict())
    _train(model, range(3, 7), ema.after_optimizer_step)

    restored_model, restored_ema = _bn_model(), EMA(decay=0.9)
    if already_built:  # its lists of tensors were made before the load
        _train(restored_model, range(100, 105), restored_ema.after_optimizer_step)
    restored_model.load_state_dict(saved_model)
    restored_ema.load_state_dict(saved_ema)
    _train(restored_model, range(3, 7), restored_ema.after_optimizer_step)

    assert restored_ema.updates == ema.updates == 7
    expected = ema.evaluation_model(model).state_dict()
    for key, value in restored_ema.evaluation_model(restored_model).state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_resumed_run_has_the_same_ema_as_a_run_left_alone(tmp_path):
    from trainkit import checkpoint, config
    from trainkit.runner import Runner

    def make_runner(name):
        overrides = ["data=synthetic", "model=mlp", "model.hidden=[16]", "augmentation=none"]
        overrides += ["logger.tensorboard=false", "logger.progress_bar=false"]
        overrides += ["regularization=[ema]", "regularization.ema.decay=0.9"]
        return Runner(config.compose(config.prepare(overrides)), tmp_path / name)

    straight = make_runner("straight")
    for _ in range(2):
        straight.train_epoch()
        straight.epoch += 1
    interrupted = make_runner("interrupted")
    interrupted.train_epoch()
    interrupted.epoch += 1
    checkpoint.save(interrupted.state_dict(), tmp_path / "state.pt")
    resumed = make_runner("resumed")
    resumed.load_state_dict(checkpoint.load(tmp_path / "state.pt"))
    resumed.train_epoch()
    expected = straight.evaluation_model().state_dict()
    for key, value in resumed.evaluation_model().state_dict().items():
        assert torch.equal(value, expected[key]), key
    raw = straight.model.state_dict()
    assert not all(torch.equal(value, raw[key]) for key, value in expected.items())  # an average


def test_ema_keeps_a_constant_infinite_buffer():
    from trainkit.regularization import EMA

    model = nn.Linear(2, 2)
    model.register_buffer("mask", torch.tensor([0.0, -math.inf]))  # an attention mask, say
    ema = EMA(decay=0.9)
    for _ in range(3):
        ema.after_optimizer_step(model)
    assert torch.equal(ema.evaluation_model(model).mask, model.mask)


# --- mixup, cutmix, drop_path ----------------------------------------------------------


def _batch():
    torch.manual_seed(0)
    return torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])


def test_mixup_blends_each_image_with_its_neighbour_by_the_label_weight():
    from trainkit.regularization import MixUp

    inputs, targets = _batch()
    mixed, soft = MixUp(alpha=0.4).mix_batch(inputs, targets, num_classes=6)
    assert soft.shape == (6, 6) and torch.allclose(soft.sum(dim=1), torch.ones(6))
    lam = soft[0, 0]  # torchvision pairs sample i with sample i-1 (a roll of the batch)
    expected = lam * inputs + (1 - lam) * inputs.roll(1, dims=0)
    assert torch.allclose(mixed, expected, atol=1e-6)
    assert torch.allclose(soft[1, 0], 1 - lam)


def test_cutmix_mixes_labels_by_the_pasted_area():
    from trainkit.regularization import CutMix

    inputs, targets = _batch()
    mixed, soft = CutMix(alpha=1.0).mix_batch(inputs, targets, num_classes=6)
    pasted = (mixed[0] == inputs.roll(1, dims=0)[0]) & (mixed[0] != inputs[0])
    assert soft[0, 0].item() == pytest.approx(1 - pasted.float().mean().item(), abs=1e-6)


def test_mixing_is_skipped_with_p_zero_and_after_another_mix():
    from trainkit.regularization import CutMix, MixUp

    inputs, targets = _batch()
    same_inputs, same_targets = MixUp(p=0.0).mix_batch(inputs, targets, 6)
    assert same_inputs is inputs and same_targets is targets
    mixed, soft = MixUp().mix_batch(inputs, targets, 6)
    again_inputs, again_targets = CutMix().mix_batch(mixed, soft, 6)
    assert again_inputs is mixed and again_targets is soft


def test_mixing_needs_cross_entropy():
    from trainkit import config
    from trainkit.errors import UserError
    from trainkit.regularization import MixUp

    cfg = config.compose(config.prepare(["loss=focal"]))
    with pytest.raises(UserError, match="use loss=cross_entropy"):
        MixUp().configure(cfg)


def test_drop_path_rates_grow_linearly_with_depth_and_vanish_at_eval():
    from trainkit.registry import MODELS

    model = MODELS.build(
        {"name": "resnet_cifar", "depth": 20, "drop_path": 0.4},
        num_classes=10,
        input_shape=(1, 8, 8),
    )
    rates = [block.drop_path.p for block in model.stages]
    assert rates == pytest.approx([0.4 * i / 8 for i in range(9)])
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), model(x))


def test_ema_warmup_uses_a_smaller_decay_early_on():
    from trainkit.regularization import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(decay=0.999)
    expected = None
    for n, value in enumerate((1.0, 2.0, 4.0)):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.after_optimizer_step(model)
        if expected is None:
            expected = value  # the first update copies
        else:
            decay = min(0.999, (1 + n) / (10 + n))  # n updates averaged before this one
            expected = decay * expected + (1 - decay) * value
    assert ema.evaluation_model(model).weight.item() == pytest.approx(expected)
