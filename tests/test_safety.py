"""Safety: no code runs when loading, files stay in the temporary directory, the server listens only where told.

Checkpoint loading (model folders) is covered by test_checkpoint.py::test_pickle_checkpoint_refused_never_unpickled
and data loading by test_data.py::test_npy_missing_or_unreadable_file (object arrays need pickle: refused);
this file adds the training checkpoint, a scan of the code for unpickling calls, the server's files,
and its listening sockets.
"""
from __future__ import annotations

import json
import pickle
import re
import socket
import tempfile
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

import app
from ddpm import interactive as ix
from helpers import PROJECT

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

# --- nothing is unpickled ----------------------------------------------------------------------------
UNSAFE = re.compile(r"torch\.load\(|pickle\.loads?\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False|"
                    r"(?<![.\w])eval\(|(?<![.\w])exec\(|\bdill\b|joblib\.load")


def test_no_unpickling_anywhere_in_the_code():
    sources = [PROJECT / "app.py", *sorted((PROJECT / "ddpm").glob("*.py"))]
    assert len(sources) > 5
    hits = [f"{p.name}:{i}: {line.strip()}" for p in sources
            for i, line in enumerate(p.read_text().splitlines(), 1) if UNSAFE.search(line)]
    assert not hits, "code that can execute a file's contents: " + "; ".join(hits)


class _Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_training_checkpoint_that_is_a_pickle_is_refused(tmp_path):
    import ddpm.train as train

    _Exploit.marker = tmp_path / "pwned"
    path = tmp_path / train.CHECKPOINT
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(train.TrainingError, match="cannot resume from this checkpoint"):
        train.load_checkpoint(path)
    assert not _Exploit.marker.exists()


# --- the served app --------------------------------------------------------------------------------
def inside(path, folder) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_uploads_and_downloads_stay_in_the_temp_dir(recording_server, tmp_path):
    import gradio.utils

    rec, demo, port, url = recording_server
    upload_dir = gradio.utils.get_upload_folder()
    marker = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(marker).save(tmp_path / "mine.png")
    before = set(ix.OUTPUT_DIR.rglob("*")) if ix.OUTPUT_DIR.exists() else set()
    client = Client(url, verbose=False, analytics_enabled=False)
    client.predict(handle_file(str(tmp_path / "mine.png")), t=5, api_name="/forward_upload")
    assert len(rec.uploads) == 1 and inside(rec.uploads[0], upload_dir), (rec.uploads, upload_dir)
    assert inside(upload_dir, tempfile.gettempdir())
    content = (tmp_path / "mine.png").read_bytes()
    assert Path(rec.uploads[0]).read_bytes() == content
    # the app never copies an upload anywhere: no new file in its download folder holds those bytes
    new = [p for p in ix.OUTPUT_DIR.rglob("*") if p not in before and p.is_file()]
    assert new and all(p.read_bytes() != content for p in new)
    # what the app writes for download (sheets, GIFs) lives in the temporary directory too
    sheet = list(rec.generate("hero", 1, "dpm++", 2, 0.0, 0, False))[-1][1]
    assert inside(sheet, tempfile.gettempdir()) and inside(ix.OUTPUT_DIR, tempfile.gettempdir())


@pytest.mark.parametrize("target", ["/etc/passwd", "app.py", "model config", "model weights"])
def test_api_cannot_read_server_files(recording_server, tiny_model_dir, target):
    rec, demo, port, url = recording_server
    path = {"/etc/passwd": "/etc/passwd", "app.py": str(PROJECT / "app.py"),
            "model config": str(tiny_model_dir / "config.json"),
            "model weights": str(tiny_model_dir / "model.safetensors")}[target]
    r = httpx.get(f"{url}gradio_api/file={path}", timeout=30)
    assert r.status_code == 403 and "not allowed" in r.text, (r.status_code, r.text[:200])


def test_api_refuses_a_server_path_as_an_upload(recording_server, tmp_path):
    """A request naming a file on the server (not one it uploaded) as its input is refused before the handler.

    Sent raw: gradio_client would upload a local path it is given, which is not the attack."""
    rec, demo, port, url = recording_server
    outside = tmp_path / "secret.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(outside)
    n = len(rec.uploads)
    body = json.dumps({"data": [{"path": str(outside), "meta": {"_type": "gradio.FileData"}}, 5, 0, False, "hero"]})
    endpoint = f"{url}gradio_api/call/forward_upload"
    event_id = httpx.post(endpoint, content=body, headers={"content-type": "application/json"}).json()["event_id"]
    events = re.findall(r"event: (\w+)\ndata: (.*)", httpx.get(f"{endpoint}/{event_id}", timeout=60).text)
    assert events[-1][0] == "error", events
    assert len(rec.uploads) == n, "the handler was called with a path outside the upload folder"
    # the same request naming a file this client did upload goes through
    with open(outside, "rb") as f:
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("secret.png", f, "image/png")}).json()[0]
    body = body.replace(json.dumps(str(outside)), json.dumps(uploaded))
    event_id = httpx.post(endpoint, content=body, headers={"content-type": "application/json"}).json()["event_id"]
    events = re.findall(r"event: (\w+)\ndata: (.*)", httpx.get(f"{endpoint}/{event_id}", timeout=60).text)
    assert events[-1][0] == "complete" and len(rec.uploads) == n + 1, events[-1]


def listening(pid: int, port: int) -> list[str]:
    proc = psutil.Process(pid)
    connections = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6 has only the latter
    return [c.laddr.ip for c in connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def test_server_listens_on_loopback_only(recording_server):
    rec, demo, port, url = recording_server
    import os

    addresses = listening(os.getpid(), port)
    assert addresses == ["127.0.0.1"], addresses
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:  # the same port on the machine's other addresses: nobody answers
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
            pass
    assert httpx.get(url, timeout=30).status_code == 200


def test_main_listens_on_127_0_0_1_by_default(tiny_model_dir, monkeypatch):
    import gradio as gr

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    assert app.main(["--model", str(tiny_model_dir), "--device", "cpu", "--port", "7999"]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7999
    assert "share" not in seen or not seen["share"]


# --- resources held per visitor are bounded ------------------------------------------------------------
def test_temp_files_and_sessions_are_bounded(recording_server):
    rec, demo, port, url = recording_server
    frequency, age = demo.delete_cache  # Gradio deletes the files it wrote for us once they are this old
    assert 0 < frequency <= 3600 and 0 < age <= 6 * 3600
    assert demo.state_holder.capacity <= 1000  # Gradio's default of 10,000 sessions is ~2 GB of bookkeeping
    ttl = [b.time_to_live for b in demo.blocks.values() if isinstance(b, app.gr.State) and b.time_to_live]
    assert ttl and min(ttl) <= 6 * 3600  # the reverse-process run (up to MAX_FRAMES frames) expires; the
    # other states hold one 16x16 sprite each (768 bytes), bounded by the session capacity
    assert ix.MAX_FRAMES <= 200 and ix.OUTPUT_MAX_AGE_S <= 6 * 3600
