"""stats_init.py: Experiment 3, a fresh T5 drawn from a pre-trained checkpoint's parameter stats.

Groups of a fresh model's parameters (SCHEMES) are redrawn from the float64 mean and population
std of each group pooled in a pre-trained checkpoint (pretrain.py's .pt or a Hugging Face T5 folder,
which gives the config); the embedding keeps its init. Table 3 sets the pre-attention norms to c.
finetune.py runs both (--init=stats:<scheme>:<checkpoint>, --init=preattn_ln:<c>); group_stats
gives a scheme's groups and their statistics.
Reading order: ..., finetune.py, stats_init.py (here), reproduce.py, ... Next: reproduce.py.
"""
import os, re

import torch

import config
from model import T5, T5Config
from train import load_checkpoint

# The original code picks parameters by regexes on T5X names; these make the same picks on our
# names (e.g. encoder/layers_0/attention/query/kernel is our encoder.block.0.attn.q.weight).
PREATTN_NORM = r"attn_norm\.weight$"        # '.*attention.*norm': encoder, decoder self and cross
WHOLE_MODEL = {  # '.*attention/' and '.*mlp/'; '.*norm' (the final norms too); '.*relpos'
    "attention+mlp kernels": r"\.((cross_)?attn\.[qkvo]|mlp\.w\w+)\.weight$",
    "norms": r"norm\.weight$", "relpos": r"relative_attention_bias"}

# name -> (the original's init_id, statistic): "scale" sets a group of norms to its mean, draws the
# rest ~ N(0, std); "mean_std" all ~ N(mean, std). Pooled, iid: T5X's [in, out] needs no transpose.
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
    for n in sum(groups.values(), []):
        want = tuple(model.get_parameter(n).shape)
        if (got := tuple(state_dict[n].shape) if n in state_dict else "missing") != want:
            raise config.UserError(f"checkpoint tensor {n!r}: shape {got}, the model's is {want}")
    pooled = {g: torch.cat([state_dict[n].detach().cpu().double().flatten() for n in names])
              for g, names in groups.items()}
    return {g: (v.mean().item(), v.std(correction=0).item(), v.numel()) for g, v in pooled.items()}

@torch.no_grad()
def init_from_stats(model: T5, state_dict: dict, scheme: str, seed: int = 0) -> T5:
    """Redraw a fresh `model`'s grouped parameters from `state_dict`'s; the rest keep their init."""
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
    return (ckpt := load_checkpoint(path))["model"], T5Config(**ckpt["model_config"])

def parse_spec(spec: str) -> tuple:
    """A checked --init: ("stats", scheme, ckpt), ("preattn_ln", c, "") or (kind, "", path)."""
    kind, _, rest = spec.partition(":")
    scheme, _, path = rest.partition(":")  # the path may itself contain ':'
    if kind == "stats" and path:
        if (name := INIT_IDS.get(scheme, scheme)) not in SCHEMES:
            raise config.UserError(f"unknown init scheme {scheme!r}; known: {', '.join(SCHEMES)}")
        return kind, name, path
    if kind == "preattn_ln" and re.fullmatch(r"\d*\.?\d+(e-?\d+)?", rest) and float(rest) > 0:
        return kind, float(rest), ""
    if kind not in ("stats", "preattn_ln") and (spec == "scratch" or spec.removeprefix("hf:")):
        return kind, "", "" if spec == "scratch" else spec.removeprefix("hf:")  # or a checkpoint
    want = dict(stats="stats:<scheme>:<checkpoint>", preattn_ln="preattn_ln:<c>, a number c > 0")
    raise config.UserError(f"--init={spec}: expected " + want.get(
        kind, "scratch, a checkpoint, hf:<dir>, stats:... or preattn_ln:<c>"))
