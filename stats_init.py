"""stats_init.py: Experiment 3, a fresh T5 drawn from a pre-trained checkpoint's parameter stats.

Split a fresh model's parameters (model.py's default init) into groups; pool each group's tensors
in a pre-trained checkpoint (pretrain.py's .pt or a Hugging Face T5 folder, which gives the config)
into one float64 mean and population std; redraw the group from them (SCHEMES; the embedding keeps
its init). Table 3 sets every pre-attention layer norm to one constant c. finetune.py runs both;
this prints a scheme's groups:  python stats_init.py --init=stats:per_param_scale:<checkpoint>
Reading order: ..., finetune.py, stats_init.py (here), reproduce.py, ... Next: reproduce.py.
"""
import os
import re
from dataclasses import dataclass

import torch

import config
from model import T5, T5Config
from train import load_checkpoint

# The original code picks parameters by regexes on T5X names; these make the same picks on our
# names (e.g. encoder/layers_0/attention/query/kernel is our encoder.block.0.attn.q.weight).
PREATTN_NORM = r"attn_norm\.weight$"        # '.*attention.*norm': encoder, decoder self and cross
WHOLE_MODEL = {  # '.*attention/' and '.*mlp/'; '.*norm' (the final norms too); '.*relpos'
    "attention+mlp kernels": r"\.((self_|cross_)?attn\.[qkvo]|mlp\.w\w+)\.weight$",
    "norms": r"norm\.weight$", "relpos": r"relative_attention_bias"}

# name -> (the original code's init_id, statistic); groups: scheme_groups. "scale": a group of norms
# is set to its mean, any other drawn ~ N(0, std); "mean_std": every tensor ~ N(mean, std) iid.
# T5X kernels are [in, out], ours [out, in]: pooled statistics and iid draws ignore the layout.
SCHEMES = {"per_param_mean_sd": ("per_param_grouping___init_mean_std", "mean_std"),
           "per_param_scale": ("per_param_grouping___init_scale", "scale"),
           "whole_model_scale": ("across_ALL_layer_AND_per_layer_grouping___init_scale", "scale"),
           "preattn_ln_per_param_scale": ("preattnln_per_param_grouping___init_scale", "scale")}
INIT_IDS = {init_id: name for name, (init_id, *_) in SCHEMES.items()}

def scheme_groups(model: T5, scheme: str) -> dict[str, list[str]]:
    """{group name: [parameter names]} of `scheme` on `model`, in parameter order: one group per
    tensor but for whole_model_scale; never the embedding (a tied lm_head is listed as it)."""
    names = [n for n, _ in model.named_parameters() if n not in ("shared.weight", "lm_head.weight")]
    if scheme == "whole_model_scale":  # despite the original's name: 3 model-wide pools
        return {g: [n for n in names if re.search(p, n)] for g, p in WHOLE_MODEL.items()}
    keep = PREATTN_NORM if scheme == "preattn_ln_per_param_scale" else ""  # "": every name
    return {n: [n] for n in names if re.search(keep, n)}

def group_stats(state_dict: dict, groups: dict[str, list[str]], model: T5) -> dict[str, tuple]:
    """{group: (mean, population std, #values)} over the group's pooled checkpoint tensors."""
    params = dict(model.named_parameters())
    for n in sum(groups.values(), []):
        got = tuple(state_dict[n].shape) if n in state_dict else "missing"
        if got != tuple(params[n].shape):
            raise config.UserError(f"checkpoint tensor {n!r}: shape {got}, the model's is "
                                   f"{tuple(params[n].shape)}")
    pooled = {g: torch.cat([state_dict[n].detach().cpu().double().flatten() for n in names])
              for g, names in groups.items()}
    return {g: (v.mean().item(), v.std(correction=0).item(), v.numel()) for g, v in pooled.items()}

@torch.no_grad()
def init_from_stats(model: T5, state_dict: dict, scheme: str, seed: int = 0) -> T5:
    """Redraw `model`'s grouped parameters in place from `state_dict`'s group statistics;
    `model` should be freshly built: parameters outside every group keep their init."""
    groups, mean_std = scheme_groups(model, scheme), SCHEMES[scheme][1] == "mean_std"
    stats = group_stats(state_dict, groups, model)  # checks every tensor before anything changes
    gen = torch.Generator().manual_seed(seed)  # our choice: the original uses unseeded np.random
    for names, (mean, std, _) in zip(groups.values(), stats.values()):  # draws in group order
        for p in map(model.get_parameter, names):
            if not mean_std and "norm" in names[0]:  # the original's rule, as it is
                p.fill_(mean)
            else:  # drawn in float64, cast to the parameter's dtype and device
                p.copy_(torch.normal(mean if mean_std else 0.0, std, p.shape, generator=gen,
                                     dtype=torch.float64))
    return model

@torch.no_grad()
def preattn_ln_init(model: T5, c: float) -> T5:
    """Table 3: every pre-attention norm (encoder, decoder self and cross) = c, in place."""
    for n in scheme_groups(model, "preattn_ln_per_param_scale"):
        model.get_parameter(n).fill_(c)
    return model

def load_source(path: str) -> tuple[dict, T5Config]:
    """(state dict, model config) of a pretrain.py .pt checkpoint or a Hugging Face T5 directory."""
    if os.path.isdir(path):
        return (hf := T5.from_pretrained(path)).state_dict(), hf.config
    ckpt = load_checkpoint(path)
    return ckpt["model"], T5Config(**ckpt["model_config"])

def parse_spec(spec: str) -> tuple:
    """A checked spec: ("stats", scheme (or its init_id), checkpoint) or ("preattn_ln", c, "")."""
    kind, _, rest = spec.partition(":")
    scheme, _, path = rest.partition(":")  # the path may itself contain ':'
    if kind == "stats" and path:
        if (name := INIT_IDS.get(scheme, scheme)) not in SCHEMES:
            raise config.UserError(f"unknown init scheme {scheme!r}; known: {', '.join(SCHEMES)}")
        return kind, name, path
    if kind == "preattn_ln" and re.fullmatch(r"\d*\.?\d+(e-?\d+)?", rest) and float(rest) > 0:
        return kind, float(rest), ""
    want = "stats:<scheme>:<checkpoint>" if kind == "stats" else "preattn_ln:<c>, a number c > 0"
    raise config.UserError(f"--init={spec}: expected {want}")

@dataclass
class StatsInitConfig:
    init: str = ""  # stats:<scheme>:<checkpoint>, a pretrain.py .pt or a Hugging Face T5 folder

def main(argv: list[str]) -> None:
    kind, scheme, path = parse_spec(spec := config.parse(StatsInitConfig, argv, doc=__doc__).init)
    if kind != "stats":
        raise config.UserError(f"--init={spec}: expected stats:<scheme>:<checkpoint> (its groups)")
    state_dict, model_config = load_source(path)
    groups = scheme_groups(model := T5(model_config), scheme)
    print(f"{scheme} ({SCHEMES[scheme][0]}), {len(groups)} groups from {path}")
    for g, (mean, std, n) in group_stats(state_dict, groups, model).items():
        print(f"{g:<44} {len(groups[g]):>3} tensors {n:>9} values, mean {mean:.5f}, std {std:.5f}")

if __name__ == "__main__":
    config.main(main)
