"""data.py: converters on small fixtures in each original format, and the download loop (resume
with Range after a broken connection, manifest sha256, a 404) against a local HTTP server."""
import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import data
from config import UserError
from finetune import load_split


class Handler(BaseHTTPRequestHandler):
    """Serves FILES; a path in BREAK gets only half of what it asks for, once, then a closed
    connection. Honours `Range: bytes=N-` with a 206."""
    FILES, BREAK, RANGES = {}, set(), []

    def do_GET(self):
        body = self.FILES.get(self.path)
        if body is None:
            return self.send_error(404)
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(m.group(1)) if m else 0
        self.RANGES.append((self.path, start))
        self.send_response(206 if m else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        if self.path in self.BREAK:
            self.BREAK.discard(self.path)
            rest = rest[:len(rest) // 2]
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Handler.FILES.clear(), Handler.BREAK.clear(), Handler.RANGES.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def tsv(n):
    return "".join(f"input {i}\ttarget {i}\n" for i in range(n)).encode()


def test_download_resumes_after_a_broken_connection(server, tmp_path, monkeypatch):
    files = {f"/mtop/{s}.txt": tsv(5000 + i) for i, s in enumerate(("train", "valid", "test"))}
    Handler.FILES.update(files)
    Handler.BREAK.add("/mtop/train.txt")
    monkeypatch.setitem(data.SOURCES, "mtop", [(server + p, p[1:]) for p in files])
    argv = ["--tasks=mtop", f"--out={tmp_path}"]
    with pytest.raises(UserError, match="stopped at .* run again to resume"):
        data.main(argv)
    part = tmp_path / "mtop/train.txt.part"
    assert 0 < part.stat().st_size < len(files["/mtop/train.txt"])
    assert not (tmp_path / "mtop/train.txt").exists()  # nothing in place until complete
    data.main(argv)
    half = len(files["/mtop/train.txt"]) // 2
    assert [r for r in Handler.RANGES if r[1]] == [("/mtop/train.txt", half)]  # only the rest
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    for p, body in files.items():
        assert (tmp_path / p[1:]).read_bytes() == body
        assert manifest[p[1:]] == dict(source=server + p, bytes=len(body),
                                       sha256=hashlib.sha256(body).hexdigest())
    assert not part.exists()
    rows = load_split(str(tmp_path), "mtop", "validation")  # finetune.py reads valid.txt as is
    assert len(rows) == 5001 and rows[3] == dict(source="input 3", target="target 3",
                                                 answers=["target 3"])
    Handler.RANGES.clear()
    data.main(argv)  # everything in place: nothing is fetched again
    assert Handler.RANGES == []


def test_404_names_the_url(server, tmp_path, monkeypatch):
    url = server + "/missing/train.txt"
    monkeypatch.setitem(data.SOURCES, "webqsp", [(url, "webqsp/train.txt")])
    with pytest.raises(UserError, match=re.escape(url) + r" failed \(HTTP Error 404.*--from_dir"):
        data.main(["--tasks=webqsp", f"--out={tmp_path}"])


def squad_file(path, n_articles):
    arts = [dict(title=f"t{a}", paragraphs=[dict(context=f"context {a} ", qas=[
        dict(question=f"q{a}.{q}?", answers=[dict(text=f"a{a}.{q}", answer_start=0),
                                             dict(text=" alt ", answer_start=1)])
        for q in range(3)])]) for a in range(n_articles)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(version="1.1", data=arts)))


def test_squad_conversion(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    squad_file(src / "squad/train-v1.1.json", 15)
    squad_file(src / "squad/dev-v1.1.json", 2)
    data.main(["--tasks=squad", f"--from_dir={src}", f"--out={out}", "--squad_train=5"])
    rows = {s: [json.loads(line) for line in open(out / f"squad/{s}.jsonl")]
            for s in ("train", "validation", "test")}
    assert [len(rows[s]) for s in rows] == [5, 12 * 3, 2 * 3]
    assert rows["test"][1] == dict(source="question: q0.1? context: context 0 ", target="a0.1",
                                   answers=["a0.1", " alt "], title="t0")  # text kept as is
    held = {r["title"] for r in rows["validation"]}
    assert len(held) == 12 and not held & {r["title"] for r in rows["train"]}
    data.main(["--tasks=squad", f"--from_dir={src}", f"--out={out}", "--squad_train=0"])
    assert sum(1 for _ in open(out / "squad/train.jsonl")) == 3 * 3  # 0 keeps all of the rest
    assert len(load_split(str(out), "squad", "test")[0]["answers"]) == 2
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["squad/train.jsonl"]["sha256"] == hashlib.sha256(
        (out / "squad/train.jsonl").read_bytes()).hexdigest()


def test_c4_conversion_caps_the_text(tmp_path):
    src = tmp_path / "src/natural_text"
    src.mkdir(parents=True)
    docs = [f"document {i}\n\nsecond paragraph {i}\n" + "x" * 80 for i in range(100)]
    for _, rel in data.SOURCES["natural_text"]:
        with gzip.open(tmp_path / "src" / rel, "wt") as f:
            f.writelines(json.dumps(dict(text=d, url="u")) + "\n" for d in docs)
    data.main(["--tasks=natural_text", f"--from_dir={tmp_path / 'src'}", f"--out={tmp_path}",
               "--natural_mb=0.005"])
    train = (tmp_path / "natural_text/train.txt").read_text()
    got = train.strip().split("\n\n")  # tasks.py's NaturalText: documents between blank lines
    assert got[:2] == ["document 0\nsecond paragraph 0\n" + "x" * 80,
                       "document 1\nsecond paragraph 1\n" + "x" * 80]
    assert 5000 - len(docs[-1]) - 2 < len(train.encode()) <= 5000
    val = (tmp_path / "natural_text/validation.txt").read_text().strip().split("\n\n")
    assert len(val) == 1  # a 25th: 200 bytes, room for one document


def test_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="--tasks='nope' is not one of"):
        data.main(["--tasks=nope"])
    with pytest.raises(UserError, match=r"--from_dir: .*squad/train-v1.1.json not found"):
        data.main(["--tasks=squad", f"--from_dir={tmp_path}", f"--out={tmp_path / 'o'}"])
    (tmp_path / "squad").mkdir()
    for name in ("train", "dev"):
        (tmp_path / f"squad/{name}-v1.1.json").write_text('{"data": [{"title": 1}]}')
    with pytest.raises(UserError, match="converting squad failed .*KeyError"):
        data.main(["--tasks=squad", f"--from_dir={tmp_path}", f"--out={tmp_path}"])
    with pytest.raises(SystemExit):
        data.main(["-h"])
    assert "--natural_mb=25.0" in capsys.readouterr().out
