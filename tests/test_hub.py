"""Hub weights against a hub server on 127.0.0.1 that this test starts (HF_ENDPOINT).

The server answers huggingface_hub's requests as the hub does (`/{repo}/resolve/{revision}/
{file}`: HEAD and GET, X-Repo-Commit, ETag, X-Linked-Etag/X-Linked-Size for large files, the
X-Error-Code of a missing repository, revision or file), from repositories made here: a narrow
VGG in a model.safetensors and a timm config.json. Checked: download, cache reuse, revision
pinning, offline mode, a corrupted file refused, a stalled server bounded by the timeout, and
`vgg_flax.load("hf-hub:...")` / `vgg_flax.pretrained(...)` end to end with timm's preprocessing,
`vgg_flax.nnx.create_model(..., pretrained=...)` against them, and the hub examples of
docs/weights.md and docs/nnx.md as written.
"""

import hashlib
import http.server
import json
import os
import re
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from seeded import model_variables

import vgg_flax
from vgg_flax.formats.safetensors import write_safetensors
from vgg_flax.weights import hub
from vgg_flax.weights.fetching import DownloadError

REPO = "someone/vgg-tiny"
COMMITS = ("a" * 40, "b" * 40)  # the older and the newer commit; main is the newer
NARROW = dict(width=0.125, head_width=32, num_classes=5)
PRETRAINED_CFG = {
    "input_size": [3, 32, 32],
    "crop_pct": 0.8,
    "interpolation": "bicubic",
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.25, 0.3],
    "num_classes": 5,
}


def _weights(seed: int, folder) -> tuple[bytes, dict]:
    model = vgg_flax.create_model("A", **NARROW)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32) * 0.3, shapes)
    flat = {
        f"params/{layer}/{name}": value
        for layer, arrays in params["params"].items()
        for name, value in arrays.items()
    }
    path = folder / f"{seed}.safetensors"
    write_safetensors(path, flat)
    return path.read_bytes(), params


class _Hub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, repos):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos  # repo -> commit -> file -> bytes; "main" -> commit
        self.mode = "ok"  # "ok", "stall" (no answer), "stall_body", "corrupt"
        self.requests: list[tuple[str, str]] = []
        self.release = threading.Event()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body):
        server = self.server
        if "/resolve/" in self.path:  # (huggingface_hub also asks for its agent registry)
            server.requests.append((self.command, self.path))
        if server.mode == "stall":
            server.release.wait(30)
            return
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        repo = server.repos.get(match[1]) if match else None
        if repo is None:
            return self._error("RepoNotFound")
        commit = repo.get(match[2]) if match[2] == "main" else match[2]
        if commit not in repo:
            return self._error("RevisionNotFound")
        data = repo[commit].get(match[3])
        if data is None:
            return self._error("EntryNotFound", commit)
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", str(len(data)))
        if match[3].endswith(".safetensors"):  # an LFS file: named by its SHA-256
            digest = hashlib.sha256(data).hexdigest()
            self.send_header("X-Linked-Etag", f'"{digest}"')
            self.send_header("X-Linked-Size", str(len(data)))
        else:  # a git file: named by its git blob hash
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            self.send_header("ETag", f'"{blob}"')
        self.end_headers()
        if not body:
            return
        if server.mode == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 1])
        if server.mode == "stall_body":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            server.release.wait(30)
            return
        self.wfile.write(data)

    def _error(self, code, commit=None):
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()


# The repositories docs/weights.md's example names, served here with narrow nets of theirs.
DOCS_REPOS = {"timm/vgg16.tv_in1k": "vgg16", "timm/vgg16_bn.tv_in1k": "vgg16_bn"}


def _saved_folder(arch: str, folder) -> dict:
    """The files of a hub repository that vgg_flax.save wrote for a narrow `arch`.

    Seeded random variables drawn with numpy from the init's shapes (`seeded`: no init to run op
    by op).
    """
    model = vgg_flax.create_model(arch, **NARROW)
    variables = model_variables(model)
    vgg_flax.save(folder, model, variables, format="safetensors", layout="vgg-flax")
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    config = json.dumps({"architecture": "vgg11", "pretrained_cfg": PRETRAINED_CFG}).encode()
    folder = tmp_path_factory.mktemp("repo")
    (old, old_params), (new, new_params) = _weights(1, folder), _weights(2, folder)
    files = {
        COMMITS[0]: {"config.json": config, "model.safetensors": old},
        COMMITS[1]: {"config.json": config, "model.safetensors": new},
        "main": COMMITS[1],
    }
    served = {REPO: files}
    for name, arch in DOCS_REPOS.items():
        saved = _saved_folder(arch, folder / arch)
        served[name] = {COMMITS[1]: saved, "main": COMMITS[1]}
    return served, {COMMITS[0]: old_params, COMMITS[1]: new_params}


@pytest.fixture
def server(repos, tmp_path, monkeypatch):
    hub_server = _Hub(repos[0])
    thread = threading.Thread(target=hub_server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("VGG_FLAX_DOWNLOAD_TIMEOUT", "5")
    yield hub_server
    hub_server.release.set()
    hub_server.shutdown()
    hub_server.server_close()


def _gets(server):
    return [path for command, path in server.requests if command == "GET"]


def test_download_then_cache_then_pinned_revision(server, repos):
    files = hub.fetch(REPO)
    assert files.commit == COMMITS[1] and sorted(os.listdir(files.folder)) == [
        "config.json",
        "model.safetensors",
    ]
    data = repos[0][REPO][COMMITS[1]]["model.safetensors"]
    assert files.source.sha256 == hashlib.sha256(data).hexdigest()
    assert files.source.size == len(data) and COMMITS[1] in files.source.url
    assert len(_gets(server)) == 2
    # Again: the cache is used (the server is only asked whether main moved).
    assert hub.fetch(REPO).folder == files.folder and len(_gets(server)) == 2
    # A pinned older commit: its own files; asked again, no request at all.
    pinned = hub.fetch(REPO, revision=COMMITS[0])
    assert pinned.commit == COMMITS[0] and pinned.folder != files.folder
    count = len(server.requests)
    assert hub.fetch(REPO, revision=COMMITS[0]).folder == pinned.folder
    assert len(server.requests) == count


def test_offline_uses_the_cache_and_names_what_is_missing(server, monkeypatch):
    files = hub.fetch(REPO)
    server.mode = "stall"  # offline must not even ask
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    count = len(server.requests)
    assert hub.fetch(REPO).folder == files.folder
    with pytest.raises(DownloadError) as error:
        hub.fetch(REPO, revision=COMMITS[0])
    assert len(server.requests) == count
    message = str(error.value)
    assert REPO in message and os.environ["HF_HUB_CACHE"] in message
    assert "HF_HUB_OFFLINE" in message and f"hf download {REPO}" in message


def test_a_corrupted_download_is_refused_and_removed(server):
    server.mode = "corrupt"
    with pytest.raises(ValueError, match="is corrupt: its hash is") as error:
        hub.fetch(REPO)
    assert "it was removed" in str(error.value)
    server.mode = "ok"
    assert hub.fetch(REPO).commit == COMMITS[1]  # downloaded anew, now whole


def test_a_corrupted_cached_file_is_refused(server):
    files = hub.fetch(REPO, revision=COMMITS[0])
    blob = os.path.realpath(os.path.join(files.folder, "model.safetensors"))
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as file:
        file.seek(100)
        file.write(b"\xff")
    with pytest.raises(ValueError, match="is corrupt"):
        hub.fetch(REPO, revision=COMMITS[0])


def test_a_file_over_the_size_limit_is_refused_before_it_downloads(server, monkeypatch):
    monkeypatch.setattr(hub, "MAX_FILE_BYTES", 1000)  # the config fits, the weights do not
    with pytest.raises(DownloadError, match="announces [0-9]+ bytes, more than the 1000 allowed"):
        hub.fetch(REPO)
    assert not any(path.endswith("model.safetensors") for path in _gets(server))
    cached = [name for _, _, names in os.walk(os.environ["HF_HUB_CACHE"]) for name in names]
    assert "model.safetensors" not in cached


def test_a_stalled_server_is_given_up_on(server, monkeypatch):
    server.mode = "stall"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=f"cannot reach {server.url}") as error:
        hub.fetch(REPO, timeout=0.3)
    assert time.monotonic() - start < 5
    assert "hf download" in str(error.value)
    # A body that stops half-way: huggingface_hub resumes it 5 times, each bounded too (its
    # 1 s pauses between attempts skipped here).
    from huggingface_hub import file_download

    monkeypatch.setattr(file_download.time, "sleep", lambda seconds: None)
    server.mode = "stall_body"
    start = time.monotonic()
    with pytest.raises(DownloadError, match="failed"):
        hub.fetch(REPO, timeout=0.3)
    assert time.monotonic() - start < 6 * 0.3 + 5


def test_missing_repository_revision_and_file(server, repos):
    with pytest.raises(ValueError, match="no repository someone/nothing"):
        hub.fetch("someone/nothing")
    with pytest.raises(ValueError, match="revision " + "c" * 40):
        hub.fetch(REPO, revision="c" * 40)
    del repos[0][REPO][COMMITS[1]]["config.json"]
    try:
        with pytest.raises(ValueError, match="has no config.json"):
            hub.fetch(REPO)
    finally:
        repos[0][REPO][COMMITS[1]]["config.json"] = repos[0][REPO][COMMITS[0]]["config.json"]


def test_load_and_pretrained_from_the_hub(server, repos):
    loaded = vgg_flax.load(f"hf-hub:{REPO}", revision=COMMITS[0])
    params = repos[1][COMMITS[0]]["params"]
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded.variables["params"], params)))
    preset = loaded.usage.preprocessing  # from timm's pretrained_cfg
    assert (preset.mean, preset.std, preset.crop, preset.resize) == (
        (0.5, 0.4, 0.3),
        (0.2, 0.25, 0.3),
        32,
        40,
    )
    assert preset.interpolation == "bicubic" and loaded.usage.name == REPO
    assert loaded.usage.source.url.endswith(f"{COMMITS[0]}/model.safetensors")
    assert loaded.model.num_classes == 5 and loaded.model.head_width == 32
    model, variables, usage = vgg_flax.pretrained(REPO, num_classes=3)
    assert model.num_classes == 3 and variables["params"]["fc8"]["bias"].shape == (3,)
    assert usage.architecture["num_classes"] == 3


def test_nnx_create_model_with_hub_weights(server):
    """vgg_flax.nnx.create_model(..., pretrained=...) is vgg_flax.pretrained's net, in NNX."""
    from flax import nnx

    import vgg_flax.nnx

    name = "timm/vgg16_bn.tv_in1k"
    images = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    for classes, seed in ((None, 0), (3, 7)):  # the weights' head; a fresh one from "params"
        model = vgg_flax.nnx.create_model(
            "vgg16_bn", pretrained=name, num_classes=classes, rngs=nnx.Rngs(params=seed)
        )
        key = nnx.Rngs(params=seed).params()
        linen, variables, _ = vgg_flax.pretrained(name, num_classes=classes, key=key)
        assert model.linen == linen and model.fc8["bias"].shape == (classes or 5,)
        np.testing.assert_array_equal(model(images), linen.apply(variables, images))
    # A path (here the cached snapshot) is vgg_flax.load's; no arch: the weights fix it.
    folder = hub.fetch("timm/vgg16.tv_in1k").folder
    model = vgg_flax.nnx.create_model(pretrained=folder, rngs=nnx.Rngs(0))
    linen, variables, _ = vgg_flax.load(folder)
    assert model.linen == linen
    np.testing.assert_array_equal(model(images), linen.apply(variables, images))
    with pytest.raises(ValueError, match=r"holds VGG D \(batch_norm=True\), not 'vgg16'.*"
                       r"pass arch='vgg16_bn'"):  # fmt: skip
        vgg_flax.nnx.create_model("vgg16", pretrained=name, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width cannot be set with pretrained weights"):
        vgg_flax.nnx.create_model(pretrained=folder, width=0.5, rngs=nnx.Rngs(0))


def _check_weights_page(ns: dict) -> None:
    model, usage = ns["model"], ns["usage"]  # the pretrained line: vgg16_bn
    assert model.arch == "D" and model.batch_norm and usage.name == "timm/vgg16_bn.tv_in1k"
    assert ns["nnx_model"].linen == model


def _check_nnx_page(ns: dict) -> None:
    model, usage = ns["model"], ns["usage"]  # the load line: vgg16
    assert model.linen.arch == "D" and not model.linen.batch_norm
    assert usage.name == "timm/vgg16.tv_in1k"


# (page, heading of its section) -> what its first Python block there must leave.
DOCS_EXAMPLES = {
    ("weights.md", "## The Hugging Face hub"): _check_weights_page,
    ("nnx.md", "## Pretrained and saved weights"): _check_nnx_page,
}


@pytest.mark.parametrize("page, heading", DOCS_EXAMPLES, ids=[p for p, _ in DOCS_EXAMPLES])
def test_the_docs_hub_examples_run_as_written(server, page, heading):
    text = (Path(__file__).resolve().parents[1] / "docs" / page).read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert all(f'"{name}' in block or f"hf-hub:{name}" in block for name in DOCS_REPOS)
    namespace: dict = {}
    exec(compile(block, f"docs/{page} ({heading[3:]})", "exec"), namespace)
    DOCS_EXAMPLES[page, heading](namespace)
    assert "timm/vgg16.tv_in1k" in {
        path.split("/resolve/")[0].strip("/") for _, path in server.requests
    }
