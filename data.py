"""data.py: download the data the other scripts read and convert it to the layout they expect.

The authors' fine-tuning sets as released, SQuAD v1.1, a C4 shard (--natural_mb of text), opt-in
T5-small and v1.1-small (--init=hf:DIR); resumable downloads; MANIFEST.json: sizes and sha256s.
    python data.py              # all but the checkpoints into ./data; --tasks=squad,t5: only these
    python data.py --from_dir=~/dl --tasks=squad  # convert files you already have (same layout)
Reading order: ..., reproduce.py, bench.py, data.py (here, the last file: a utility). Next: none.
"""
import gzip, hashlib, json, os, random, re, shutil, urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import config
from config import UserError

GCS = "https://storage.googleapis.com/n2formal-public-data/synthetic_pretraining/finetuning_data"
HF = "https://huggingface.co"
# {task: [(url, path under the output folder)]}; finetune.py reads the authors' files as they are
SOURCES = {t: [(f"{GCS}/{t}/{s}.txt", f"{t}/{s}.txt") for s in ("train", "valid", "test")]
           for t in ("cnndm_10k", "mtop", "webqsp", "retrosynthesis", "code_translation")}
SOURCES["squad"] = [(f"https://rajpurkar.github.io/SQuAD-explorer/dataset/{n}-v1.1.json",
                     f"squad/{n}-v1.1.json") for n in ("train", "dev")]
SOURCES["natural_text"] = [(f"{HF}/datasets/allenai/c4/resolve/main/en/{n}.json.gz",
                            f"natural_text/{n}.json.gz")
                           for n in ("c4-train.00000-of-01024", "c4-validation.00000-of-00008")]
# v1.1: no model.safetensors on the Hub's main branch; both use t5-small/tokenizer.json (T5's vocab)
SOURCES["t5"] = [(f"{HF}/{repo}/resolve/main/{n}", f"{repo.split('/')[1]}/{n}") for repo, names in (
    ("google-t5/t5-small", ("config.json", "model.safetensors", "tokenizer.json")),
    ("google/t5-v1_1-small", ("config.json", "pytorch_model.bin"))) for n in names]

@dataclass
class DataConfig:
    tasks: str = ",".join(t for t in SOURCES if t != "t5")  # comma list; opt-in: t5
    out: str = config.DATA_DIR     # the output folder (the other scripts' --data_dir)
    from_dir: str = ""             # convert files already here (laid out as in out) instead
    natural_mb: float = 25.0       # MB of C4 text for natural_text/train.txt (validation: a 25th)
    squad_train: int = 20000       # SQuAD train questions kept (seed 0); 0 keeps them all

def download(url: str, path: str) -> None:
    """url to path through path.part: a broken download resumes where it stopped (HTTP Range)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part := path + ".part") else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            have = have if r.status == 206 else 0  # 200: the server ignored the Range
            total = have + int(n) if (n := r.headers["Content-Length"]) else None
            with open(part, "ab" if have else "wb") as f, tqdm.wrapattr(
                    r, "read", total, desc=os.path.basename(path), initial=have) as src:
                shutil.copyfileobj(src, f, 1 << 20)
    except OSError as e:  # urllib's errors (HTTP ones too) are OSErrors
        if getattr(e, "code", None) == 416:  # the .part is past the file's end: start over
            os.remove(part)
        raise UserError(f"download of {url} failed ({e}): run again or use --from_dir") from None
    if total is not None and (got := os.path.getsize(part)) != total:
        raise UserError(f"downloading {url} stopped at {got} of {total} bytes: run again to resume")
    os.replace(part, path)

def squad_articles(path: str) -> list:
    """Per article of an official SQuAD v1.1 file, its questions in T5's format (text as is)."""
    with open(path, encoding="utf-8") as f:
        return [[dict(source=f"question: {q['question']} context: {p['context']}",
                      target=q["answers"][0]["text"], answers=[a["text"] for a in q["answers"]],
                      title=art["title"]) for p in art["paragraphs"] for q in p["qas"]]
                for art in json.load(f)["data"]]

def convert_squad(cfg: DataConfig) -> list:
    """squad/{train,validation,test}.jsonl: validation is every question of 12 train articles
    (seed 0), train squad_train of the rest, test the official dev set (the paper reports on it)."""
    folder = os.path.join(cfg.out, "squad")
    train, dev = (squad_articles(f"{folder}/{n}-v1.1.json") for n in ("train", "dev"))
    held = set((rng := random.Random(0)).sample(range(len(train)), 12))
    rest = [q for i, art in enumerate(train) if i not in held for q in art]
    splits = dict(train=rng.sample(rest, min(cfg.squad_train, len(rest))) if cfg.squad_train
                  else rest, validation=[q for i in sorted(held) for q in train[i]],
                  test=[q for art in dev for q in art])
    for split, rows in splits.items():
        config.atomic_write(f"{folder}/{split}.jsonl",
                            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return [f"squad/{split}.jsonl" for split in splits]

def convert_natural(cfg: DataConfig) -> list:
    """natural_text/{train,validation}.txt: a C4 shard's first documents, up to natural_mb MB (a
    25th of it for validation), separated by blank lines as tasks.py's NaturalText reads them."""
    for split, (_, rel) in zip(("train", "validation"), SOURCES["natural_text"]):
        limit, docs, size = cfg.natural_mb * 1e6 / (1 if split == "train" else 25), [], 0
        with gzip.open(os.path.join(cfg.out, rel), "rt", encoding="utf-8") as f:
            for line in f:
                doc = re.sub(r"\n\s*\n", "\n", json.loads(line)["text"].strip())  # no blank lines
                if (size := size + len(doc.encode()) + 2) > limit:
                    break
                docs.append(doc)
        config.atomic_write(f"{cfg.out}/natural_text/{split}.txt", "\n\n".join(docs) + "\n")
    return [f"natural_text/{split}.txt" for split in ("train", "validation")]

def main(argv) -> None:
    cfg = config.parse(DataConfig, argv, doc=__doc__)
    for t in (tasks := [t for t in cfg.tasks.split(",") if t]):
        config.check_choice("tasks", t, list(SOURCES))
    manifest_path = os.path.join(cfg.out, "MANIFEST.json")
    manifest = json.loads(Path(manifest_path).read_text()) if os.path.exists(manifest_path) else {}
    for task in tasks:
        for url, rel in SOURCES[task]:  # copied from --from_dir, else downloaded unless in place
            path, src = (os.path.join(d, rel) for d in (cfg.out, os.path.expanduser(cfg.from_dir)))
            if cfg.from_dir and not os.path.isfile(src):
                raise UserError(f"--from_dir: {src} not found (get it from {url})")
            if cfg.from_dir and not (os.path.exists(path) and os.path.samefile(src, path)):
                config.atomic_write(path, lambda tmp: shutil.copyfile(src, tmp))
            elif not cfg.from_dir and not os.path.exists(path):  # a partial one is still .part
                download(url, path)
        try:
            made = (convert_squad(cfg) if task == "squad" else
                    convert_natural(cfg) if task == "natural_text" else [])
        except (ValueError, KeyError, IndexError, TypeError, EOFError, gzip.BadGzipFile) as e:
            raise UserError(f"converting {task} failed ({type(e).__name__}: {e}): a file in "
                            f"{cfg.out}/{task}/ is damaged or not the original one") from None
        urls = {rel: url for url, rel in SOURCES[task]}
        for rel in [*urls, *made]:
            with open(os.path.join(cfg.out, rel), "rb") as f:
                sha, size = hashlib.file_digest(f, "sha256").hexdigest(), f.tell()
            manifest[rel] = dict(source=urls.get(rel, "data.py"), bytes=size, sha256=sha)
            print(f"{rel}: {size / 1e6:.1f} MB, sha256 {sha[:12]}...")
        config.write_json(manifest_path, manifest)  # after each task: a failure keeps the others

if __name__ == "__main__":
    config.main(main)
