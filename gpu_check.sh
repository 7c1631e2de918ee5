#!/usr/bin/env bash
# gpu_check.sh: every check that needs a GPU, in one run of at most ~8 minutes on one H100/H200, with all
# figures in one log. It runs: CPU-vs-CUDA logits parity (fp32 and bf16 autocast), paper-scale pre-training
# with compile and a resume that must continue the same loss curve, paper-scale fine-tuning with beam-4
# decoding, fp16 with GradScaler, bench.py's t5-small bf16 MFU at 128 x 512, and the data-generation rate.
#
#   bash gpu_check.sh                 # on a GPU machine; writes gpu_check.log (or $LOG)
#   SMOKE=1 bash gpu_check.sh         # the same steps at toy sizes on the CPU: checks the script itself
#
# Fine-tuning reads MTOP from $DATA_DIR (default data/) and a tokenizer from $TOKENIZER (default
# cache/bpe8192-natural.json; `python tokenizer.py --natural_only=True --path=...` makes it).
# Reading order: not part of the library; see README.md "Experiments at paper scale".
set -uo pipefail
cd "$(dirname "$0")"
LOG=${LOG:-gpu_check.log}
TOK=${TOKENIZER:-cache/bpe8192-natural.json}
W=$(mktemp -d)
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
step() {  # step NAME CMD...: run, keep the output's tail and the wall time in the log
  local name=$1; shift
  say "=== $name: $*"
  local t0=$SECONDS
  "$@" > "$W/$name.out" 2>&1
  local rc=$?
  tr '\r' '\n' < "$W/$name.out" | grep -av -e '%|' -e '^\s*$' | tail -n 12 >> "$LOG"
  say "--- $name: exit $rc, $((SECONDS - t0)) s"
  return $rc
}
if [ "${SMOKE:-0}" = 1 ]; then   # toy sizes, CPU
  DEV=cpu; PT="--model=tiny --vocab_size=256 --batch_size=8 --src_len=32 --tgt_len=32 --max_len=16"
  STEPS=20; HALF=10; FT="--model=tiny --batch_size=8 --eval_batches=1 --n_test=8 --max_decode=16"
  BENCH="--model=tiny --batch=4 --src_len=32 --tgt_len=32 --steps=2"; FP16=""; COMPILE=False
else
  DEV=cuda; PT="--preset=paper"; STEPS=300; HALF=150
  FT="--preset=paper --n_test=256"; BENCH="--model=t5-small --batch=128 --src_len=512 --tgt_len=512"
  FP16=1; COMPILE=True
fi
say "gpu_check $(date -u +%F\ %T) commit $(git rev-parse --short HEAD 2>/dev/null) device $DEV"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee -a "$LOG"

step parity python3 - "$DEV" <<'EOF'
import sys, torch
from model import T5, get_config
dev = sys.argv[1]
torch.manual_seed(0)
m = T5(get_config("t5-small" if dev == "cuda" else "tiny", dropout_rate=0.0)).eval()
x = torch.randint(2, 30000 if dev == "cuda" else 8000, (8, 128))
y = torch.randint(2, 30000 if dev == "cuda" else 8000, (8, 64))
with torch.no_grad():
    ref, _ = m(x, labels=y)
    m.to(dev)
    out, _ = m(x.to(dev), labels=y.to(dev))
    rel = ((out.cpu() - ref).abs().max() / ref.abs().max()).item()
    print(f"fp32 logits, CPU vs {dev}: max |diff| / max |logit| = {rel:.2e}")
    with torch.autocast(dev, dtype=torch.bfloat16):
        bf, _ = m(x.to(dev), labels=y.to(dev))
    rel_bf = ((bf.float().cpu() - ref).abs().max() / ref.abs().max()).item()
    agree = (bf.float().cpu().argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"bf16 autocast vs fp32 CPU: max rel diff {rel_bf:.2e}, argmax agreement {100 * agree:.1f}%")
    ids = m.generate(x[:4].to(dev), max_new_tokens=16, num_beams=4)
    print(f"beam-4 generate on {dev}: output shape {tuple(ids.shape)}")
    assert rel < 1e-3, "fp32 logits differ between CPU and CUDA"
EOF

# pre-training: A runs STEPS straight; B runs HALF, then resumes to STEPS. Their losses must agree.
step pretrain_a python3 pretrain.py $PT --task=set --device=$DEV --compile=$COMPILE --max_steps=$STEPS \
  --eval_interval=$HALF --ckpt_interval=$HALF --log_interval=10 --out_dir="$W/pt_a"
step pretrain_b python3 pretrain.py $PT --task=set --device=$DEV --compile=$COMPILE --max_steps=$HALF \
  --eval_interval=$HALF --ckpt_interval=$HALF --log_interval=10 --out_dir="$W/pt_b"
step pretrain_resume python3 pretrain.py --init=resume --max_steps=$STEPS --out_dir="$W/pt_b"
step resume_check python3 - "$W/pt_a/log.jsonl" "$W/pt_b/log.jsonl" <<'EOF'
import json, sys
a, b = ({r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r} for p in sys.argv[1:])
common = sorted(set(a) & set(b))
worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in common)
print(f"{len(common)} logged steps in common, last {common[-1]}: max relative loss difference {worst:.2e}")
print("losses at the last step:", a[common[-1]], b[common[-1]])
EOF
[ -n "$FP16" ] && step fp16 python3 pretrain.py $PT --task=set --device=$DEV --dtype=float16 \
  --max_steps=50 --eval_interval=50 --log_interval=10 --out_dir="$W/pt_fp16"
step finetune python3 finetune.py $FT --task=mtop --device=$DEV --tokenizer="$TOK" --max_steps=40 \
  --eval_interval=40 --log_interval=10 --out_dir="$W/ft"
step bench python3 bench.py --device=$DEV $BENCH --modes=bf16
cat > "$W/datagen.py" <<'EOF'
import sys, time
from functools import partial
import torch
from pretrain import TaskData
from tasks import get_task
from tokenizer import Vocab
smoke = sys.argv[1] == "cpu"
if __name__ == "__main__":                            # the workers import this file
    for name in ("set", "lime", "nesting_language"):
        build = partial(get_task, name, Vocab(32100), min_len=10, max_len=220)
        for workers in (0, 4, 8):
            data = TaskData(build(), 0, 512, 512, workers)
            for _ in range(2 * workers + 1):              # starts the workers, untimed
                data.next_batch(128)
            t0, n = time.perf_counter(), 2 if smoke else 10
            for _ in range(n):
                data.next_batch(128)
            data.close()
            rate = n / (time.perf_counter() - t0)
            print(f"{name:17} workers {workers}: {rate:6.1f} batches of 128/s")
EOF
step datagen env PYTHONPATH=. python3 "$W/datagen.py" "$DEV"
say "=== done; compare the datagen rates with pretrain's ms/step above (1000 / ms = steps/s)"
rm -rf "$W"
