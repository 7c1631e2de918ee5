"""stats_init.py: Experiment 3, a fresh T5 drawn from a pre-trained checkpoint's parameter stats.

Section "parameter statistics": split a fresh model's parameters (model.py's default init) into
groups, pool each group's tensors in the pre-trained checkpoint into one mean and population std
(float64), and redraw the group's tensors from them (the schemes: SCHEMES below). Nothing else
transfers: the embedding (and an untied lm_head) keep the default init. Table 3's init needs no
checkpoint: every pre-attention layer norm scale is set to one constant c.

    python stats_init.py --init=stats:whole_model_scale:out/set/ckpt_best.pt --out=init.pt
    python stats_init.py --init=preattn_ln:0.4 --model=t5-small --out=init.pt

It prints the groups' statistics; finetune.py takes the same --init. The checkpoint (pretrain.py's
.pt or a Hugging Face T5 directory) also gives the model config; --out is in pretrain.py's format.
Reading order: ..., finetune.py, stats_init.py (here), reproduce.py, ... Next: reproduce.py.
"""
import os
import re
from dataclasses import asdict, dataclass

import torch

import config
from model import T5, T5Config, get_config
from train import load_checkpoint, save_checkpoint

# The original code picks parameters by regexes on T5X names; these make the same picks on our
# names (e.g. encoder/layers_0/attention/query/kernel is our encoder.block.0.attn.q.weight).
PREATTN_NORM = r"attn_norm\.weight$"        # '.*attention.*norm': encoder, decoder self and cross
WHOLE_MODEL = {  # '.*attention/' and '.*mlp/'; '.*norm' (the final norms too); '.*relpos'
    "attention+mlp kernels": r"\.((self_|cross_)?attn\.[qkvo]|mlp\.w\w+)\.weight$",
    "norms": r"norm\.weight$", "relpos": r"relative_attention_bias"}

# name -> (the original code's init_id, statistic); the groups: scheme_groups. Statistic "scale":
# a group of norms is set to its mean, any other drawn ~ N(0, std), so only the spread transfers;
# "mean_std": every tensor ~ N(mean, std) iid. T5X kernels are [in, out], ours [out, in]: pooled
# statistics and iid draws do not depend on the layout.
SCHEMES = {"per_param_mean_sd": ("per_param_grouping___init_mean_std", "mean_std"),
           "per_param_scale": ("per_param_grouping___init_scale", "scale"),
           "whole_model_scale": ("across_ALL_layer_AND_per_layer_grouping___init_scale", "scale"),
           "preattn_ln_per_param_scale": ("preattnln_per_param_grouping___init_scale", "scale")}
INIT_IDS = {init_id: name for name, (init_id, *_) in SCHEMES.items()}

def resolve_scheme(scheme: str) -> str:
    """Our name of `scheme`, which may also be the original code's init_id."""
    name = INIT_IDS.get(scheme, scheme)
    if name not in SCHEMES:
        raise config.UserError(f"unknown init scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return name

def scheme_groups(model: T5, scheme: str) -> dict[str, list[str]]:
    """{group name: [parameter names]} of `scheme` on `model`, in parameter order: one group per
    tensor but for whole_model_scale; preattn_ln_per_param_scale leaves all but those norms out."""
    scheme = resolve_scheme(scheme)
    # named_parameters() lists a tied lm_head once, as shared.weight
    names = [n for n, _ in model.named_parameters() if n not in ("shared.weight", "lm_head.weight")]
    if scheme == "whole_model_scale":  # despite the original's name: 3 model-wide pools
        return {g: [n for n in names if re.search(p, n)] for g, p in WHOLE_MODEL.items()}
    if scheme == "preattn_ln_per_param_scale":
        return {n: [n] for n in names if re.search(PREATTN_NORM, n)}
    return {n: [n] for n in names}

def group_stats(state_dict: dict, groups: dict[str, list[str]], model: T5) -> dict[str, tuple]:
    """{group: (mean, population std, #values)} over the group's pooled checkpoint tensors."""
    params, stats = dict(model.named_parameters()), {}
    for g, names in groups.items():
        for n in names:
            if n not in state_dict or state_dict[n].shape != params[n].shape:
                got = tuple(state_dict[n].shape) if n in state_dict else "missing"
                raise config.UserError(f"checkpoint tensor {n!r} (group {g!r}): shape {got}, "
                                       f"the model's is {tuple(params[n].shape)}")
        values = torch.cat([state_dict[n].detach().cpu().double().flatten() for n in names])
        stats[g] = (values.mean().item(), values.std(correction=0).item(), values.numel())
    return stats

@torch.no_grad()
def init_from_stats(model: T5, state_dict: dict, scheme: str, seed: int = 0) -> T5:
    """Redraw `model`'s grouped parameters in place from `state_dict`'s group statistics;
    `model` should be freshly built: parameters outside every group keep their init."""
    statistic, groups = SCHEMES[resolve_scheme(scheme)][1], scheme_groups(model, scheme)
    stats = group_stats(state_dict, groups, model)  # checks every tensor before anything changes
    params = dict(model.named_parameters())
    # one CPU generator, draws in group order (our choice: the original uses unseeded np.random)
    gen = torch.Generator().manual_seed(seed)
    for g, names in groups.items():
        mean, std, _ = stats[g]
        for n in names:
            if statistic == "scale" and "norm" in names[0]:  # the original's rule, as it is
                params[n].fill_(mean)
            else:
                loc = mean if statistic == "mean_std" else 0.0
                draw = torch.normal(loc, std, tuple(params[n].shape), generator=gen,
                                    dtype=torch.float64)
                params[n].copy_(draw)  # cast to the parameter's dtype and device
    return model

@torch.no_grad()
def preattn_ln_init(model: T5, c: float) -> T5:
    """Table 3: every pre-attention norm (encoder, decoder self and cross) = c, in place."""
    for n, p in model.named_parameters():
        if re.search(PREATTN_NORM, n):
            p.fill_(c)
    return model

def load_source(path: str) -> tuple[dict, T5Config]:
    """(state dict, model config) of a pretrain.py .pt checkpoint or a Hugging Face T5 directory."""
    if os.path.isdir(path):
        pretrained = T5.from_pretrained(path)
        return pretrained.state_dict(), pretrained.config
    ckpt = load_checkpoint(path)
    return ckpt["model"], T5Config(**ckpt["model_config"])

def parse_spec(spec: str) -> tuple:
    """An init spec, checked: ("stats", scheme, checkpoint path) or ("preattn_ln", c, "")."""
    kind, _, rest = spec.partition(":")
    scheme, _, path = rest.partition(":")  # the path may itself contain ':'
    if kind == "stats" and path:
        return kind, resolve_scheme(scheme), path
    if kind == "preattn_ln" and re.fullmatch(r"\d*\.?\d+(e-?\d+)?", rest) and float(rest) > 0:
        return kind, float(rest), ""
    want = dict(stats="stats:<scheme>:<checkpoint>",
                preattn_ln="preattn_ln:<c>, a number c > 0 (e.g. 0.4)")
    raise config.UserError(f"--init={spec}: expected " + want.get(kind, " or ".join(want.values())))

def apply_init_spec(model: T5, spec: str, seed: int = 0) -> T5:
    """finetune.py's --init=stats:<scheme>:<checkpoint> or --init=preattn_ln:<c>, in place."""
    kind, arg, path = parse_spec(spec)
    if kind == "preattn_ln":
        return preattn_ln_init(model, arg)
    return init_from_stats(model, load_source(path)[0], arg, seed)

@dataclass
class StatsInitConfig:
    init: str = ""       # stats:<scheme>:<checkpoint (.pt or HF directory)> or preattn_ln:<c>
    model: str = "cpu"   # model.PRESETS name, for preattn_ln (stats: the checkpoint's config)
    seed: int = 0        # seeds the fresh default init and the draws
    out: str = ""        # write the drawn model here ("" = only print the groups)

def main(argv: list[str]) -> None:
    cfg = config.parse(StatsInitConfig, argv, doc=__doc__)
    kind, arg, path = parse_spec(cfg.init)
    state_dict, model_config = load_source(path) if path else (None, get_config(cfg.model))
    torch.manual_seed(cfg.seed)  # the fresh default init of everything left ungrouped
    model = T5(model_config)
    if kind == "preattn_ln":
        preattn_ln_init(model, arg)
        print(f"set every pre-attention layer norm scale to {arg:g}")
    else:
        groups = scheme_groups(model, arg)
        print(f"{arg} ({SCHEMES[arg][0]}), {len(groups)} groups from {path}")
        print(f"{'group':<44} {'tensors':>7} {'values':>10} {'mean':>10} {'std':>9}")
        for g, (mean, std, numel) in group_stats(state_dict, groups, model).items():
            print(f"{g:<44} {len(groups[g]):>7} {numel:>10} {mean:>10.5f} {std:>9.5f}")
        init_from_stats(model, state_dict, arg, cfg.seed)
    if cfg.out:  # pretrain.py's keys; "config" records how this model was made
        save_checkpoint(dict(model=model.state_dict(), model_config=asdict(model.config), step=0,
                             config=dict(init=cfg.init, seed=cfg.seed)), cfg.out)
        print(f"wrote {cfg.out}")

if __name__ == "__main__":
    config.main(main)
