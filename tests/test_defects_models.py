"""Context encoding, context dropout and the classifier variants: known values, invariances, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmctx.defects.context import CONTEXT_FIELDS, Context
from tdmctx.defects.models import (
    CONTEXT_DIM,
    FIELD_SETS,
    VARIANTS,
    ContextClassifier,
    context_columns,
    drop_context_fields,
    encode_contexts,
    hide_context_fields,
)

torch.set_num_threads(1)

FULL = Context("W", "Se", "Ti", 80e3, 60.0, 200.0)


def _small(variant="film", **kw):
    return ContextClassifier(variant, width=4, context_hidden=8, seed=0, **kw)


def _excite_film(model):
    # FiLM starts at the identity; give it weights so that the context matters.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.film:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
    return model


def test_encoding_known_values_and_unknown_fields():
    enc = encode_contexts([FULL, Context()])
    assert enc.shape == (2, CONTEXT_DIM) and enc.dtype == torch.float32
    row = enc[0]
    assert row[context_columns("host_metal")].tolist() == pytest.approx([1.0, 0.74])
    assert row[context_columns("chalcogen")].tolist() == pytest.approx([1.0, 0.34])
    assert row[context_columns("dopant")].tolist() == pytest.approx([1.0, 0.22])
    # 80 keV: lambda = 0.041757 A (relativistic)
    assert row[context_columns("energy_eV")].tolist() == pytest.approx([1.0, 80 / 300, 0.041757 / 0.05], rel=1e-4)
    assert row[context_columns("detector_inner_mrad")].tolist() == pytest.approx([1.0, 0.6])
    assert row[context_columns("detector_outer_mrad")].tolist() == pytest.approx([1.0, 1.0])
    assert torch.all(enc[1] == 0)  # unknown = all zeros, never a default value
    partial = encode_contexts([FULL], fields=FIELD_SETS["composition"])[0]
    assert torch.all(partial[context_columns("energy_eV")] == 0)
    assert partial[context_columns("dopant")][0] == 1.0


def test_encoding_bad_input():
    with pytest.raises(ValueError, match="single Context"):
        encode_contexts(FULL)
    with pytest.raises(ValueError, match=r"contexts\[1\]"):
        encode_contexts([FULL, {"dopant": "Ti"}])
    with pytest.raises(ValueError, match="unknown field"):
        encode_contexts([FULL], fields=("voltage",))
    with pytest.raises(ValueError, match="context field"):
        context_columns("dose")


def test_context_dropout_drops_whole_fields_at_the_requested_rate():
    enc = encode_contexts([FULL] * 4000)
    gen = torch.Generator().manual_seed(0)
    dropped = drop_context_fields(enc, 0.3, generator=gen)
    assert torch.equal(drop_context_fields(enc, 0.0), enc)
    assert torch.all(drop_context_fields(enc, 1.0) == 0)
    for name in CONTEXT_FIELDS:
        block = dropped[:, context_columns(name)]
        known = block[:, 0] == 1
        # a field is either intact or entirely zero (known bit and values together)
        assert torch.equal(block[known], enc[known][:, context_columns(name)])
        assert torch.all(block[~known] == 0)
        assert (~known).float().mean().item() == pytest.approx(0.3, abs=0.03)
    with pytest.raises(ValueError, match="probability"):
        drop_context_fields(enc, 1.5)


def test_hiding_fields_equals_never_encoding_them():
    enc = encode_contexts([FULL, Context("Mo", "S", "V", 200e3, None, None)])
    for hidden in [(), ("dopant",), ("host_metal", "chalcogen", "dopant"), CONTEXT_FIELDS]:
        kept = [f for f in CONTEXT_FIELDS if f not in hidden]
        expect = encode_contexts([FULL, Context("Mo", "S", "V", 200e3, None, None)], fields=kept)
        assert torch.equal(hide_context_fields(enc, hidden), expect)
    assert torch.equal(enc, encode_contexts([FULL, Context("Mo", "S", "V", 200e3, None, None)]))  # input untouched
    with pytest.raises(ValueError, match="unknown field"):
        hide_context_fields(enc, ("dose",))
    with pytest.raises(ValueError, match="shape"):
        hide_context_fields(enc[:, :3], ("dopant",))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("in_channels", [1, 2])
def test_shapes_and_gradients(variant, in_channels):
    model = _small(variant, in_channels=in_channels)
    for size in (15, 16):
        x = torch.randn(3, in_channels, size, size)
        logits = model(x, encode_contexts([FULL] * 3))
        assert logits.shape == (3, 5)
    logits.logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["stem.0.weight"].abs().sum() > 0
    if variant == "film":
        assert all(grads[f"film.{i}.weight"].abs().sum() > 0 for i in range(len(model.blocks)))
    if variant == "late":
        assert grads["context_net.0.weight"].abs().sum() > 0


def test_context_dependence_and_field_masking():
    x = torch.randn(4, 1, 16, 16)
    a = encode_contexts([FULL] * 4)
    b = encode_contexts([Context("Mo", "S", "Ti", 80e3, 60.0, 200.0)] * 4)
    e = encode_contexts([Context("W", "Se", "Ti", 300e3, 60.0, 200.0)] * 4)
    image_only = _small("image-only").eval()  # eval: no dropout noise in the comparisons
    assert torch.equal(image_only(x, a), image_only(x, b))
    # zero-initialised FiLM: a new film model is its image-only twin, context-blind
    fresh = _small("film").eval()
    assert torch.allclose(fresh(x, a), fresh(x, b))
    late = _small("late").eval()
    assert not torch.allclose(late(x, a), late(x, b))
    film = _excite_film(_small("film")).eval()
    assert not torch.allclose(film(x, a), film(x, b))
    composition_only = _excite_film(_small("film", fields=FIELD_SETS["composition"])).eval()
    # a field the model may not see changes nothing; a field it sees does
    assert torch.equal(composition_only(x, a), composition_only(x, e))
    assert not torch.allclose(composition_only(x, a), composition_only(x, b))
    # unknown fields are accepted, and differ from known ones
    unknown = encode_contexts([FULL.masked("detector_inner_mrad", "detector_outer_mrad")] * 4)
    assert not torch.allclose(film(x, a), film(x, unknown))


def test_predictions_do_not_depend_on_the_batch():
    model = _excite_film(_small("film")).eval()
    x = np.random.default_rng(0).normal(size=(6, 16, 16)).astype(np.float32)
    together = model.predict_proba(x, FULL, device="cpu")
    alone = np.concatenate([model.predict_proba(x[i : i + 1], FULL, device="cpu") for i in range(6)])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(together.sum(axis=1), 1.0, atol=1e-6)
    per_patch = model.predict_proba(x, [FULL] * 6, batch_size=4, device="cpu")
    np.testing.assert_allclose(per_patch, together, atol=1e-6)
    softer = model.predict_proba(x, FULL, temperature=3.0, device="cpu")
    assert np.all(softer.max(axis=1) < together.max(axis=1))


def test_seeded_init_config_and_save_load_round_trip(tmp_path):
    a, b = _small("late", in_channels=2), _small("late", in_channels=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = ContextClassifier("late", in_channels=2, width=4, context_hidden=8, seed=1)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert ContextClassifier.from_config(a.config).config == a.config
    x = torch.randn(2, 2, 16, 16)
    path = a.save(tmp_path / "model.pt", card={"data": "synthetic", "metrics": {"accuracy": 0.5}})
    loaded = ContextClassifier.load(path, device="cpu")
    assert loaded.card["metrics"]["accuracy"] == 0.5 and loaded.config == a.config
    ctx = encode_contexts([FULL] * 2)
    assert torch.equal(loaded(x, ctx), a.eval()(x, ctx))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        ContextClassifier.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        ContextClassifier.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown key"):
        ContextClassifier.from_config({**a.config, "depth": 3})


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="variant"):
        ContextClassifier("transformer")
    with pytest.raises(ValueError, match="in_channels"):
        ContextClassifier(in_channels=3)
    with pytest.raises(ValueError, match="image-only"):
        ContextClassifier("image-only", fields=("dopant",))
    model = _small("film")
    with pytest.raises(ValueError, match="image must have shape"):
        model(torch.randn(2, 2, 16, 16), encode_contexts([FULL] * 2))
    with pytest.raises(ValueError, match="needs a context"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(2, 1, 6, 6), encode_contexts([FULL] * 2))
    with pytest.raises(ValueError, match="expected"):
        model.predict_proba(np.zeros((3, 16, 16)), [FULL] * 2)
