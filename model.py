"""T5 (v1.0 and v1.1), PyTorch only: the network the paper pre-trains and fine-tunes, as in T5X and
Hugging Face. Also T5X's default init, greedy and beam decoding with a KV cache, loading Hugging
Face checkpoints (with our own safetensors reader), and parameter and FLOP counts.
    model = T5(get_config("t5-small"))  # or T5.from_pretrained("path/to/hf/t5-small")
    logits, loss = model(input_ids, attention_mask, labels=labels)
    ids = model.generate(input_ids, attention_mask, max_new_tokens=64, num_beams=4)
Reading order: model.py (here), tokenizer.py, tasks.py, ... Next: tokenizer.py.
"""
import json, math, os, re
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import UserError

NEG_INF = -1e9  # additive mask value: finite, so a fully masked row is uniform, never NaN

@dataclass
class T5Config:
    vocab_size: int = 8192  # embedding rows: the tokenizer's size rounded up to 128 (T5: 32128)
    d_model: int = 256  # width of the residual stream
    d_kv: int = 64  # width of one attention head (need not be d_model / num_heads)
    d_ff: int = 1024  # hidden width of the MLP
    num_layers: int = 4  # encoder blocks
    num_decoder_layers: int = 4  # decoder blocks
    num_heads: int = 4  # attention heads per attention layer
    relative_attention_num_buckets: int = 32  # rows of the relative position bias table
    relative_attention_max_distance: int = 128  # distances beyond this share the last bucket
    dropout_rate: float = 0.1  # embeddings, attention weights, MLP hidden, residuals, final norm
    feed_forward_proj: str = "relu"  # "relu" (v1.0) or "gated-gelu" (v1.1: gelu(wi_0 x) * wi_1 x)
    tie_word_embeddings: bool = True  # v1.0: logits from `shared` (x d_model**-0.5); v1.1: lm_head
    layer_norm_epsilon: float = 1e-6  # RMS norm epsilon
    pad_token_id: int = 0  # padding id
    eos_token_id: int = 1  # generation stops at this id
    decoder_start_token_id: int = 0  # first decoder input (T5 uses pad)

    def __post_init__(self):
        if self.feed_forward_proj not in ("relu", "gated-gelu"):
            raise UserError(f"feed_forward_proj={self.feed_forward_proj!r}: not relu or gated-gelu")

PRESETS = {  # positional: vocab_size, d_model, d_kv, d_ff
    "cpu": T5Config(),  # quick on a 2-core CPU; vocab is tokenizer.py's default BPE size
    # half `cpu`'s width and depth (2.0M parameters): the CPU reproduction grid's model
    "tiny": T5Config(d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2),
    # T5X's small.gin (the paper's model), v1.1 (the natural-pre-training baseline for CNNDM)
    "t5-small": T5Config(32128, 512, 64, 2048, num_layers=6, num_decoder_layers=6, num_heads=8),
    "t5-v1_1-small": T5Config(32128, 512, 64, 1024, num_layers=8, num_decoder_layers=8, num_heads=6,
                              feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}

def get_config(preset: str = "cpu", **overrides) -> T5Config:
    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    valid = [f.name for f in fields(T5Config)]
    if unknown := sorted(set(overrides) - set(valid)):
        raise UserError(f"unknown T5Config field(s) {unknown}; valid: {', '.join(valid)}")
    return replace(PRESETS[preset], **overrides)

def relative_position_bucket(relative_position, bidirectional, num_buckets=32, max_distance=128):
    """T5's bucket of (key position - query position). Bidirectional (encoder): half the buckets
    for keys after the query. Causal (decoder): all for keys at or before it. Per half, distances
    below max_exact = buckets/2 get a bucket each, larger ones log-spaced ones to max_distance."""
    if bidirectional:
        num_buckets //= 2
        bucket, distance = (relative_position > 0).long() * num_buckets, relative_position.abs()
    else:
        bucket, distance = 0, (-relative_position).clamp_min(0)
    exact = num_buckets // 2
    # clamp_min(1) only keeps log() finite where the `where` below discards the value
    log_ratio = torch.log(distance.clamp_min(1).float() / exact) / math.log(max_distance / exact)
    large = (exact + (log_ratio * (num_buckets - exact)).long()).clamp_max(num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, large)

class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias; the variance in float32."""
    def __init__(self, cfg):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(cfg.d_model)), cfg.layer_norm_epsilon

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        y = self.weight * (x * torch.rsqrt(var + self.eps)).to(self.weight.dtype)
        if torch.is_autocast_enabled(y.device.type):  # cast once here, not in each of q, k and v
            y = y.to(torch.get_autocast_dtype(y.device.type))
        return y

class Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d_kv): T5 folds it into q's init (see init_weights).
    `mask`: additive [1 or B, H or 1, Tq, Tk], position bias plus padding/causal masking. Keys and
    values: from `x` or `source` (cross-attention). Decoding passes `cache`: the encoder's k, v, or
    with `pos` the self-attention buffers, into which this step's k, v go at `pos`."""
    use_sdpa = True  # False: the manual path (set on the class for all; tests compare the two)

    def __init__(self, cfg):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.q, self.k, self.v = (nn.Linear(cfg.d_model, inner, bias=False) for _ in "qkv")
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.n_heads, self.d_kv, self.dropout = cfg.num_heads, cfg.d_kv, cfg.dropout_rate

    def heads(self, x):  # [B, T, H*dk] -> [B, H, T, dk]
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_kv).transpose(1, 2)

    def forward(self, x, mask, source=None, cache=None, pos=None):
        B, T, _ = x.shape
        q, src = self.heads(self.q(x)), x if source is None else source
        k, v = cache or (self.heads(self.k(src)), self.heads(self.v(src)))
        if cache and pos is not None:  # self-attention decoding: this step's k, v into the buffers
            for buf, proj in zip(cache, (self.k, self.v)):
                buf[:, :, pos:pos + T] = self.heads(proj(x))
            k, v = k[:, :, :pos + T], v[:, :, :pos + T]
        p = self.dropout if self.training else 0.0
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=1.0)
        else:  # softmax in float32, as HF T5 does
            w = torch.softmax((q @ k.transpose(-1, -2)).float() + mask, dim=-1).to(q.dtype)
            y = F.dropout(w, p) @ v
        return self.o(y.transpose(1, 2).reshape(B, T, -1))  # [B, H, T, dk] -> [B, T, H*dk]

class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gated = cfg.feed_forward_proj == "gated-gelu"
        if self.gated:  # v1.1's GEGLU, with the tanh GELU T5 v1.1 uses ("gelu_new")
            self.wi_0, self.wi_1 = (nn.Linear(cfg.d_model, cfg.d_ff, bias=False) for _ in "01")
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x):
        if self.gated:
            return self.wo(self.dropout(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))
        return self.wo(self.dropout(F.relu(self.wi(x))))

class Block(nn.Module):
    """Pre-norm residual sub-layers: self-attention, cross-attention (decoder only), MLP."""
    def __init__(self, cfg, cross: bool):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg), Attention(cfg)
        if cross:
            self.cross_attn_norm, self.cross_attn = RMSNorm(cfg), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg), MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x, mask, enc=None, cross_mask=None, cache=None, pos=None):
        c = cache or (None, None)  # decoding: (self-attention k/v buffers, cross-attention k/v)
        x = x + self.dropout(self.attn(self.attn_norm(x), mask, None, c[0], pos))
        if enc is not None:
            x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), cross_mask, enc, c[1]))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))

class T5(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.config, c = config, config
        self.shared = nn.Embedding(c.vocab_size, c.d_model)
        # encoder and decoder: blocks sharing one relative position bias table, then a final norm
        self.encoder, self.decoder = (nn.ModuleDict(dict(
            relative_attention_bias=nn.Embedding(c.relative_attention_num_buckets, c.num_heads),
            block=nn.ModuleList([Block(c, cross) for _ in range(n)]),
            final_layer_norm=RMSNorm(c)))
            for cross, n in ((False, c.num_layers), (True, c.num_decoder_layers)))
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.dropout = nn.Dropout(c.dropout_rate)  # on the embeddings and the final norms' output
        init_weights(self)

    def position_bias(self, stack, q_len, k_len, offset=0):
        """`stack`'s [1, H, q_len, k_len] bias for queries at offset.. and keys at 0.."""
        c, dev = self.config, stack.relative_attention_bias.weight.device
        q_pos = torch.arange(offset, offset + q_len, device=dev)[:, None]
        buckets = relative_position_bucket(torch.arange(k_len, device=dev) - q_pos,  # key - query
                                           stack is self.encoder, c.relative_attention_num_buckets,
                                           c.relative_attention_max_distance)
        return stack.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def encode(self, input_ids, attention_mask=None):
        """Encoder output [B, S, d] and its additive key mask [B, 1, 1, S] (default: non-pad)."""
        keep = input_ids != self.config.pad_token_id if attention_mask is None else attention_mask
        pad_mask = (1.0 - keep[:, None, None, :].float()) * NEG_INF
        mask = self.position_bias(self.encoder, input_ids.shape[1], input_ids.shape[1]) + pad_mask
        x = self.dropout(self.shared(input_ids))
        for block in self.encoder.block:
            x = block(x, mask)
        return self.dropout(self.encoder.final_layer_norm(x)), pad_mask

    def decode(self, decoder_input_ids, enc, cross_mask, cache=None, pos=0):
        """Logits for the decoder input, or with generate's KV cache for one token at `pos`."""
        T = decoder_input_ids.shape[1]
        mask = self.position_bias(self.decoder, T, pos + T, offset=pos)  # [1, H, T, pos + T]
        if cache is None:  # mask keys after the query (a cached step has none)
            mask = mask + torch.full((T, T), NEG_INF, device=enc.device).triu(1)
        x = self.dropout(self.shared(decoder_input_ids))
        for block, c in zip(self.decoder.block, cache or [None] * len(self.decoder.block)):
            x = block(x, mask, enc, cross_mask, cache=c, pos=pos)
        x = self.dropout(self.decoder.final_layer_norm(x))
        if self.config.tie_word_embeddings:  # Mesh TF / T5X rescale before the tied projection
            return F.linear(x * self.config.d_model ** -0.5, self.shared.weight)
        return self.lm_head(x)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, labels=None,
                z_loss: float = 0.0):
        """(logits [B, T, V] float32, loss or None). loss: mean cross-entropy over labels != -100,
        plus z_loss * mean(logsumexp(logits)^2), T5X's term keeping the softmax normaliser at 1."""
        if decoder_input_ids is None:  # teacher forcing
            c = self.config
            decoder_input_ids = shift_right(labels, c.decoder_start_token_id, c.pad_token_id)
        logits = self.decode(decoder_input_ids, *self.encode(input_ids, attention_mask)).float()
        if labels is None:
            return logits, None
        flat, target = logits.view(-1, logits.shape[-1]), labels.reshape(-1)
        keep = (target != -100).float()
        lse = torch.logsumexp(flat, -1)  # one pass over the vocabulary serves both terms
        per_token = lse - flat.gather(1, target.clamp(min=0)[:, None]).squeeze(1)  # -log p
        if z_loss:
            per_token = per_token + z_loss * lse.pow(2)
        return logits, (per_token * keep).sum() / keep.sum()

    def _start_cache(self, enc, max_len):  # per decoder block: (self-attn k/v buffers, cross k/v)
        shape = (enc.shape[0], self.config.num_heads, max_len, self.config.d_kv)
        return [((enc.new_zeros(shape), enc.new_zeros(shape)),
                 (b.cross_attn.heads(b.cross_attn.k(enc)), b.cross_attn.heads(b.cross_attn.v(enc))))
                for b in self.decoder.block]

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=64, num_beams=1,
                 length_penalty=0.6, return_all_beams=False):
        """Generated ids [B, <=max_new_tokens] without the start token; EOS kept, pad after it.
        num_beams=1: greedy. num_beams>1: T5X's beam search, scoring a finished beam by log p /
        ((5 + length) / 6) ** length_penalty (length counts the EOS); returns the best beam, or
        with return_all_beams=True all, best first (ids [B, K, L], scores [B, K])."""
        if max_new_tokens < 1 or num_beams < 1 or (num_beams == 1 and return_all_beams):
            raise ValueError(f"generate needs max_new_tokens >= 1 (got {max_new_tokens}) and "
                             f"num_beams >= 1, > 1 for return_all_beams (got {num_beams})")
        was_training, cfg = self.training, self.config
        enc, cross_mask = self.eval().encode(input_ids, attention_mask)  # eval: no dropout
        if num_beams > 1:
            out = self._beam_search(enc, cross_mask, max_new_tokens, num_beams, length_penalty,
                                    return_all_beams)
        else:  # greedy, all rows at once
            cache, B = self._start_cache(enc, max_new_tokens), enc.shape[0]
            out = [torch.full((B,), cfg.decoder_start_token_id, device=enc.device)]
            done = torch.zeros(B, dtype=torch.bool, device=enc.device)
            for pos in range(max_new_tokens):
                nxt = self.decode(out[-1][:, None], enc, cross_mask, cache, pos)[:, -1].argmax(-1)
                out.append(nxt.masked_fill(done, cfg.pad_token_id))  # past their EOS: only pad
                done |= out[-1] == cfg.eos_token_id
                if done.all():
                    break
            out = torch.stack(out[1:], 1)
        self.train(was_training)
        return out

    def _beam_search(self, enc, cross_mask, L, K, alpha, return_all_beams):
        """Batch x beams at once: row b*K + k of every [B*K, ...] tensor is batch b, beam k."""
        cfg, B, V, dev = self.config, enc.shape[0], self.config.vocab_size, enc.device
        bp = lambda n: ((5.0 + n) / 6.0) ** alpha  # noqa: E731  T5X's brevity penalty
        take = lambda seq, idx: seq.gather(1, idx[:, :, None].expand(-1, -1, 1 + L))  # noqa: E731
        enc, cross_mask = enc.repeat_interleave(K, 0), cross_mask.repeat_interleave(K, 0)
        cache = self._start_cache(enc, L)
        # [B, K, 1 + L] ids after the start token; all beams start empty, only beam 0 counts
        alive_seq = fin_seq = torch.full((B, K, 1 + L), cfg.decoder_start_token_id, device=dev)
        alive_lp = torch.tensor([0.0] + [-1e7] * (K - 1), device=dev).repeat(B, 1)
        fin_score, fin_flag = torch.full_like(alive_lp, -1e7), torch.zeros_like(alive_lp).bool()
        for pos in range(L):
            logits = self.decode(alive_seq[:, :, pos].reshape(-1, 1), enc, cross_mask, cache, pos)
            cand = torch.log_softmax(logits[:, -1].float(), -1).view(B, K, V) + alive_lp[:, :, None]
            # top 2K: even if K of them end in EOS (one per beam at most), K remain to continue
            top_lp, top_idx = cand.view(B, -1).topk(2 * K, dim=-1)  # [B, 2K]
            src_beam, tok = top_idx // V, top_idx % V
            seq = take(alive_seq, src_beam)  # [B, 2K, 1 + L]
            seq[:, :, pos + 1] = tok
            eos = tok == cfg.eos_token_id
            # alive: the K best that did not just end; each one's cache follows its parent beam
            alive_lp, a_idx = top_lp.masked_fill(eos, -1e7 * 2).topk(K, dim=-1)
            alive_seq = take(seq, a_idx)
            rows = (torch.arange(B, device=dev)[:, None] * K + src_beam.gather(1, a_idx)).view(-1)
            for buf in [kv for self_kv, _ in cache for kv in self_kv]:
                buf[:, :, :pos + 1] = buf[rows, :, :pos + 1]
            # finished: merge the newly ended (penalised by their length) into the K best so far
            new_score = torch.where(eos, top_lp / bp(pos + 1), torch.full_like(top_lp, -1e7))
            fin_score, f_idx = torch.cat([fin_score, new_score], 1).topk(K, dim=-1)
            fin_seq = take(torch.cat([fin_seq, seq], 1), f_idx)
            fin_flag = torch.cat([fin_flag, eos], 1).gather(1, f_idx)
            # stop once no alive beam can beat the worst finished one (log p only falls with length)
            worst_fin = torch.where(fin_flag.all(1), fin_score.min(1).values, -1e7)
            if bool((worst_fin > alive_lp[:, 0] / bp(L)).all()):
                break
        none = ~fin_flag.any(1)  # a row where nothing finished returns its alive beams, as T5X does
        fin_seq = torch.where(none[:, None, None], alive_seq, fin_seq)[:, :, 1:pos + 2]
        fin_score = torch.where(none[:, None], alive_lp, fin_score)
        return (fin_seq, fin_score) if return_all_beams else fin_seq[:, 0]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied lm_head is `shared`, counted once

    def flops_per_token(self, src_len, tgt_len) -> float:
        """Matmul FLOPs (2*m*n*k each) of one forward per target token, the encoder's spread over
        them: projections, attention scores and values (the causal half too, as kernels do)."""
        c, S, T = self.config, src_len, tgt_len
        inner, n_ff = c.num_heads * c.d_kv, 3 if c.feed_forward_proj == "gated-gelu" else 2
        two, mlp = 2 * 2 * c.d_model * inner, 2 * n_ff * c.d_model * c.d_ff  # two: 2 projections
        enc = c.num_layers * S * (2 * two + mlp + 2 * 2 * S * inner)
        # per target token: self-attention, cross-attention's q and o; k and v per source token
        dec = c.num_decoder_layers * (T * (3 * two + mlp + 2 * 2 * (T + S) * inner) + S * two)
        return (enc + dec + T * 2 * c.d_model * c.vocab_size) / T

    @classmethod
    def from_pretrained(cls, path) -> "T5":
        """Load a Hugging Face T5 folder: config.json, model.safetensors or pytorch_model.bin."""
        with open(os.path.join(path, "config.json")) as fh:
            hf = json.load(fh)
        cfg = T5Config(**{k: hf[k] for k in asdict(T5Config()) if hf.get(k) is not None})
        cfg.num_decoder_layers = hf.get("num_decoder_layers") or cfg.num_layers  # old: not stored
        st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
        if not os.path.exists(st) and not os.path.exists(pt):
            raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
        tensors = (load_safetensors(st) if os.path.exists(st)
                   else torch.load(pt, map_location="cpu", weights_only=True))
        if "scale_decoder_outputs" in hf:  # transformers >= 5: tie_word_embeddings is always true,
            # this says if logits are rescaled, and an lm_head.weight unlike shared.weight unties
            cfg.tie_word_embeddings = bool(hf["scale_decoder_outputs"])  # we tie iff we rescale
            lm = tensors.get("lm_head.weight")
            if not cfg.tie_word_embeddings and (lm is None or any(
                    torch.equal(lm, tensors[k]) for k in EMBEDDING_COPIES if k in tensors)):
                raise UserError(f"{path}: scale_decoder_outputs=false, no lm_head.weight unlike "
                                "shared.weight: tied unscaled logits, which we cannot represent")
        with torch.device("meta"):  # skip the random init: every tensor is overwritten below
            model = cls(cfg).to_empty(device="cpu")
        model.load_state_dict(hf_to_ours(tensors, model))
        return model

# Our parameter names -> Hugging Face's, one re.sub after another. HF numbers a block's sub-layers
# (self-attention, decoder: cross-attention, MLP), keeps the position bias in block 0's layer 0.
HF_RENAMES = [(r"^(\w+)\.(relative_attention_bias)", r"\1.block.0.layer.0.SelfAttention.\2"),
              (r"\.attn", ".layer.0.SelfAttention"), (r"\.cross_attn", ".layer.1.EncDecAttention"),
              (r"^(encoder\.block\.\d+)\.mlp", r"\1.layer.1.DenseReluDense"),
              (r"^(decoder\.block\.\d+)\.mlp", r"\1.layer.2.DenseReluDense"),
              (r"(layer\.\d)\.\w+_norm", r"\1.layer_norm")]  # e.g. layer.0.SelfAttention_norm

def hf_names(cfg: T5Config) -> dict:
    """Our parameter name -> Hugging Face T5ForConditionalGeneration name."""
    with torch.device("meta"):
        theirs = ours = list(T5(cfg).state_dict())
    for pattern, repl in HF_RENAMES:
        theirs = [re.sub(pattern, repl, name) for name in theirs]
    return dict(zip(ours, theirs))

EMBEDDING_COPIES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

def hf_to_ours(tensors: dict, model: T5) -> dict:
    """Rename a HF state dict onto `model`'s names, checking names and shapes, and that the
    embedding's copies (EMBEDDING_COPIES, a tied lm_head) agree; one error lists every fault."""
    tensors, tied = dict(tensors), model.config.tie_word_embeddings
    copies = [k for k in EMBEDDING_COPIES + ("lm_head.weight",) * tied if k in tensors]
    emb = tensors["shared.weight"] = tensors.pop(copies[0]) if copies else None  # None: missing
    problems = [f"tensor {k!r} differs from shared.weight, whose tied copy it is"
                for k in copies[1:] if not torch.equal(tensors.pop(k), emb)]
    names, expected = hf_names(model.config), model.state_dict()
    for ours, theirs in names.items():
        t, want = tensors.get(theirs), tuple(expected[ours].shape)
        if t is None:
            problems.append(f"missing tensor {theirs!r} (for {ours})")
        elif tuple(t.shape) != want:
            problems.append(f"tensor {theirs!r} has shape {tuple(t.shape)}, expected {want} "
                            f"(for {ours})")
    problems += [f"unexpected tensor {k!r}" for k in sorted(set(tensors) - set(names.values()))
                 # old HF files also saved an unused cross-attention position bias
                 if not k.endswith("EncDecAttention.relative_attention_bias.weight")]
    if problems:
        raise UserError("checkpoint does not match the T5 config: " + "; ".join(problems))
    return {ours: tensors[theirs] for ours, theirs in names.items()}

# safetensors: 8-byte little-endian header size, JSON header, raw little-endian tensor bytes
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}

def load_safetensors(path) -> dict:
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    n = int.from_bytes(buf[:8], "little")
    if len(buf) < 8 or 8 + n > len(buf):
        raise ValueError(f"{path}: not a safetensors file (header size {n}, file size {len(buf)})")
    header, out = json.loads(buf[8:8 + n]), {}
    header.pop("__metadata__", None)
    data = torch.frombuffer(buf, dtype=torch.uint8)[8 + n:]
    for name, info in header.items():
        dtype, (lo, hi) = SAFETENSORS_DTYPES.get(info["dtype"]), info["data_offsets"]
        raw = (data[lo:hi] if lo >= 0 else data[:0]).clone()  # own memory; no offset from the end
        if dtype is None or not len(raw) == hi - lo == math.prod(info["shape"]) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r}: unsupported dtype {info['dtype']}, or "
                             f"data_offsets {[lo, hi]} that do not fit its shape {info['shape']}")
        out[name] = raw.view(dtype).reshape(info["shape"])
    return out

@torch.no_grad()
def init_weights(model: T5, generator=None) -> None:
    """T5X's default fresh init (`t5x/examples/t5/layers.py`, `network.py`). nn.Linear weights are
    [out, in]: fan_in is shape[1]. Truncated normals: cut at +-2 sigma as in JAX, sigma raised."""
    c = model.config
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 2)[-2]  # module name: q, k, wi_0, relative_attention_bias, ...
        if name == "shared.weight":
            nn.init.normal_(p, 0.0, 1.0, generator=generator)
        elif "norm" in leaf:
            nn.init.ones_(p)
        elif leaf == "relative_attention_bias":  # U(-a, a), a = sqrt(3 / ((buckets + H) / 2))
            a = math.sqrt(3.0 / ((p.shape[0] + p.shape[1]) / 2))
            nn.init.uniform_(p, -a, a, generator=generator)
        elif leaf == "q":  # 1 / (d_model * d_kv): T5's stand-in for scaling scores by 1/sqrt(d_kv)
            nn.init.normal_(p, 0.0, (c.d_model * c.d_kv) ** -0.5, generator=generator)
        elif leaf in ("k", "v", "o"):  # N(0, 1 / fan_in)
            nn.init.normal_(p, 0.0, p.shape[1] ** -0.5, generator=generator)
        elif leaf in ("wi", "wi_0", "wi_1", "wo", "lm_head"):  # lm_head: our choice, T5X's default
            s = p.shape[1] ** -0.5 / 0.87962566103423978  # the std of N(0, 1) cut at +-2
            nn.init.trunc_normal_(p, 0.0, s, -2 * s, 2 * s, generator=generator)
        else:
            raise ValueError(f"init_weights has no rule for parameter {name!r}")

def shift_right(labels, start_id=0, pad_id=0):
    """Decoder inputs for teacher forcing: [start, y0, y1, ...], ignored labels (-100) as pad."""
    out = torch.full_like(labels, start_id)
    out[..., 1:] = labels[..., :-1]
    return out.masked_fill(out == -100, pad_id)
