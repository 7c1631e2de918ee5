"""T5 (v1.0 and v1.1) in one file, PyTorch only: the network of the paper (PAPER.md §2).

The same network as the reference T5 (Raffel et al. 2020; T5X `examples/t5`, Hugging Face `modeling_t5`):
pre-norm blocks with scale-only RMS norm, one relative position bias table per stack shared by its layers,
attention without the 1/sqrt(d_kv) scaling, ReLU (v1.0) or gated-GELU (v1.1) MLPs, and for v1.0 one embedding
shared by encoder, decoder and output softmax (logits rescaled by d_model**-0.5).
Also here: T5X's default init (`init_weights`), greedy and beam decoding with a KV cache (`T5.generate`),
Hugging Face checkpoint I/O with our own safetensors reader/writer, and parameter/FLOP counts for MFU logs.

    from model import T5, get_config
    model = T5(get_config("t5-small"))                  # or T5.from_pretrained("path/to/hf/t5-small")
    logits, loss = model(input_ids, attention_mask, labels=labels)
    ids = model.generate(input_ids, attention_mask, max_new_tokens=64, num_beams=4)

Tests: python -m pytest -q tests/test_model.py      Speed: python bench.py (see its docstring).
"""
import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import atomic_write

NEG_INF = -1e9  # additive mask value: finite, so a fully masked row gives a uniform softmax, never NaN


def dropout(x, p, training=True):
    """Inverted dropout like F.dropout, with a mask that is 2-3x cheaper to draw on CPU.

    torch's CPU bernoulli_ (eager) and inductor's RNG (compiled) draw one random number per element; here one
    64-bit draw gives four 16-bit uniforms, and an element is kept when its uniform clears round(p * 2^16)
    (p is honoured to 1.5e-5). Dropout is 0.1 everywhere (PAPER.md §2), so this saves ~5% of an eager and
    ~20% of a compiled T5-small training step on a 2-core CPU. GPUs keep F.dropout (their RNG is fast).
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    keep = _random_int16(n).view(x.shape) >= round(p * 65536) - 32768
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))  # the mask needs no grad: scale it in place


@torch.library.custom_op("t5::random_int16", mutates_args=())
def _random_int16(n: int) -> torch.Tensor:
    """n uniform int16 from n/4 64-bit draws. A custom op, so torch.compile calls this eager kernel instead of
    lowering the draw to its own per-element RNG, which is ~4x slower on CPU."""
    return torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1).view(torch.int16)[:n]


@_random_int16.register_fake
def _(n):
    return torch.empty(n, dtype=torch.int16)


class Dropout(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)


@dataclass
class T5Config:
    vocab_size: int = 8192  # embedding rows: tokenizer size rounded up to a multiple of 128 (T5: 32128)
    d_model: int = 256  # width of the residual stream
    d_kv: int = 64  # width of one attention head (need not be d_model / num_heads)
    d_ff: int = 1024  # hidden width of the MLP
    num_layers: int = 4  # encoder blocks
    num_decoder_layers: int = 4  # decoder blocks
    num_heads: int = 4  # attention heads per attention layer
    relative_attention_num_buckets: int = 32  # rows of the relative position bias table
    relative_attention_max_distance: int = 128  # distances beyond this share the last bucket
    dropout_rate: float = 0.1  # on embeddings, attention weights, MLP hidden, every residual branch, final norm
    feed_forward_proj: str = "relu"  # "relu" (T5 v1.0) or "gated-gelu" (v1.1: gelu(wi_0 x) * wi_1 x)
    tie_word_embeddings: bool = True  # v1.0: output softmax uses `shared` (x d_model**-0.5); v1.1: own lm_head
    layer_norm_epsilon: float = 1e-6  # RMS norm epsilon
    pad_token_id: int = 0  # padding id, also the decoder start id in T5
    eos_token_id: int = 1  # generation stops at this id
    decoder_start_token_id: int = 0  # first decoder input (T5 uses pad)

    def __post_init__(self):
        if self.feed_forward_proj not in ("relu", "gated-gelu"):
            raise ValueError(f"feed_forward_proj must be 'relu' or 'gated-gelu', got {self.feed_forward_proj!r}")


PRESETS = {
    # small and quick on a 2-core CPU; vocab follows tokenizer.py's default BPE size (override to match yours)
    "cpu": T5Config(),
    # half of `cpu`'s width and half its depth (2.0M parameters with the 8192-id BPE): the CPU
    # reproduction grid's model, cheap enough that every pre-training source learns its task in minutes
    "tiny": T5Config(d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2),
    # PAPER.md §2: T5X small.gin, the paper's model
    "t5-small": T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                         num_heads=8),
    # PAPER.md §2: the natural-pre-training baseline for CNNDM
    "t5-v1_1-small": T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                              num_decoder_layers=8, num_heads=6, feed_forward_proj="gated-gelu",
                              tie_word_embeddings=False),
    "t5-base": T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                        num_heads=12),
}


def get_config(preset: str = "cpu", **overrides) -> T5Config:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    valid = {f.name for f in fields(T5Config)}
    bad = set(overrides) - valid
    if bad:
        raise ValueError(f"unknown T5Config field(s) {sorted(bad)}; valid: {', '.join(sorted(valid))}")
    return replace(PRESETS[preset], **overrides)


def relative_position_bucket(relative_position, bidirectional, num_buckets=32, max_distance=128):
    """Bucket of (key position - query position), as T5 does it.

    Bidirectional (encoder): half the buckets for keys after the query, half for keys before it. Causal
    (decoder): only keys at or before the query matter, all buckets go to distances 0, 1, 2, ... Within each
    half, distances below max_exact = buckets/2 get their own bucket, larger ones are log-spaced up to
    max_distance, and everything beyond shares the last bucket.
    """
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp_min(0)
    max_exact = num_buckets // 2
    # log-spaced buckets; clamp_min(1) only keeps log() finite where the `where` below discards the value
    large = max_exact + (torch.log(distance.clamp_min(1).float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp_max(num_buckets - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias; the variance is taken in float32."""

    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        y = self.weight * (x * torch.rsqrt(var + self.eps)).to(self.weight.dtype)
        if torch.is_autocast_enabled(y.device.type):  # every consumer is a matmul that would cast y to the
            y = y.to(torch.get_autocast_dtype(y.device.type))  # autocast dtype: do it once, not per q/k/v
        return y


class Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d_kv) (T5 folds it into the init of q, see init_weights).

    The additive `mask` carries the position bias and the padding/causal masking, [1 or B, H or 1, Tq, Tk].
    Three ways to get keys/values: from `x` (self-attention) or `source` (cross-attention) in a full forward;
    `cache=(k, v)` already computed (cross-attention while decoding); or `cache=(k_buf, v_buf)` plus `pos`:
    the step's k/v are written at `pos` and attention reads the buffers up to it (self-attention decoding).
    """

    def __init__(self, cfg):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.n_heads, self.d_kv, self.dropout = cfg.num_heads, cfg.d_kv, cfg.dropout_rate
        self.use_sdpa = True

    def heads(self, x):  # [B, T, H*dk] -> [B, H, T, dk]
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_kv).transpose(1, 2)

    def forward(self, x, mask, source=None, cache=None, pos=None):
        B, T, _ = x.shape
        q = self.heads(self.q(x))
        if cache is None:
            src = x if source is None else source
            k, v = self.heads(self.k(src)), self.heads(self.v(src))
        elif pos is None:
            k, v = cache
        else:
            k_buf, v_buf = cache
            k_buf[:, :, pos:pos + T] = self.heads(self.k(x))
            v_buf[:, :, pos:pos + T] = self.heads(self.v(x))
            k, v = k_buf[:, :, :pos + T], v_buf[:, :, :pos + T]
        p = self.dropout if self.training else 0.0
        # CPU SDPA has no fused kernel for dropout (nor for a mask that needs a gradient, i.e. the position
        # bias): it falls back to unfused math that is slower than the manual path below, so training with
        # dropout on CPU takes the manual path. Measured: T=128 and 512, fwd+bwd, ~30% faster.
        if self.use_sdpa and not (p > 0 and q.device.type == "cpu"):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=1.0)
        else:  # reference path: softmax in float32, as HF T5 does
            w = torch.softmax((q @ k.transpose(-1, -2)).float() + mask, dim=-1).to(q.dtype)
            y = dropout(w, p) @ v
        return self.o(y.transpose(1, 2).reshape(B, T, -1))  # [B, H, T, dk] -> [B, T, H*dk]


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gated = cfg.feed_forward_proj == "gated-gelu"
        if self.gated:  # v1.1 GEGLU (Shazeer 2020), with the tanh GELU that T5 v1.1 ("gelu_new") uses
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x):
        h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x) if self.gated else F.relu(self.wi(x))
        return self.wo(self.dropout(h))


class EncoderBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x, mask):
        x = x + self.dropout(self.attn(self.attn_norm(x), mask))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.self_attn = Attention(cfg)
        self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.cross_attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x, self_mask, enc, cross_mask, cache=None, pos=None):
        # cache = (self k/v buffers, cross k/v) when decoding step by step, else None
        h = self.self_attn(self.self_attn_norm(x), self_mask, cache=cache and cache[0], pos=pos)
        x = x + self.dropout(h)
        h = self.cross_attn(self.cross_attn_norm(x), cross_mask, source=enc, cache=cache and cache[1])
        x = x + self.dropout(h)
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Stack(nn.Module):
    """Encoder or decoder: blocks sharing one relative position bias table, then a final norm."""

    def __init__(self, cfg, decoder):
        super().__init__()
        self.cfg, self.is_decoder = cfg, decoder
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        n = cfg.num_decoder_layers if decoder else cfg.num_layers
        self.block = nn.ModuleList([(DecoderBlock if decoder else EncoderBlock)(cfg) for _ in range(n)])
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.dropout = Dropout(cfg.dropout_rate)

    def position_bias(self, q_len, k_len, offset=0):
        """[1, H, q_len, k_len] bias for queries at offset.. and keys at 0..; computed once per forward."""
        device = self.relative_attention_bias.weight.device
        rel = torch.arange(k_len, device=device)[None, :] - torch.arange(offset, offset + q_len, device=device)[:, None]
        buckets = relative_position_bucket(rel, not self.is_decoder, self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # [q, k, H] -> [1, H, q, k]


class T5(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, decoder=False)
        self.decoder = Stack(config, decoder=True)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self)

    @property
    def use_sdpa(self):
        return all(m.use_sdpa for m in self.modules() if isinstance(m, Attention))

    @use_sdpa.setter
    def use_sdpa(self, value: bool):  # False selects the manual attention path (tests compare the two)
        for m in self.modules():
            if isinstance(m, Attention):
                m.use_sdpa = bool(value)

    # ---- the network -------------------------------------------------------------------------------------
    def padding_mask(self, input_ids, attention_mask):
        """Additive key mask [B, 1, 1, S]; attention_mask None means "every non-pad token is real"."""
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        return (1.0 - attention_mask[:, None, None, :].float()) * NEG_INF

    def encode(self, input_ids, attention_mask=None):
        """Encoder output [B, S, d] and the cross-attention mask [B, 1, 1, S]."""
        pad_mask = self.padding_mask(input_ids, attention_mask)
        S = input_ids.shape[1]
        mask = self.encoder.position_bias(S, S) + pad_mask  # [B, H, S, S], shared by all encoder blocks
        x = self.encoder.dropout(self.shared(input_ids))
        for block in self.encoder.block:
            x = block(x, mask)
        return self.encoder.dropout(self.encoder.final_layer_norm(x)), pad_mask

    def logits(self, h):
        if self.config.tie_word_embeddings:  # Mesh TF / T5X rescale before the tied output projection
            return F.linear(h * self.config.d_model ** -0.5, self.shared.weight)
        return self.lm_head(h)

    def decode(self, decoder_input_ids, enc, cross_mask):
        T = decoder_input_ids.shape[1]
        causal = torch.full((T, T), NEG_INF, device=enc.device).triu(1)  # key after query -> masked
        mask = self.decoder.position_bias(T, T) + causal  # [1, H, T, T]
        x = self.decoder.dropout(self.shared(decoder_input_ids))
        for block in self.decoder.block:
            x = block(x, mask, enc, cross_mask)
        return self.logits(self.decoder.dropout(self.decoder.final_layer_norm(x)))

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, labels=None, z_loss: float = 0.0):
        """(logits [B, T, V] float32, loss or None). loss = mean cross-entropy over labels != -100, plus
        z_loss * mean(logsumexp(logits)^2) (T5X's auxiliary loss keeping the softmax normaliser near 1)."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("forward needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        enc, cross_mask = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, enc, cross_mask).float()
        loss = None
        if labels is not None:
            flat, target = logits.view(-1, logits.shape[-1]), labels.reshape(-1)
            loss = F.cross_entropy(flat, target, ignore_index=-100)
            if z_loss:
                lse = torch.logsumexp(flat[target != -100], dim=-1)
                loss = loss + z_loss * lse.pow(2).mean()
        return logits, loss

    # ---- decoding with a KV cache --------------------------------------------------------------------------
    def _start_cache(self, enc, max_len):
        """Per decoder block: (preallocated self-attention k/v buffers, cross-attention k/v computed once)."""
        cfg, N = self.config, enc.shape[0]
        cache = []
        for block in self.decoder.block:
            ca = block.cross_attn
            buf = lambda: enc.new_zeros(N, cfg.num_heads, max_len, cfg.d_kv)  # noqa: E731
            cache.append(((buf(), buf()), (ca.heads(ca.k(enc)), ca.heads(ca.v(enc)))))
        return cache

    def decode_step(self, tokens, pos, enc, cross_mask, cache):
        """Logits [N, V] for the next token after `tokens` [N, 1] sitting at decoder position `pos`."""
        mask = self.decoder.position_bias(1, pos + 1, offset=pos)  # keys 0..pos: nothing to mask causally
        x = self.shared(tokens)
        for block, c in zip(self.decoder.block, cache):
            x = block(x, mask, enc, cross_mask, cache=c, pos=pos)
        return self.logits(self.decoder.final_layer_norm(x))[:, -1].float()

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=64, num_beams=1, length_penalty=0.6,
                 return_all_beams=False):
        """Generated ids [B, <=max_new_tokens] without the start token; EOS kept, pad after it.

        num_beams=1: batched greedy. num_beams>1: T5X beam search (`t5x/decoding.py::beam_search`), scoring a
        finished beam by log p / ((5 + length) / 6) ** length_penalty, length counting the EOS; returns the
        best beam, or with return_all_beams=True (ids [B, K, L], scores [B, K]) all of them best first.
        """
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError(f"generate needs max_new_tokens >= 1 and num_beams >= 1, "
                             f"got {max_new_tokens} and {num_beams}")
        was_training = self.training
        self.eval()
        try:
            enc, cross_mask = self.encode(input_ids, attention_mask)
            if num_beams == 1:
                if return_all_beams:
                    raise ValueError("return_all_beams needs num_beams > 1")
                return self._greedy(enc, cross_mask, max_new_tokens)
            return self._beam_search(enc, cross_mask, max_new_tokens, num_beams, length_penalty, return_all_beams)
        finally:
            self.train(was_training)

    def _greedy(self, enc, cross_mask, max_new_tokens):
        cfg, B = self.config, enc.shape[0]
        cache = self._start_cache(enc, max_new_tokens)
        tokens = torch.full((B, 1), cfg.decoder_start_token_id, dtype=torch.long, device=enc.device)
        done = torch.zeros(B, dtype=torch.bool, device=enc.device)
        out = []
        for pos in range(max_new_tokens):
            nxt = self.decode_step(tokens, pos, enc, cross_mask, cache).argmax(-1)
            nxt = nxt.masked_fill(done, cfg.pad_token_id)  # rows that already emitted EOS only pad
            out.append(nxt)
            done |= nxt == cfg.eos_token_id
            if done.all():
                break
            tokens = nxt[:, None]
        return torch.stack(out, 1)

    def _beam_search(self, enc, cross_mask, L, K, alpha, return_all_beams):
        """Vectorised over batch x beams: rows of every [B*K, ...] tensor are (batch b, beam k) at b*K + k."""
        cfg, B, dev = self.config, enc.shape[0], enc.device
        bp = lambda n: ((5.0 + n) / 6.0) ** alpha  # noqa: E731  T5X brevity penalty
        enc, cross_mask = enc.repeat_interleave(K, 0), cross_mask.repeat_interleave(K, 0)
        cache = self._start_cache(enc, L)
        # alive beams: all start as the empty sequence, only beam 0 counts at first (the others are copies)
        alive_seq = torch.zeros(B, K, L, dtype=torch.long, device=dev)
        alive_lp = torch.full((B, K), -1e7, device=dev)
        alive_lp[:, 0] = 0.0
        fin_seq = torch.zeros(B, K, L, dtype=torch.long, device=dev)
        fin_score = torch.full((B, K), -1e7, device=dev)
        fin_flag = torch.zeros(B, K, dtype=torch.bool, device=dev)
        tokens = torch.full((B * K, 1), cfg.decoder_start_token_id, dtype=torch.long, device=dev)
        base = torch.arange(B, device=dev)[:, None] * K
        for pos in range(L):
            logp = torch.log_softmax(self.decode_step(tokens, pos, enc, cross_mask, cache), -1)  # [B*K, V]
            V = logp.shape[-1]
            cand = (logp.view(B, K, V) + alive_lp[:, :, None]).view(B, K * V)
            # top 2K: even if K of them end in EOS (one per beam at most), K remain to continue
            top_lp, top_idx = cand.topk(2 * K, dim=-1)  # [B, 2K]
            src_beam, tok = top_idx // V, top_idx % V
            seq = alive_seq.gather(1, src_beam[:, :, None].expand(B, 2 * K, L))  # [B, 2K, L], a copy
            seq[:, :, pos] = tok
            eos = tok == cfg.eos_token_id
            # alive: the K best candidates that did not just end
            alive_lp, a_idx = top_lp.masked_fill(eos, -1e7 * 2).topk(K, dim=-1)
            alive_seq = seq.gather(1, a_idx[:, :, None].expand(B, K, L))
            # reorder each beam's self-attention cache to follow its parent beam
            rows = (base + src_beam.gather(1, a_idx)).view(-1)
            for (k_buf, v_buf), _ in cache:
                k_buf[:, :, :pos + 1] = k_buf[rows, :, :pos + 1]
                v_buf[:, :, :pos + 1] = v_buf[rows, :, :pos + 1]
            # finished: merge the newly ended candidates (penalised by their length) into the K best so far
            new_score = torch.where(eos, top_lp / bp(pos + 1), torch.full_like(top_lp, -1e7))
            all_score = torch.cat([fin_score, new_score], 1)
            fin_score, f_idx = all_score.topk(K, dim=-1)
            fin_seq = torch.cat([fin_seq, seq], 1).gather(1, f_idx[:, :, None].expand(B, K, L))
            fin_flag = torch.cat([fin_flag, eos], 1).gather(1, f_idx)
            tokens = alive_seq[:, :, pos].reshape(B * K, 1)
            # stop when no alive beam can still beat the worst finished one, even at the longest length
            # (log p only falls as a beam grows, and a longer length divides it by a larger penalty)
            worst_fin = torch.where(fin_flag.all(1), fin_score.min(1).values, torch.full_like(fin_score[:, 0], -1e7))
            if bool((worst_fin > alive_lp[:, 0] / bp(L)).all()):
                break
        # a row where nothing finished returns its alive beams (T5X does the same)
        none = ~fin_flag.any(1)
        fin_seq = torch.where(none[:, None, None], alive_seq, fin_seq)[:, :, :pos + 1]
        fin_score = torch.where(none[:, None], alive_lp, fin_score)
        return (fin_seq, fin_score) if return_all_beams else fin_seq[:, 0]

    # ---- counts ------------------------------------------------------------------------------------------
    def num_params(self, non_embedding=False) -> int:
        """Parameter count; non_embedding=True leaves out the token embedding and an untied lm_head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.shared.weight.numel() + (0 if self.config.tie_word_embeddings else self.lm_head.weight.numel())
        return n

    def flops_per_token(self, src_len, tgt_len) -> float:
        """Matmul FLOPs (2*m*n*k each) of one forward pass, per target token, for a src_len -> tgt_len batch.

        Counts every projection, the attention score and value matmuls (dense: the causal half is computed
        too, as the kernels do), the encoder (spread over the target tokens) and the output projection.
        Norms, softmax, activations and the loss are left out. A training step costs ~3x this (backward = 2x).
        """
        c = self.config
        inner, n_ff = c.num_heads * c.d_kv, 3 if c.feed_forward_proj == "gated-gelu" else 2
        proj, mlp = 2 * 4 * c.d_model * inner, 2 * n_ff * c.d_model * c.d_ff
        enc = c.num_layers * src_len * (proj + mlp + 2 * 2 * src_len * inner)
        dec = c.num_decoder_layers * tgt_len * (proj + 2 * 2 * tgt_len * inner  # self-attention
                                                + proj // 2 + 2 * 2 * src_len * inner  # cross-attention q, o
                                                + mlp)
        cross_kv = c.num_decoder_layers * src_len * proj // 2  # k, v of the encoder output, once per layer
        head = tgt_len * 2 * c.d_model * c.vocab_size
        return (enc + dec + cross_kv + head) / tgt_len

    # ---- Hugging Face checkpoints ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path) -> "T5":
        """Load a Hugging Face T5 directory: config.json + model.safetensors (or pytorch_model.bin)."""
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        cfg = T5Config(**{k.name: hf[k.name] for k in fields(T5Config) if hf.get(k.name) is not None})
        if hf.get("num_decoder_layers") is None:  # old configs: as many decoder layers as encoder layers
            cfg.num_decoder_layers = cfg.num_layers
        if "scale_decoder_outputs" in hf:  # transformers >= 5 always writes tie_word_embeddings=True and
            cfg.tie_word_embeddings = hf["scale_decoder_outputs"]  # says v1.0 vs v1.1 with this field
        if os.path.exists(os.path.join(path, "model.safetensors")):
            tensors = load_safetensors(os.path.join(path, "model.safetensors"))
        elif os.path.exists(os.path.join(path, "pytorch_model.bin")):
            tensors = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
        with torch.device("meta"):  # skip the random init: every tensor is overwritten below
            model = cls(cfg)
        model = model.to_empty(device="cpu")
        model.load_state_dict(hf_to_ours(tensors, model), strict=True)
        return model

    def save_pretrained(self, path):
        """Write config.json + model.safetensors that `transformers.T5ForConditionalGeneration` can load."""
        os.makedirs(path, exist_ok=True)
        c = self.config
        hf = dict(asdict(c), model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                  dense_act_fn="gelu_new" if c.feed_forward_proj == "gated-gelu" else "relu",
                  is_gated_act=c.feed_forward_proj == "gated-gelu", initializer_factor=1.0, use_cache=True,
                  torch_dtype=str(self.shared.weight.dtype).removeprefix("torch."))
        atomic_write(os.path.join(path, "config.json"), json.dumps(hf, indent=2))
        names = hf_names(c)
        save_safetensors({names[k]: v for k, v in self.state_dict().items()}, os.path.join(path, "model.safetensors"),
                         metadata={"format": "pt"})  # transformers refuses files without format metadata


def hf_names(cfg: T5Config) -> dict:
    """Our parameter name -> Hugging Face T5ForConditionalGeneration name."""
    ff = ["wi_0", "wi_1", "wo"] if cfg.feed_forward_proj == "gated-gelu" else ["wi", "wo"]
    m = {"shared.weight": "shared.weight"}
    for stack in ("encoder", "decoder"):  # HF keeps each stack's one bias table in its first block
        m[f"{stack}.relative_attention_bias.weight"] = \
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        m[f"{stack}.final_layer_norm.weight"] = f"{stack}.final_layer_norm.weight"
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    for stack, n, layers in (("encoder", cfg.num_layers, [("attn", "SelfAttention")]),
                             ("decoder", cfg.num_decoder_layers, [("self_attn", "SelfAttention"),
                                                                  ("cross_attn", "EncDecAttention")])):
        for i in range(n):
            ours, theirs = f"{stack}.block.{i}.", f"{stack}.block.{i}.layer."
            for j, (attn, hf_attn) in enumerate(layers):
                m[f"{ours}{attn}_norm.weight"] = f"{theirs}{j}.layer_norm.weight"
                for w in "qkvo":
                    m[f"{ours}{attn}.{w}.weight"] = f"{theirs}{j}.{hf_attn}.{w}.weight"
            j = len(layers)  # the MLP comes after the attention sub-layers
            m[f"{ours}mlp_norm.weight"] = f"{theirs}{j}.layer_norm.weight"
            for w in ff:
                m[f"{ours}mlp.{w}.weight"] = f"{theirs}{j}.DenseReluDense.{w}.weight"
    return m


def hf_to_ours(tensors: dict, model: T5) -> dict:
    """Rename a HF state dict onto `model`'s names, checking key count and shapes; one error lists all faults."""
    tensors = dict(tensors)
    if "shared.weight" not in tensors:  # the embedding may be stored under one of its aliases only
        for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if alias in tensors:
                tensors["shared.weight"] = tensors[alias]
                break
    # aliases of the shared embedding; the tied lm_head; an unused bias that old HF versions saved
    ignorable = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if model.config.tie_word_embeddings:
        ignorable.add("lm_head.weight")
    ignorable |= {k for k in tensors if k.endswith("EncDecAttention.relative_attention_bias.weight")}
    expected = model.state_dict()
    names, out, problems = hf_names(model.config), {}, []
    for ours, theirs in names.items():
        if theirs not in tensors:
            problems.append(f"missing tensor {theirs!r} (for {ours})")
        elif tuple(tensors[theirs].shape) != tuple(expected[ours].shape):
            problems.append(f"tensor {theirs!r} has shape {tuple(tensors[theirs].shape)}, "
                            f"expected {tuple(expected[ours].shape)} (for {ours})")
        else:
            out[ours] = tensors[theirs]
    unexpected = sorted(set(tensors) - set(names.values()) - ignorable)
    problems += [f"unexpected tensor {k!r}" for k in unexpected]
    if len(names) != len(expected):  # the rename table itself must cover the model exactly
        problems.append(f"rename table has {len(names)} entries for {len(expected)} parameters")
    if problems:
        raise ValueError("checkpoint does not match the T5 config: " + "; ".join(problems))
    return out


# ---- safetensors: 8-byte little-endian header size, JSON header, raw little-endian tensor bytes -----------
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def save_safetensors(tensors: dict, path, metadata=None):
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} is not supported by safetensors")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # pad so the data starts 8-byte aligned, as the reference writer does
    buf = bytearray(8 + len(head) + offset)
    buf[:8] = len(head).to_bytes(8, "little")
    buf[8:8 + len(head)] = head
    start = 8 + len(head)
    for name, t in tensors.items():
        if t.numel():  # copy the raw bytes straight into the file image (no numpy needed)
            lo, hi = header[name]["data_offsets"]
            raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            torch.frombuffer(buf, dtype=torch.uint8, count=hi - lo, offset=start + lo).copy_(raw)
    atomic_write(path, bytes(buf))


def load_safetensors(path) -> dict:
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    if len(buf) < 8:
        raise ValueError(f"{path}: too short to be a safetensors file")
    n = int.from_bytes(buf[:8], "little")
    if 8 + n > len(buf):
        raise ValueError(f"{path}: header size {n} exceeds the file size {len(buf)}")
    header = json.loads(buf[8:8 + n].decode())
    start, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], info["shape"]
        lo, hi = info["data_offsets"]
        numel = math.prod(shape)
        if hi - lo != numel * dtype.itemsize or start + hi > len(buf):
            raise ValueError(f"{path}: tensor {name!r} has data_offsets {[lo, hi]} that do not fit "
                             f"shape {shape} of {info['dtype']}")
        t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=start + lo) if numel else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(shape).clone()  # clone: own memory, the file image is dropped
    return out


# ---- init, helpers -------------------------------------------------------------------------------------------
def _trunc_normal_(w, std, generator):
    # JAX's truncated_normal variance scaling: cut at +-2 sigma, sigma raised so the result has std `std`
    s = std / 0.87962566103423978
    nn.init.trunc_normal_(w, 0.0, s, -2 * s, 2 * s, generator=generator)


@torch.no_grad()
def init_weights(model: T5, generator=None) -> None:
    """T5X's default fresh init (PAPER.md §2; `t5x/examples/t5/layers.py`, `network.py`), tensor by tensor.

    | tensor (nn.Linear weights are [out, in])     | distribution                                         |
    |----------------------------------------------|------------------------------------------------------|
    | shared.weight [V, d]                         | N(0, 1)                                              |
    | *.{attn,self_attn,cross_attn}.q.weight       | N(0, 1 / (d_model * d_kv)): fan_in std / sqrt(d_kv), |
    |                                              | T5's substitute for scaling scores by 1/sqrt(d_kv)   |
    | *.{attn,self_attn,cross_attn}.{k,v}.weight   | N(0, 1 / d_model)       (fan_in, normal)             |
    | *.{attn,self_attn,cross_attn}.o.weight       | N(0, 1 / (H * d_kv))    (fan_in, normal)             |
    | *.mlp.{wi,wi_0,wi_1}.weight                  | truncated normal (+-2 sd), std 1/sqrt(d_model)       |
    | *.mlp.wo.weight                              | truncated normal (+-2 sd), std 1/sqrt(d_ff)          |
    | {encoder,decoder}.relative_attention_bias    | U(-a, a), a = sqrt(3 / fan_avg), fan_avg = (32+H)/2  |
    | every *norm*.weight                          | 1                                                    |
    | lm_head.weight [V, d] (v1.1, untied)         | truncated normal, std 1/sqrt(d_model): T5X's         |
    |                                              | DenseGeneral default for `logits_dense` (our choice) |
    """
    c = model.config
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 2)[-2]  # module name: q, k, wi_0, relative_attention_bias, ...
        if name == "shared.weight":
            nn.init.normal_(p, 0.0, 1.0, generator=generator)
        elif "norm" in leaf:
            nn.init.ones_(p)
        elif leaf == "relative_attention_bias":
            a = math.sqrt(3.0 / ((p.shape[0] + p.shape[1]) / 2))
            nn.init.uniform_(p, -a, a, generator=generator)
        elif leaf == "q":
            nn.init.normal_(p, 0.0, (c.d_model * c.d_kv) ** -0.5, generator=generator)
        elif leaf in ("k", "v", "o"):
            nn.init.normal_(p, 0.0, p.shape[1] ** -0.5, generator=generator)
        elif leaf in ("wi", "wi_0", "wi_1", "wo", "lm_head"):
            _trunc_normal_(p, p.shape[1] ** -0.5, generator)
        else:
            raise ValueError(f"init_weights has no rule for parameter {name!r}")


def shift_right(labels, start_id=0, pad_id=0):
    """Decoder inputs for teacher forcing: [start, y0, y1, ...], ignored labels (-100) turned into pad."""
    out = torch.full_like(labels, start_id)
    out[..., 1:] = labels[..., :-1]
    return out.masked_fill(out == -100, pad_id)
