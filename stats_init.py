"""Experiment 3: initialise a fresh T5 from a pre-trained checkpoint's parameter statistics.

PAPER.md §4. Fresh model (model.py default init) -> split its parameters into groups -> for each group,
concatenate the pre-trained tensors, take mean and population std (float64) -> redraw every tensor of the
group from them. Nothing else of the checkpoint is used. Also Table 3's init: every pre-attention
layer norm set to one constant c, with no checkpoint at all.

    python stats_init.py --ckpt=out/ckpt_best.pt --scheme=whole_model_scale             # print the groups
    python stats_init.py --ckpt=out/ckpt_best.pt --scheme=per_param_mean_sd --out=init.pt
    python stats_init.py --scheme=preattn_ln:0.4 --preset=t5-small --out=init.pt        # Table 3
    # finetune.py: --init=stats:<scheme>:<checkpoint>   or   --init=preattn_ln:<c>

--ckpt is a pretrain.py checkpoint (.pt; its "model" state dict) or a Hugging Face T5 directory.
--scheme=preattn_ln:<c> needs no checkpoint (--ckpt, if given, only supplies the model config).
--seed seeds both the fresh default init and the redraws; --out writes a checkpoint with pretrain.py's
keys ("model", "model_config", "step": 0, "config": {"init", "seed"}), loadable by pretrain/finetune.

T5X flattened names (PAPER.md §2) -> ours. T5X kernels are [in, out] and relpos [H, 32], ours [out, in]
and [32, H]: pooled statistics and iid redraws do not depend on the layout.
  token_embedder/embedding                                 shared.weight          (never transferred)
  decoder/logits_dense/kernel (v1.1 only, untied)          lm_head.weight         (never transferred)
  {encoder,decoder}/relpos_bias/rel_embedding              {encoder,decoder}.relative_attention_bias.weight
  encoder/layers_i/pre_attention_layer_norm/scale          encoder.block.i.attn_norm.weight
  encoder/layers_i/attention/{query,key,value,out}/kernel  encoder.block.i.attn.{q,k,v,o}.weight
  decoder/layers_i/pre_self_attention_layer_norm/scale     decoder.block.i.self_attn_norm.weight
  decoder/layers_i/self_attention/{query,..,out}/kernel    decoder.block.i.self_attn.{q,k,v,o}.weight
  decoder/layers_i/pre_cross_attention_layer_norm/scale    decoder.block.i.cross_attn_norm.weight
  decoder/layers_i/encoder_decoder_attention/{..}/kernel   decoder.block.i.cross_attn.{q,k,v,o}.weight
  */layers_i/pre_mlp_layer_norm/scale                      *.block.i.mlp_norm.weight
  */layers_i/mlp/{wi,wi_0,wi_1,wo}/kernel                  *.block.i.mlp.{wi,wi_0,wi_1,wo}.weight
  encoder/encoder_norm/scale, decoder/decoder_norm/scale   {encoder,decoder}.final_layer_norm.weight
So T5X's regexes read: `.*norm` = every `*norm.weight`; `.*attention.*norm` = `*attn_norm.weight`;
`.*mlp.*norm` = `mlp_norm`; `.*attention/` = the q/k/v/o of attn, self_attn, cross_attn; `.*mlp/` = mlp.w*.
lm_head: the paper's model is tied (no such tensor); we treat it like the embedding and never transfer it.

Schemes (our name <- original `init_id`), groups over all parameters but shared/lm_head:
  per_param_mean_sd          <- per_param_grouping___init_mean_std: one group per tensor
  per_param_scale            <- per_param_grouping___init_scale: one group per tensor
  whole_model_scale          <- across_ALL_layer_AND_per_layer_grouping___init_scale: 3 groups, {all
                                attention + MLP kernels}, {all norms incl. final}, {both relpos tables}
  preattn_ln_per_param_scale <- preattnln_per_param_grouping___init_scale: each pre-attention norm alone
  across_layers_scale        <- across_ALL_layer_grouping___init_scale: 9 groups, all q; all k; all v;
                                all o; all MLP kernels; all pre-MLP norms; all pre-attention norms
                                (enc, dec self, dec cross); both final norms; both relpos tables
  per_layer_scale            <- per_layer_grouping___init_scale: per block, {its attention + MLP kernels}
                                and {its norms}; singletons for the final norms and relpos tables
  premlp_ln_per_param_scale  <- premlpln_per_param_grouping___init_scale: each pre-MLP norm alone
  attention_per_param_scale  <- qkvo_per_param_grouping___init_scale: each q/k/v/o kernel alone
  mlp_per_param_scale        <- mlp_per_param_grouping___init_scale: each MLP kernel alone
Draws: init_mean_std: every tensor ~ N(mean, std) iid, norms and relpos included. init_scale: a group
whose first name contains "norm" (T5X's rule; our groups never mix norms and others) = constant mean,
any other group ~ N(0, std). Parameters in no group keep model.py's default init.
"""
import os
import re
import sys
from dataclasses import asdict

import torch

from model import T5, T5Config, get_config
from train import load_checkpoint as load_training_checkpoint

NEVER_TRANSFERRED = ("shared.weight", "lm_head.weight")  # embedding (and untied output), PAPER.md §4

# Name predicates on our parameter names, each a translation of one T5X regex (see the table above).
def _is_norm(n): return n.endswith("norm.weight")                 # '.*norm'
def _is_attn_norm(n): return n.endswith("attn_norm.weight")       # '.*attention.*norm'
def _is_mlp_norm(n): return n.endswith(".mlp_norm.weight")        # '.*mlp.*norm'
def _is_attn(n): return re.search(r"\.(attn|self_attn|cross_attn)\.[qkvo]\.weight$", n) is not None  # '.*attention/'
def _is_mlp(n): return re.search(r"\.mlp\.w\w+\.weight$", n) is not None  # '.*mlp/': wi or wi_0/wi_1, and wo
def _is_relpos(n): return "relative_attention_bias" in n  # '.*relpos'


def _per_param(keep):
    """A grouping with one singleton group per kept tensor (T5X's `*per_param_grouping`)."""
    return lambda names: {n: [n] for n in names if keep(n)}


def _whole_model(names):
    # T5X `get_across_ALL_layer_AND_per_layer_grouping`: despite the name, 3 model-wide pools.
    return {"attention+mlp kernels": [n for n in names if _is_attn(n) or _is_mlp(n)],
            "norms": [n for n in names if _is_norm(n)], "relpos": [n for n in names if _is_relpos(n)]}


def _across_layers(names):
    # T5X `get_across_ALL_layer_grouping`: one pool per parameter kind, self- and cross-attention together
    # ('.*query' etc.), the 3 kinds of pre-attention norm together ('.*attention_layer_norm').
    groups = {f"attention {p}": [n for n in names if _is_attn(n) and n.endswith(f".{p}.weight")] for p in "qkvo"}
    groups["mlp kernels"] = [n for n in names if _is_mlp(n)]
    groups["pre-mlp norms"] = [n for n in names if _is_mlp_norm(n)]
    groups["pre-attention norms"] = [n for n in names if _is_attn_norm(n)]
    groups["final norms"] = [n for n in names if "final_layer_norm" in n]
    groups["relpos"] = [n for n in names if _is_relpos(n)]
    return groups


def _per_layer(names):
    # T5X `get_per_layer_grouping` loops over layers_0..5 of both stacks; we read each block from the
    # names, so any depth works. Final norms and relpos tables (outside every block) stay singletons.
    groups = {}
    for n in names:
        block = re.match(r"(encoder|decoder)\.block\.\d+\.", n)
        key = f"{block.group(0)}{'norms' if _is_norm(n) else 'kernels'}" if block else n
        groups.setdefault(key, []).append(n)
    return groups


MEAN_STD, SCALE = "init_mean_std", "init_scale"  # T5X's two statistics functions (PAPER.md §4, step 5)
# name -> (original init_id, grouping function, statistic, must the groups cover every parameter?)
SCHEMES = {
    "per_param_mean_sd": ("per_param_grouping___init_mean_std", _per_param(lambda n: True), MEAN_STD, True),
    "per_param_scale": ("per_param_grouping___init_scale", _per_param(lambda n: True), SCALE, True),
    "whole_model_scale": ("across_ALL_layer_AND_per_layer_grouping___init_scale", _whole_model, SCALE, True),
    "preattn_ln_per_param_scale": ("preattnln_per_param_grouping___init_scale", _per_param(_is_attn_norm), SCALE,
                                   False),
    "across_layers_scale": ("across_ALL_layer_grouping___init_scale", _across_layers, SCALE, True),
    "per_layer_scale": ("per_layer_grouping___init_scale", _per_layer, SCALE, True),
    "premlp_ln_per_param_scale": ("premlpln_per_param_grouping___init_scale", _per_param(_is_mlp_norm), SCALE, False),
    "attention_per_param_scale": ("qkvo_per_param_grouping___init_scale", _per_param(_is_attn), SCALE, False),
    "mlp_per_param_scale": ("mlp_per_param_grouping___init_scale", _per_param(_is_mlp), SCALE, False),
}
_BY_INIT_ID = {init_id: name for name, (init_id, *_) in SCHEMES.items()}


def resolve_scheme(scheme: str) -> str:
    """Our scheme name for `scheme`, which may also be the original repository's init_id."""
    name = _BY_INIT_ID.get(scheme, scheme)
    if name not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(SCHEMES)} "
                         f"(or their init_ids: {', '.join(_BY_INIT_ID)})")
    return name


def scheme_groups(model: T5, scheme: str) -> dict[str, list[str]]:
    """{group name: [parameter names]} of `scheme` on `model`, in parameter order."""
    name = resolve_scheme(scheme)
    _, grouping, _, covers_all = SCHEMES[name]
    # named_parameters() lists a tied lm_head once, as shared.weight.
    names = [n for n, _ in model.named_parameters() if n not in NEVER_TRANSFERRED]
    groups = {g: ns for g, ns in grouping(names).items() if ns}
    grouped = [n for ns in groups.values() for n in ns]
    if len(grouped) != len(set(grouped)):
        raise RuntimeError(f"{name}: a parameter falls in two groups")  # a bug in the predicates above
    missed = sorted(set(names) - set(grouped))
    if covers_all and missed:  # T5X asserts #grouped == #params - 1 for these schemes
        raise RuntimeError(f"{name}: parameters in no group (unknown to stats_init.py?): {missed}")
    return groups


def group_stats(state_dict: dict, groups: dict[str, list[str]], model: T5) -> dict[str, tuple]:
    """{group: (mean, population std, #values)} over the group's concatenated checkpoint tensors, float64."""
    params, stats = dict(model.named_parameters()), {}
    for g, names in groups.items():
        for n in names:
            if n not in state_dict:
                raise ValueError(f"checkpoint has no tensor {n!r} (needed for group {g!r})")
            if tuple(state_dict[n].shape) != tuple(params[n].shape):
                raise ValueError(f"checkpoint tensor {n!r} has shape {tuple(state_dict[n].shape)}, "
                                 f"the model's is {tuple(params[n].shape)}")
        values = torch.cat([state_dict[n].detach().cpu().double().flatten() for n in names])
        stats[g] = (values.mean().item(), values.std(correction=0).item(), values.numel())  # np.mean, np.std
    return stats


def _is_constant(mode: str, names: list[str]) -> bool:
    # T5X `init_scale`: `if 'norm' in g[0]` -> np.ones * mean. Our names keep 'norm' exactly for the norms.
    return mode == SCALE and "norm" in names[0]


@torch.no_grad()
def init_from_stats(model: T5, state_dict: dict, scheme: str, seed: int = 0) -> T5:
    """Redraw `model`'s grouped parameters (in place) from `state_dict`'s group statistics; returns it.

    `model` should be freshly built (default init): parameters outside every group are left as they are.
    """
    name = resolve_scheme(scheme)
    mode = SCHEMES[name][2]
    groups = scheme_groups(model, name)
    stats = group_stats(state_dict, groups, model)  # checks every tensor before anything changes
    params = dict(model.named_parameters())
    # One CPU generator for all draws, in group order: the result depends on (model, checkpoint, seed) only.
    gen = torch.Generator().manual_seed(seed)  # the paper used unseeded np.random; we seed for repeats
    for g, names in groups.items():
        mean, std, _ = stats[g]
        for n in names:
            if _is_constant(mode, names):
                params[n].fill_(mean)
            else:  # init_mean_std keeps the mean, init_scale transfers only the scale
                loc = mean if mode == MEAN_STD else 0.0
                draw = torch.normal(loc, std, tuple(params[n].shape), generator=gen, dtype=torch.float64)
                params[n].copy_(draw)  # float64 draw, cast to the parameter's dtype/device
    return model


@torch.no_grad()
def preattn_ln_init(model: T5, c: float) -> T5:
    """Table 3: every pre-attention norm (encoder self, decoder self, decoder cross) = c; in place."""
    for n, p in model.named_parameters():
        if _is_attn_norm(n):  # T5X: (encoder/.*pre_attention_layer)|(decoder/.*pre_self.*norm), .*pre_cross
            p.fill_(c)
    return model


def load_source(path: str) -> tuple[dict, T5Config]:
    """(state dict, model config) of a pretrain.py .pt checkpoint or of a Hugging Face T5 directory."""
    if os.path.isdir(path):
        pretrained = T5.from_pretrained(path)
        return pretrained.state_dict(), pretrained.config
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} is neither a .pt file nor a Hugging Face directory")
    ckpt = load_training_checkpoint(path)
    return ckpt["model"], T5Config(**ckpt["model_config"])


def apply_init_spec(model: T5, spec: str, seed: int = 0) -> T5:
    """finetune.py's --init: 'stats:<scheme>:<checkpoint>' or 'preattn_ln:<c>'; in place, returns model."""
    kind, _, rest = spec.partition(":")
    if kind == "stats":
        scheme, sep, path = rest.partition(":")  # the path may itself contain ':'
        if not sep or not path:
            raise ValueError(f"init spec {spec!r}: expected 'stats:<scheme>:<checkpoint path>'")
        return init_from_stats(model, load_source(path)[0], scheme, seed)
    if kind == "preattn_ln":
        try:
            c = float(rest)
        except ValueError:
            raise ValueError(f"init spec {spec!r}: expected 'preattn_ln:<number>', e.g. preattn_ln:0.4") from None
        return preattn_ln_init(model, c)
    raise ValueError(f"unknown init spec {spec!r}: expected 'stats:<scheme>:<checkpoint>' or 'preattn_ln:<c>'")


def main(argv: list[str]) -> None:
    args = dict(ckpt=None, scheme=None, seed=0, out=None, preset="cpu")
    for arg in argv:
        key, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep or key not in args:
            raise SystemExit(f"bad argument {arg!r}; usage: --{'=.. --'.join(args)}=..")
        args[key] = int(value) if key == "seed" else value
    scheme, ckpt = args["scheme"], args["ckpt"]
    if scheme is None:
        raise SystemExit(f"--scheme is required: one of {', '.join(SCHEMES)}, or preattn_ln:<c>")
    table3 = scheme.startswith("preattn_ln:")
    if not table3:
        scheme = resolve_scheme(scheme)  # fails early, listing the schemes
        if ckpt is None:
            raise SystemExit(f"--scheme={scheme} needs --ckpt=<pretrain.py .pt or Hugging Face directory>")
    state_dict, config = load_source(ckpt) if ckpt else (None, get_config(args["preset"]))

    torch.manual_seed(args["seed"])  # the fresh default init of everything left ungrouped
    model = T5(config)
    if table3:
        apply_init_spec(model, scheme, args["seed"])
        print(f"{scheme}: set {sum(_is_attn_norm(n) for n, _ in model.named_parameters())} pre-attention norms")
    else:
        groups, mode = scheme_groups(model, scheme), SCHEMES[scheme][2]
        print(f"{scheme} ({SCHEMES[scheme][0]}), {len(groups)} groups from {ckpt}")
        print(f"{'group':<44} {'tensors':>7} {'values':>10} {'mean':>10} {'std':>9}  draw")
        for g, (mean, std, numel) in group_stats(state_dict, groups, model).items():
            draw = ("= mean" if _is_constant(mode, groups[g])
                    else "N(mean, std)" if mode == MEAN_STD else "N(0, std)")
            print(f"{g:<44} {len(groups[g]):>7} {numel:>10} {mean:>10.5f} {std:>9.5f}  {draw}")
        init_from_stats(model, state_dict, scheme, args["seed"])
    if args["out"]:
        init = scheme if table3 else f"stats:{scheme}:{ckpt}"
        # The keys pretrain.py's load_checkpoint requires; "config" records how this model was made.
        ckpt_out = dict(model=model.state_dict(), model_config=asdict(model.config), step=0,
                        config=dict(init=init, seed=args["seed"]))
        tmp = args["out"] + ".tmp"
        torch.save(ckpt_out, tmp)
        os.replace(tmp, args["out"])  # atomic: a reader never sees a half-written file
        print(f"wrote {args['out']}")


if __name__ == "__main__":
    main(sys.argv[1:])
