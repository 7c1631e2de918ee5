"""Tests of model.py: the T5 network, decoding, checkpoint I/O. Tiny models, CPU, a few seconds.

Run: python -m pytest -q tests/test_model.py
"""
import json
import math
import os
import struct
import sys
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import (T5, PRESETS, SAFETENSORS_DTYPES, Attention, get_config, hf_names,  # noqa: E402
                   init_weights, load_safetensors, relative_position_bucket, shift_right)

_ALIASES = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
            num_heads=4, dropout_rate=0.0)
V10 = dict(TINY)  # T5 v1.0: ReLU, tied embedding
V11 = dict(TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # T5 v1.1


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return T5(get_config("cpu", **{**V10, **kw})).eval()


def batch(B=3, S=9, T=7, V=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (B, S), generator=g)
    tgt = torch.randint(3, V, (B, T), generator=g)
    return src, tgt


@pytest.mark.parametrize("version", [V10, V11])
def test_decoder_is_causal(version):
    model = tiny(**version)
    src, tgt = batch()
    dec = shift_right(tgt)
    logits, _ = model(src, decoder_input_ids=dec)
    t = 4
    changed = dec.clone()
    changed[:, t:] = torch.randint(3, 64, changed[:, t:].shape)
    logits2, _ = model(src, decoder_input_ids=changed)
    assert torch.allclose(logits[:, :t], logits2[:, :t], atol=1e-5)
    assert not torch.allclose(logits[:, t:], logits2[:, t:], atol=1e-3)  # later ones see it


def test_encoder_padding_invariance():
    model = tiny()
    src, tgt = batch(B=2, S=6)
    padded = torch.cat([src, torch.zeros(2, 5, dtype=torch.long)], 1)  # pad id 0 on the right
    mask = (padded != 0).long()
    a, _ = model(src, labels=tgt)
    b, _ = model(padded, attention_mask=mask, labels=tgt)
    c, _ = model(padded, labels=tgt)  # mask left out: derived from the pad id
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    # and padding really is masked: attending to it would change the logits
    d, _ = model(padded, attention_mask=torch.ones_like(padded), labels=tgt)
    assert not torch.allclose(a, d, atol=1e-3)


@pytest.mark.parametrize("version", [V10, V11])
def test_sdpa_equals_manual_attention(version, monkeypatch):
    model = tiny(**version).train()  # dropout 0: train mode only switches autograd-relevant paths
    src, tgt = batch()
    mask = torch.ones_like(src)
    mask[0, -3:] = 0
    results = []
    for use_sdpa in (True, False):
        monkeypatch.setattr(Attention, "use_sdpa", use_sdpa)
        model.zero_grad()
        logits, loss = model(src, attention_mask=mask, labels=tgt)
        loss.backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (la, ga), (lb, gb) = results
    assert torch.allclose(la, lb, atol=1e-5)
    for name in ga:  # the relative position bias gets its gradient through the mask
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


def decoding_model(version=V11, seed=1):
    """A tiny model whose untrained greedy output varies and often ends in EOS (vocab 16). Tied
    models at init mostly echo their input token (the N(0,1) embedding dominates the residual
    stream), so their embedding is shrunk to let the blocks speak."""
    model = tiny(seed=seed, **{**version, "vocab_size": 16})
    if model.config.tie_word_embeddings:
        with torch.no_grad():
            model.shared.weight.mul_(0.1)
    return model


def reference_greedy(model, src, steps):
    """Uncached decoding: a full forward over the growing prefix for every new token."""
    cfg = model.config
    dec = torch.full((src.shape[0], 1), cfg.decoder_start_token_id)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    out, step_logits = [], []
    for _ in range(steps):
        logits, _ = model(src, decoder_input_ids=dec)
        step_logits.append(logits[:, -1])
        nxt = logits[:, -1].argmax(-1).masked_fill(done, cfg.pad_token_id)
        out.append(nxt)
        done |= nxt == cfg.eos_token_id
        dec = torch.cat([dec, nxt[:, None]], 1)
    return torch.stack(out, 1), step_logits


@pytest.mark.parametrize("version", [V10, V11])
def test_cached_greedy_equals_uncached_loop(version):
    model = decoding_model(version)
    src, _ = batch(B=4, V=16)
    ref, ref_logits = reference_greedy(model, src, steps=10)
    got = model.generate(src, max_new_tokens=10)
    assert torch.equal(got, ref[:, :got.shape[1]])
    assert (ref[:, got.shape[1]:] == 0).all()  # it only stops early once every row has ended
    # the cached step logits are the full forward's, position by position
    enc, cross = model.encode(src)
    cache = model._start_cache(enc, 10)
    for pos in range(10):
        tok = torch.full((4, 1), 0) if pos == 0 else ref[:, pos - 1:pos]
        step = model.decode(tok, enc, cross, cache, pos)[:, -1]
        assert torch.allclose(step, ref_logits[pos], atol=1e-4)


def test_greedy_stops_per_sequence_at_eos():
    model = decoding_model()
    src, _ = batch(B=6, V=16)
    out = model.generate(src, max_new_tokens=12)
    for row in out.tolist():
        if 1 in row:  # everything after the first EOS is pad
            assert all(t == 0 for t in row[row.index(1) + 1:])
    assert (out == 1).any(), "the tiny model should end at least one sequence (pick another seed)"


@pytest.mark.parametrize("version", [V10, V11])
def test_one_beam_equals_greedy(version):
    model = decoding_model(version)
    src, _ = batch(B=5, V=16)
    greedy = model.generate(src, max_new_tokens=10)
    assert torch.equal(model.generate(src, max_new_tokens=10, num_beams=1), greedy)
    # The beam machinery itself (candidate top-k, cache reordering, alive selection) with one beam
    # follows the argmax path exactly as long as no EOS intervenes; make EOS unreachable to compare
    # the full 10 steps. (With EOS reachable, T5X's beam search also files EOS candidates ranked
    # 2nd, so one beam may return a finished sequence greedy walked past: checked just below.)
    enc, cross = model.encode(src)
    model.config = replace(model.config, eos_token_id=99)
    try:
        free_greedy = model.generate(src, max_new_tokens=10)
        beam = model._beam_search(enc, cross, 10, 1, 0.6, False)
    finally:
        model.config = replace(model.config, eos_token_id=1)
    assert torch.equal(beam, free_greedy)
    # with EOS: one beam's result scores at least as well as greedy's whenever greedy ended
    seqs, scores = model._beam_search(enc, cross, 10, 1, 0.6, True)
    for b in range(5):
        if (greedy[b] == 1).any():
            lp, n = sequence_logprob(model, src[b], greedy[b, :greedy.shape[1]])
            assert scores[b, 0].item() >= lp / ((5 + n) / 6) ** 0.6 - 1e-5


def sequence_logprob(model, src, seq):
    """Teacher-forced log p(seq | src) summed up to and including the first EOS."""
    logits, _ = model(src[None], decoder_input_ids=shift_right(seq[None]))
    lp = torch.log_softmax(logits[0], -1).gather(1, seq[:, None])[:, 0]
    n = seq.tolist().index(1) + 1
    return lp[:n].sum().item(), n


def test_beams_are_ordered_by_penalised_score():
    model = decoding_model()
    src, _ = batch(B=3, V=16)
    alpha, K = 0.6, 4
    seqs, scores = model.generate(src, max_new_tokens=8, num_beams=K, length_penalty=alpha,
                                  return_all_beams=True)
    assert seqs.shape[:2] == (3, K) and scores.shape == (3, K)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    checked = 0
    for b in range(3):
        for k in range(K):
            if scores[b, k] > -1e6 and (seqs[b, k] == 1).any():  # finished: rescore it alone
                lp, n = sequence_logprob(model, src[b], seqs[b, k])
                assert math.isclose(scores[b, k].item(), lp / ((5 + n) / 6) ** alpha,
                                    rel_tol=1e-4, abs_tol=1e-4)
                checked += 1
    assert checked >= 3
    best = model.generate(src, max_new_tokens=8, num_beams=K, length_penalty=alpha)
    assert torch.equal(best, seqs[:, 0, :best.shape[1]])


def test_relative_position_buckets_by_hand():
    # bidirectional (encoder), 32 buckets, max distance 128: 16 per direction, exact below 8, then
    # 8 + floor(log(d/8) / log(16) * 8) capped at 15; keys after the query add 16.
    # relative = key - query.
    rel = torch.tensor([0, -1, 1, -7, -8, -15, -16, -127, -128, -1000, 8, 16, 128, 1000])
    want = [0, 1, 17, 7, 8, 9, 10, 15, 15, 15, 24, 26, 31, 31]
    assert relative_position_bucket(rel, bidirectional=True).tolist() == want
    # causal (decoder): future keys -> 0; exact below 16, then 16 + floor(log(d/16) / log(8) * 16)
    # capped at 31
    rel = torch.tensor([0, 5, -1, -15, -16, -31, -32, -64, -127, -128, -500])
    want = [0, 0, 1, 15, 16, 21, 21, 26, 31, 31, 31]
    assert relative_position_bucket(rel, bidirectional=False).tolist() == want
    # the stacks use key - query, and the decoder's step offset lines up with the full matrix
    model = tiny()
    full = model.position_bias(model.decoder, 6, 6)
    assert torch.equal(model.position_bias(model.decoder, 1, 6, offset=5), full[:, :, 5:6])
    table = model.encoder.relative_attention_bias.weight
    bias = model.position_bias(model.encoder, 3, 3)
    assert torch.equal(bias[0, :, 0, 2], table[18])  # +2
    assert torch.equal(bias[0, :, 2, 0], table[2])  # -2


def write_safetensors(tensors, path, metadata=None):
    """The format by hand: u64 LE header size, JSON header (padded: data 8-byte aligned), bytes."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, raws, at = {"__metadata__": metadata} if metadata else {}, [], 0
    for k, t in tensors.items():
        raws.append(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        header[k] = dict(dtype=names[t.dtype], shape=list(t.shape),
                         data_offsets=[at, at := at + len(raws[-1])])
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(raws))


def save_hf(path, model, tensors=None, **config):
    """`model` as a Hugging Face folder (HF names, config.json), with tensors changed (None drops
    one) and config fields."""
    names = hf_names(model.config)
    sd = {names[k]: v for k, v in model.state_dict().items()}
    sd = {k: v for k, v in {**sd, **(tensors or {})}.items() if v is not None}
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(sd, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**asdict(model.config), **config}))
    return sd


@pytest.mark.parametrize("version", [V10, V11])
def test_from_pretrained_reads_a_hugging_face_folder(tmp_path, version):
    model = tiny(seed=5, **version)
    src, tgt = batch()
    sd = save_hf(tmp_path, model, model_type="t5", architectures=["T5ForConditionalGeneration"])
    assert ("lm_head.weight" in sd) == (not version.get("tie_word_embeddings", True))
    loaded = T5.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert torch.equal(model(src, labels=tgt)[0], loaded(src, labels=tgt)[0])
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        T5.from_pretrained(tmp_path)


def test_hf_names_are_hugging_faces_layout():
    # HF numbers a block's sub-layers: self-attention, (decoder) cross-attention, then the MLP;
    # the position bias lives in block 0's self-attention
    names = hf_names(get_config("cpu", **{**V11, "num_layers": 2, "num_decoder_layers": 1}))
    want = {"shared.weight", "lm_head.weight", "encoder.final_layer_norm.weight",
            "decoder.final_layer_norm.weight"}
    for stack, n, attns in (("encoder", 2, ["SelfAttention"]),
                            ("decoder", 1, ["SelfAttention", "EncDecAttention"])):
        want.add(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        for i in range(n):
            for j, sub in enumerate(attns + ["DenseReluDense"]):
                ws = ["q", "k", "v", "o"] if j < len(attns) else ["wi_0", "wi_1", "wo"]
                want |= {f"{stack}.block.{i}.layer.{j}.{sub}.{w}.weight" for w in ws}
                want.add(f"{stack}.block.{i}.layer.{j}.layer_norm.weight")
    assert len(names) == len(want) and set(names.values()) == want
    for ours, theirs in [("decoder.block.0.attn.q", "decoder.block.0.layer.0.SelfAttention.q"),
                         ("decoder.block.0.cross_attn_norm", "decoder.block.0.layer.1.layer_norm"),
                         ("encoder.block.1.mlp_norm", "encoder.block.1.layer.1.layer_norm")]:
        assert names[ours + ".weight"] == theirs + ".weight"


def test_from_pretrained_reads_pytorch_bin_with_hf_aliases(tmp_path):
    model = tiny(seed=6)
    names = hf_names(model.config)
    sd = {names[k]: v.clone() for k, v in model.state_dict().items()}
    # what older HF files hold: the embedding under its aliases, the tied lm_head, an unused
    # cross-attention bias
    sd["encoder.embed_tokens.weight"] = sd["decoder.embed_tokens.weight"] = sd.pop("shared.weight")
    sd["lm_head.weight"] = sd["encoder.embed_tokens.weight"]
    unused = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
    sd[unused] = torch.zeros(32, 4)
    save_hf(tmp_path, model)
    os.remove(tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    loaded = T5.from_pretrained(tmp_path).eval()
    src, tgt = batch()
    assert torch.equal(model(src, labels=tgt)[0], loaded(src, labels=tgt)[0])


def test_from_pretrained_reads_transformers5_config(tmp_path):
    # transformers >= 5 writes tie_word_embeddings=True for every T5 and marks v1.1 by
    # scale_decoder_outputs=False
    model = tiny(seed=6, **V11)
    save_hf(tmp_path, model, tie_word_embeddings=True, scale_decoder_outputs=False,
            num_decoder_layers=None)
    loaded = T5.from_pretrained(tmp_path).eval()
    assert not loaded.config.tie_word_embeddings and loaded.config.num_decoder_layers == 2
    src, tgt = batch()
    assert torch.equal(model(src, labels=tgt)[0], loaded(src, labels=tgt)[0])


@pytest.mark.parametrize("alias", ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                   "lm_head.weight"])
def test_embedding_alias_unlike_shared_is_refused(tmp_path, alias):
    # HF drops these aliases of the (tied) embedding on load: one that differs would be lost
    model = tiny(seed=7)
    emb = model.shared.weight.detach()
    save_hf(tmp_path, model, {alias: emb.clone()})
    T5.from_pretrained(tmp_path)  # an equal copy is fine
    save_hf(tmp_path, model, {alias: emb + 1})
    with pytest.raises(ValueError, match=f"tensor '{alias}' differs from shared.weight"):
        T5.from_pretrained(tmp_path)
    if alias != "lm_head.weight":  # only aliases, no shared.weight: they must agree
        save_hf(tmp_path, model, {"shared.weight": None, _ALIASES[0]: emb, _ALIASES[1]: emb + 1})
        with pytest.raises(ValueError, match=f"'{_ALIASES[1]}' differs"):
            T5.from_pretrained(tmp_path)


def test_transformers5_tied_embeddings_without_rescale_are_refused(tmp_path):
    # transformers >= 5: tie_word_embeddings is always true, scale_decoder_outputs says whether the
    # logits are rescaled, and an lm_head.weight unlike shared.weight unties. Our T5 ties exactly
    # when it rescales (v1.0), so "tied, not rescaled" cannot be loaded.
    model = tiny(seed=7)
    src, tgt = batch()
    save_hf(tmp_path, model, tie_word_embeddings=True, scale_decoder_outputs=True)  # v1.0
    assert torch.equal(T5.from_pretrained(tmp_path).eval()(src, labels=tgt)[0],
                       model(src, labels=tgt)[0])
    emb = model.shared.weight.detach()
    for lm_head in (None, emb.clone()):  # tied: lm_head.weight absent or equal to shared.weight
        save_hf(tmp_path, model, {"lm_head.weight": lm_head}, tie_word_embeddings=True,
                scale_decoder_outputs=False)
        with pytest.raises(ValueError, match="scale_decoder_outputs=false.*cannot represent"):
            T5.from_pretrained(tmp_path)
    # rescaled but untied: also not ours to represent, refused by the alias check
    save_hf(tmp_path, model, {"lm_head.weight": emb + 1}, scale_decoder_outputs=True)
    with pytest.raises(ValueError, match="'lm_head.weight' differs from shared.weight"):
        T5.from_pretrained(tmp_path)


def test_bad_checkpoint_names_the_tensor(tmp_path):
    model = tiny(seed=7)
    tensors, path = save_hf(tmp_path, model), tmp_path / "model.safetensors"
    wrong = dict(tensors)
    wrong["encoder.block.1.layer.0.SelfAttention.k.weight"] = torch.zeros(32, 31)
    write_safetensors(wrong, path)
    with pytest.raises(ValueError, match=r"'encoder\.block\.1\.layer\.0\.SelfAttention\.k\.weight' "
                                         r"has shape"):
        T5.from_pretrained(tmp_path)
    missing = dict(tensors)
    del missing["decoder.block.1.layer.2.DenseReluDense.wi.weight"]
    write_safetensors(missing, path)
    with pytest.raises(ValueError, match=r"missing tensor 'decoder\.block\.1\.layer\.2\."
                                         r"DenseReluDense\.wi\.weight'"):
        T5.from_pretrained(tmp_path)
    extra = dict(tensors, **{"encoder.block.9.layer.0.layer_norm.weight": torch.ones(32)})
    write_safetensors(extra, path)
    with pytest.raises(ValueError, match=r"unexpected tensor 'encoder\.block\.9"):
        T5.from_pretrained(tmp_path)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool]


def test_safetensors_reads_every_dtype(tmp_path):
    torch.manual_seed(0)
    tensors = {}
    for dt in DTYPES:
        x = torch.randn(3, 5) * 100
        tensors[f"t_{dt}"] = x > 0 if dt == torch.bool else x.to(dt)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["strided"] = torch.arange(12.0).view(3, 4).t()  # written contiguous
    write_safetensors(tensors, tmp_path / "a.safetensors", metadata={"format": "pt"})
    back = load_safetensors(tmp_path / "a.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    with open(tmp_path / "a.safetensors", "r+b") as f:     # a header longer than the file
        f.write(struct.pack("<Q", 10**6))
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_safetensors(tmp_path / "a.safetensors")


def test_safetensors_reads_hand_built_file(tmp_path):
    # two tensors written by hand as the format describes, header unpadded, keys out of data order
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    bf16 = struct.pack("<2H", 0x3F80, 0xC040)  # bfloat16 1.0, -3.0: top halves of their float32s
    header = json.dumps({"b": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]},
                         "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + f32 + bf16)
    got = load_safetensors(tmp_path / "h.safetensors")
    assert torch.equal(got["a"], torch.tensor([[1.0, -2.0], [0.5, 3.25]]))
    assert torch.equal(got["b"], torch.tensor([1.0, -3.0], dtype=torch.bfloat16))
    bad = json.dumps({"a": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(bad)) + bad + f32)
    with pytest.raises(ValueError, match="tensor 'a'"):
        load_safetensors(tmp_path / "bad.safetensors")
    # offsets counted from the end (negative) would read the last bytes of the file: refused
    neg = json.dumps({"b": {"dtype": "F32", "shape": [1], "data_offsets": [-8, -4]}}).encode()
    (tmp_path / "neg.safetensors").write_bytes(struct.pack("<Q", len(neg)) + neg + f32)
    with pytest.raises(ValueError, match="data_offsets"):
        load_safetensors(tmp_path / "neg.safetensors")


@pytest.mark.parametrize("version", [V10, V11])
def test_tiny_model_overfits_one_batch(version):
    model = tiny(seed=8, **version).train()
    src, tgt = batch(B=4, S=8, T=6)
    tgt[0, -2:] = -100  # ignored positions stay out of the loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(100):
        _, loss = model(src, labels=tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    model.eval()
    out = model.generate(src, max_new_tokens=6)
    assert torch.equal(out[1:], tgt[1:])  # it reproduces the memorised targets


def test_loss_z_loss_and_shift_right():
    model = tiny()
    src, tgt = batch()
    tgt[1, 4:] = -100
    logits, loss = model(src, labels=tgt)
    keep = tgt != -100
    ce = F.cross_entropy(logits[keep], tgt[keep])
    assert torch.allclose(loss, ce, atol=1e-6)
    _, loss_z = model(src, labels=tgt, z_loss=1e-2)
    lse = torch.logsumexp(logits[keep], -1)
    assert torch.allclose(loss_z, ce + 1e-2 * lse.pow(2).mean(), atol=1e-6)
    dec = shift_right(torch.tensor([[5, 6, 1, -100]]))
    assert dec.tolist() == [[0, 5, 6, 1]]


def test_config_presets_and_counts():
    with pytest.raises(ValueError, match="t5-small"):
        get_config("t5-huge")
    with pytest.raises(ValueError, match="d_model"):
        get_config("cpu", d_modle=3)
    with pytest.raises(ValueError, match="gated-silu"):
        get_config("cpu", feed_forward_proj="gated-silu")
    assert set(PRESETS) >= {"cpu", "tiny", "t5-small", "t5-v1_1-small"}
    small = get_config("t5-small")  # the paper's model: T5X small.gin
    assert (small.d_model, small.d_kv, small.num_layers, small.num_decoder_layers, small.num_heads,
            small.d_ff, small.vocab_size) == (512, 64, 6, 6, 8, 2048, 32128)
    v11 = get_config("t5-v1_1-small")
    assert (v11.num_layers, v11.num_heads, v11.d_ff, v11.feed_forward_proj,
            v11.tie_word_embeddings) == (8, 6, 1024, "gated-gelu", False)
    tied, untied = tiny(), tiny(tie_word_embeddings=False)  # a tied lm_head is counted once
    assert untied.num_params() - tied.num_params() == tied.config.vocab_size * tied.config.d_model


@pytest.mark.parametrize("version", [V10, V11])
def test_flops_per_token_matches_flop_counter(version, monkeypatch):
    # torch's FlopCounterMode counts every matmul of a forward; our closed form must agree exactly
    from torch.utils.flop_counter import FlopCounterMode
    model = tiny(**version)
    monkeypatch.setattr(Attention, "use_sdpa", False)  # plain matmuls the counter sees one by one
    src, tgt = batch(S=9, T=7)
    with FlopCounterMode(display=False) as counter:
        model(src, labels=tgt)
    assert counter.get_total_flops() == pytest.approx(model.flops_per_token(9, 7) * tgt.numel())


def test_init_matches_t5x_defaults():
    torch.manual_seed(0)
    cfg = get_config("t5-v1_1-small", vocab_size=4096, num_layers=1, num_decoder_layers=1)
    model = T5(cfg)
    init_weights(model, generator=torch.Generator().manual_seed(0))
    p = dict(model.named_parameters())

    def close(name, std):
        assert abs(p[name].std().item() / std - 1) < 0.05, (name, p[name].std().item(), std)

    close("shared.weight", 1.0)
    close("encoder.block.0.attn.q.weight", (512 * 64) ** -0.5)
    close("encoder.block.0.attn.k.weight", 512 ** -0.5)
    close("decoder.block.0.cross_attn.o.weight", 384 ** -0.5)
    close("decoder.block.0.mlp.wi_0.weight", 512 ** -0.5)
    close("decoder.block.0.mlp.wo.weight", 1024 ** -0.5)
    close("lm_head.weight", 512 ** -0.5)
    wi = p["encoder.block.0.mlp.wi_1.weight"]
    assert wi.abs().max() <= 2 * 512 ** -0.5 / 0.8796 + 1e-6  # cut at 2 (pre-truncation) sigma
    rel = p["encoder.relative_attention_bias.weight"]
    a = math.sqrt(3 / ((32 + 6) / 2))
    assert rel.abs().max() <= a and rel.abs().max() > 0.8 * a
    assert all((p[n] == 1).all() for n in p if n.endswith("norm.weight"))
    # the same generator seed gives the same weights
    other = T5(cfg)
    init_weights(other, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p[n], q) for n, q in other.named_parameters())


def test_dropout_is_on_in_train_mode_only():
    torch.manual_seed(0)
    model = T5(get_config("cpu", **dict(V10, dropout_rate=0.5)))
    plain = T5(get_config("cpu", **V10))  # dropout 0, same weights
    plain.load_state_dict(model.state_dict())
    src, tgt = batch()
    a, b = model.train()(src, labels=tgt)[0], model(src, labels=tgt)[0]
    assert not torch.allclose(a, b, atol=1e-2)  # a fresh mask each call
    assert not torch.allclose(a, plain(src, labels=tgt)[0], atol=1e-2)
    assert torch.equal(model.eval()(src, labels=tgt)[0], plain(src, labels=tgt)[0])
