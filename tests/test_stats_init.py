"""Tests for stats_init.py (Experiment 3, and Table 3's constant pre-attention layer norms).

The expected groups are derived independently: our names are translated to T5X flattened names
and the original code's regexes (`re.match`) are applied to them literally.
    python -m pytest -q tests/test_stats_init.py
"""
import json
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

from model import T5, get_config, hf_names
from config import UserError
from stats_init import (SCHEMES, group_stats, init_from_stats, load_source, parse_spec,
                        preattn_ln_init, scheme_groups)

TINY = dict(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_heads=4)
# Unequal depths so that nothing can silently assume 6+6 (or equal) layers.
RELU = get_config("t5-small", num_layers=2, num_decoder_layers=3, **TINY)
GATED_UNTIED = get_config("t5-v1_1-small", num_layers=1, num_decoder_layers=2, **TINY)
assert GATED_UNTIED.feed_forward_proj == "gated-gelu" and not GATED_UNTIED.tie_word_embeddings


def fresh(cfg, seed=0):
    torch.manual_seed(seed)
    return T5(cfg)


def fake_pretrained(model):
    """A 'checkpoint' whose every tensor has its own distinctive mean and std (norms far from 1)."""
    gen = torch.Generator().manual_seed(123)
    return {n: torch.randn(t.shape, generator=gen) * 0.02 * (1 + i % 5) + 0.3 * (i % 7 - 3) + 0.05
            for i, (n, t) in enumerate(model.state_dict().items())}


# --- the paper's groupings, on T5X names ---------------------------------------------------
T5X_MODULE = {"attn_norm": "pre_attention_layer_norm",
              "self_attn_norm": "pre_self_attention_layer_norm", "self_attn": "self_attention",
              "cross_attn_norm": "pre_cross_attention_layer_norm", "mlp_norm": "pre_mlp_layer_norm",
              "attn": "attention", "cross_attn": "encoder_decoder_attention", "mlp": "mlp"}


def t5x_name(n):
    """Our parameter name -> the T5X flattened name."""
    fixed = {"shared.weight": "token_embedder/embedding",
             "lm_head.weight": "decoder/logits_dense/kernel",
             "encoder.final_layer_norm.weight": "encoder/encoder_norm/scale",
             "decoder.final_layer_norm.weight": "decoder/decoder_norm/scale",
             "encoder.relative_attention_bias.weight": "encoder/relpos_bias/rel_embedding",
             "decoder.relative_attention_bias.weight": "decoder/relpos_bias/rel_embedding"}
    if n in fixed:
        return fixed[n]
    pattern = r"(encoder|decoder)\.block\.(\d+)\.(\w+?)\.(?:(\w+)\.)?weight"
    stack, i, module, sub = re.fullmatch(pattern, n).groups()
    if stack == "decoder" and module in ("attn", "attn_norm"):  # our attn is T5X's self_attention
        module = "self_" + module
    if sub is None:  # a layer norm
        return f"{stack}/layers_{i}/{T5X_MODULE[module]}/scale"
    sub = dict(q="query", k="key", v="value", o="out").get(sub, sub)
    return f"{stack}/layers_{i}/{T5X_MODULE[module]}/{sub}/kernel"


def paper_groups(model, scheme):
    """The groups of `scheme` as the original code builds them, mapped back to our names."""
    ours = {t5x_name(n): n for n, _ in model.named_parameters() if n != "lm_head.weight"}
    names = list(ours)
    gs = lambda regex: [x for x in names if re.match(regex, x)]
    single = lambda regex: [[x] for x in gs(regex) if x != "token_embedder/embedding"]
    if scheme == "whole_model_scale":
        groups = [gs(".*attention/") + gs(".*mlp/"), gs(".*norm"), gs(".*relpos")]
    else:
        groups = single(".*attention.*norm" if scheme == "preattn_ln_per_param_scale" else ".*")
    return {frozenset(ours[x] for x in g) for g in groups}


@pytest.mark.parametrize("cfg", [RELU, GATED_UNTIED], ids=["relu-tied", "gated-untied"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_groups_are_the_papers(scheme, cfg):
    model = fresh(cfg)
    groups = scheme_groups(model, scheme)
    assert {frozenset(g) for g in groups.values()} == paper_groups(model, scheme)
    for names in groups.values():  # homogeneous, so T5X's `'norm' in g[0]` rule is well defined
        assert len({n.endswith("norm.weight") for n in names}) == 1


def test_group_counts():
    model, e, d = fresh(RELU), RELU.num_layers, RELU.num_decoder_layers
    counts = {s: len(scheme_groups(model, s)) for s in SCHEMES}
    per_param = (1 + 8 * e + 1) + (1 + 13 * d + 1)  # relpos, blocks, final norm of each stack
    assert counts == dict(per_param_mean_sd=per_param, per_param_scale=per_param,
                          whole_model_scale=3, preattn_ln_per_param_scale=e + 2 * d)


@pytest.mark.parametrize("cfg", [RELU, GATED_UNTIED], ids=["relu-tied", "gated-untied"])
def test_whole_model_covers_every_non_embedding_param_once(cfg):
    model = fresh(cfg)
    grouped = [n for g in scheme_groups(model, "whole_model_scale").values() for n in g]
    expected = {n for n, _ in model.named_parameters()} - {"shared.weight", "lm_head.weight"}
    assert len(grouped) == len(set(grouped)) and set(grouped) == expected


@pytest.mark.parametrize("cfg", [RELU, GATED_UNTIED], ids=["relu-tied", "gated-untied"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_exactly_the_grouped_tensors_change(scheme, cfg):
    ref, model = fresh(cfg), fresh(cfg)
    out = init_from_stats(model, fake_pretrained(model), scheme, seed=1)
    assert out is model  # in place
    grouped = {n for g in scheme_groups(model, scheme).values() for n in g}
    ref_params = dict(ref.named_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, ref_params[n])}
    assert changed == grouped  # everything else keeps the default init, the embedding included
    assert torch.equal(model.shared.weight, ref.shared.weight)
    if not cfg.tie_word_embeddings:
        assert torch.equal(model.lm_head.weight, ref.lm_head.weight)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_drawn_values_follow_the_group_statistics(scheme):
    model = fresh(RELU)
    sd = fake_pretrained(model)
    groups = scheme_groups(model, scheme)
    stats = group_stats(sd, groups, model)
    init_from_stats(model, sd, scheme, seed=1)
    params, mean_sd = dict(model.named_parameters()), scheme == "per_param_mean_sd"
    checked = 0
    for g, names in groups.items():
        pooled = np.concatenate([sd[n].double().numpy().ravel() for n in names])
        mean, std = pooled.mean(), pooled.std()  # numpy's population std, as in T5X
        assert stats[g][:2] == pytest.approx((mean, std), rel=1e-9, abs=1e-12)
        for n in names:
            x = params[n].detach().double()
            if not mean_sd and n.endswith("norm.weight"):  # Scale schemes: LN = constant group mean
                assert torch.all(x == torch.tensor(mean, dtype=torch.float32).double()), n
                checked += 1
            elif x.numel() >= 4096:  # large enough for tight moment checks
                loc = mean if mean_sd else 0.0
                assert abs(x.mean().item() - loc) < 5 * std / x.numel() ** 0.5, n
                assert x.std(correction=0).item() == pytest.approx(std, rel=0.06), n
                checked += 1
    assert checked > 0


def test_seed_determines_the_model():
    def build(seed):
        model = fresh(RELU)
        sd = fake_pretrained(model)
        return init_from_stats(model, sd, "per_param_mean_sd", seed=seed).state_dict()
    a, b, c = build(3), build(3), build(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.block.0.attn.q.weight"], c["encoder.block.0.attn.q.weight"])


def test_original_init_id_spellings_are_accepted():
    for name, (init_id, *_) in SCHEMES.items():
        for spelling in (name, init_id):
            assert parse_spec(f"stats:{spelling}:c:/x.pt") == ("stats", name, "c:/x.pt")


def test_bad_scheme_and_checkpoint_errors():
    model = fresh(RELU)
    sd = fake_pretrained(model)
    with pytest.raises(UserError, match="per_param_mean_sd.*preattn_ln_per_param_scale"):
        parse_spec("stats:per_param_std:x.pt")
    missing = dict(sd)
    del missing["decoder.block.1.cross_attn.v.weight"]
    with pytest.raises(UserError, match=r"decoder\.block\.1\.cross_attn\.v\.weight.*missing"):
        init_from_stats(model, missing, "per_param_scale")
    reshaped = dict(sd, **{"encoder.block.0.mlp.wi.weight": torch.zeros(3, 3)})
    with pytest.raises(UserError, match=r"encoder\.block\.0\.mlp\.wi\.weight.*shape"):
        init_from_stats(model, reshaped, "whole_model_scale")
    # A failed check leaves the model untouched.
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh(RELU).parameters()))


def test_preattn_ln_init_sets_exactly_the_pre_attention_norms():
    ref, model = fresh(RELU), fresh(RELU)
    assert preattn_ln_init(model, 0.4) is model
    ref_params = dict(ref.named_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, ref_params[n])}
    e, d = RELU.num_layers, RELU.num_decoder_layers
    assert changed == ({f"encoder.block.{i}.attn_norm.weight" for i in range(e)}
                       | {f"decoder.block.{i}.{k}attn_norm.weight"
                          for i in range(d) for k in ("", "cross_")})
    assert all(torch.all(dict(model.named_parameters())[n] == 0.4) for n in changed)


def test_init_spec_and_checkpoint_formats(tmp_path):
    model = fresh(RELU)
    sd = fake_pretrained(model)
    path = tmp_path / "ckpt_best.pt"
    torch.save(dict(model=sd, model_config=asdict(RELU), step=5), path)
    assert parse_spec(f"stats:whole_model_scale:{path}") == ("stats", "whole_model_scale",
                                                             str(path))
    assert parse_spec("preattn_ln:0.2") == ("preattn_ln", 0.2, "")
    assert parse_spec("preattn_ln:.5e-1")[1] == 0.05
    for bad in ("preattn_ln:abc", "preattn_ln:-1", "preattn_ln:0", "preattn_ln:inf",
                "stats:whole_model_scale", "stats"):
        with pytest.raises(UserError, match="expected") as e:
            parse_spec(bad)
        assert bad in str(e.value) and "\n" not in str(e.value)
    # finetune.py's other kinds: the path of the weights, if any, is given back as it is
    assert parse_spec("scratch") == ("scratch", "", "")
    assert parse_spec("hf:c:/t5") == ("hf", "", "c:/t5") and parse_spec("x.pt")[1:] == ("", "x.pt")
    with pytest.raises(UserError, match="unknown init scheme 'bogus'"):
        parse_spec(f"stats:bogus:{path}")

    # A Hugging Face directory works as the source too.
    src = fresh(RELU)
    src.load_state_dict(sd)
    (tmp_path / "hf").mkdir()                          # a Hugging Face folder, older layout
    torch.save({hf_names(RELU)[k]: v for k, v in src.state_dict().items()},
               tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(asdict(RELU)))
    hf_sd, hf_cfg = load_source(str(tmp_path / "hf"))
    assert torch.equal(hf_sd["decoder.block.2.mlp.wo.weight"], sd["decoder.block.2.mlp.wo.weight"])
    assert hf_cfg == RELU and load_source(str(path))[1] == RELU

    mean, std, n = group_stats(sd, scheme_groups(model, "whole_model_scale"), model)["relpos"]
    relpos = torch.cat([sd[k].double().flatten() for k in sd if "relative_attention_bias" in k])
    assert n == relpos.numel() and mean == pytest.approx(relpos.mean().item())
    for empty in ("hf:", ""):                                  # no path: not silently scratch
        with pytest.raises(UserError, match="expected scratch, a checkpoint, hf:<dir>"):
            parse_spec(empty)
