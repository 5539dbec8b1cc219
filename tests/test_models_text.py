"""The text transformer: shapes, padding, input checks, and that it learns a text task."""

from __future__ import annotations

import typing

import pytest
import torch

from tests.fake_text import make_text_csv
from trainkit import config
from trainkit.errors import UserError
from trainkit.models import Init
from trainkit.models.text import sinusoidal
from trainkit.registry import MODELS, load_components
from trainkit.runner import Runner

load_components()

SMALL = {"embed_dim": 16, "num_layers": 2, "num_heads": 2, "mlp_dim": 32, "max_len": 32}


def build(input_shape=(12,), num_classes=3, vocab_size=50, **params):
    node = {"name": "text_transformer", **SMALL, **params}
    return MODELS.build(
        node, "model", num_classes=num_classes, input_shape=input_shape, vocab_size=vocab_size
    )


def sentences(batch=4, length=12, vocab_size=50):
    """Token ids with some padding at the end of every row but the first."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, vocab_size, (batch, length), generator=generator)
    for row in range(1, batch):
        tokens[row, length - 2 * row :] = 0
    return tokens


# --- shapes and padding --------------------------------------------------------------------


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_output_shape(pooling, positional):
    model = build(pooling=pooling, positional=positional)
    assert model(sentences()).shape == (4, 3)
    assert model.eval()(sentences(batch=2, length=7)).shape == (2, 3)  # shorter than max_len


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_extra_padding_does_not_change_the_output(pooling, positional):
    model = build(pooling=pooling, positional=positional).eval()
    tokens = sentences()
    padded = torch.cat([tokens, torch.zeros(4, 20, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_row_of_padding_only_gives_finite_logits_and_gradients(pooling):
    model = build(pooling=pooling)
    tokens = sentences()
    tokens[0] = 0
    logits = model(tokens)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(tokens)).all()


@pytest.mark.parametrize("scheme", typing.get_args(Init))
def test_every_init_scheme_builds(scheme):
    assert torch.isfinite(build(init=scheme)(sentences())).all()


def test_sinusoidal_encoding():
    encoding = sinusoidal(10, 7)  # an odd width works too
    assert encoding.shape == (1, 10, 7)
    assert encoding[0, 0].tolist() == [0, 1, 0, 1, 0, 1, 0]  # sin(0), cos(0), ...
    assert torch.allclose(encoding[0, 3, 0], torch.sin(torch.tensor(3.0)))


# --- input checks --------------------------------------------------------------------------


def test_needs_token_inputs():
    message = "model text_transformer needs token inputs; use data=text_csv"
    with pytest.raises(UserError, match=f"^{message}$"):
        build(input_shape=(1, 8, 8), vocab_size=None)


def test_max_len_must_cover_the_data():
    with pytest.raises(
        UserError,
        match=r"^model\.max_len=32 is shorter than the data's sequences \(data\.max_len=64\); "
        r"set model\.max_len=64 or more$",
    ):
        build(input_shape=(64,))


def test_embed_dim_must_split_into_heads():
    with pytest.raises(
        UserError, match=r"^model\.embed_dim=16 is not divisible by model\.num_heads=3; "
    ):
        build(num_heads=3)


@pytest.mark.parametrize(("key", "value"), [("pooling", "max"), ("positional", "rotary")])
def test_bad_choices_fail_validation(key, value):
    with pytest.raises(UserError, match=rf"^model\.{key}='{value}' is not a choice; "):
        MODELS.check({"name": "text_transformer", key: value})


# --- learning ------------------------------------------------------------------------------


def test_learns_the_fake_text_task(tmp_path):
    path = make_text_csv(tmp_path / "fake.csv", n=300)
    overrides = [
        "data=text_csv",
        f"data.path={path}",
        "data.max_len=24",
        "model=text_transformer",
        "model.embed_dim=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.mlp_dim=64",
        "model.max_len=24",
        "optimizer=adamw",
        "optimizer.lr=1e-2",
        "trainer.max_epochs=12",
        "logger.tensorboard=false",
        "logger.progress_bar=false",
    ]
    cfg = config.compose(config.prepare(overrides))
    config.validate(cfg)
    summary = Runner(cfg, tmp_path / "run").fit()
    assert summary["test/acc"] > 0.8  # chance is 1/3
