"""The packages' layers: imports point one way, and importing changes nothing elsewhere.

Layers, lowest first: espnet_mamba.io and espnet_mamba.espnet_compat (nothing of ours),
nn, encoder, ssl and ssamba (apart), registry, s3prl_upstream, bin, analysis. A module imports only from its own package or
a lower layer; that is read from the source, imports inside functions included, and
then checked again in fresh interpreters through ``sys.modules``.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PACKAGES = ("espnet_mamba", "s3prl_upstream", "analysis")
# (module prefix, layer, group); the first matching prefix wins
LAYERS = (
    ("espnet_mamba.io", 0, "io"),
    ("espnet_mamba.espnet_compat", 0, "compat"),
    ("espnet_mamba.nn", 1, "nn"),
    ("espnet_mamba.encoder", 2, "encoder"),
    ("espnet_mamba.ssl", 3, "ssl"),
    ("espnet_mamba.ssamba", 3, "ssamba"),
    ("espnet_mamba.registry", 4, "registry"),
    ("s3prl_upstream", 5, "s3prl_upstream"),
    ("espnet_mamba.bin", 6, "bin"),
    ("analysis", 7, "analysis"),
)


def _layer(module: str):
    for prefix, layer, group in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer, group
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> Dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def _imports(path: Path, modules: Set[str]) -> Set[str]:
    """Project modules that ``path`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports that module, `from module import name` the module
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _project_modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert [m for m in _project_modules() if m not in ("espnet_mamba",) and _layer(m) is None] == []


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        if module == "espnet_mamba":
            continue
        layer, group = _layer(module)
        for target in targets:
            if target == "espnet_mamba":
                continue
            target_layer, target_group = _layer(target)
            if target_group != group and target_layer >= layer:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_cycle():
    graph = _graph()
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


# ------------------------------------------------------------ fresh interpreters
_REPORT = (
    "import json, sys\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
    "('espnet_mamba', 's3prl_upstream', 'analysis'))))\n"
)


def _fresh(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(process: subprocess.Popen):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "imported, forbidden",
    [
        ("espnet_mamba.nn", ("espnet_mamba.ssl", "espnet_mamba.ssamba", "espnet_mamba.encoder",
                             "espnet_mamba.registry", "espnet_mamba.bin", "s3prl_upstream", "analysis")),
        ("espnet_mamba.ssl.finetune, espnet_mamba.ssl.kmeans",
         ("espnet_mamba.ssamba", "espnet_mamba.registry", "espnet_mamba.bin", "s3prl_upstream", "analysis")),
        ("espnet_mamba.ssamba", ("espnet_mamba.ssl", "espnet_mamba.registry", "espnet_mamba.bin",
                                 "s3prl_upstream", "analysis")),
        ("espnet_mamba.io, espnet_mamba.espnet_compat, espnet_mamba.registry, s3prl_upstream",
         ("espnet_mamba.nn", "espnet_mamba.ssl", "espnet_mamba.ssamba", "espnet_mamba.encoder",
          "espnet_mamba.bin", "s3prl_upstream.expert", "analysis")),
    ],
)
def test_a_package_pulls_in_no_higher_layer(imported, forbidden):
    loaded = _result(_fresh(f"import {imported}\n" + _REPORT))
    assert [m for m in loaded if m.startswith(forbidden)] == []


def test_registration_happens_when_called_and_nothing_reaches_the_network():
    """Importing s3prl_upstream leaves s3prl.hub as it is; an entry point registers both
    our ESPnet choices and the S3PRL upstreams; no import tries the network (g2p_en's
    NLTK data is installed by tools/install.sh)."""
    code = (
        "import json\n"
        "from network_guard import block_network\n"
        "attempts = []\n"
        "block_network(attempts)\n"
        "import s3prl.hub\n"
        "from espnet2.tasks import asr, ssl\n"
        "before = dict(vars(s3prl.hub))\n"
        "import s3prl_upstream\n"
        "untouched = dict(vars(s3prl.hub)) == before and 'conbimamba' not in asr.encoder_choices.classes\n"
        "import espnet_mamba.bin.asr_train\n"
        "print(json.dumps({'untouched': untouched, 'attempts': [str(a) for a in attempts],\n"
        "    'hub': [n for n in s3prl_upstream.UPSTREAM_NAMES if callable(s3prl.hub.__dict__.get(n))],\n"
        "    'asr': sorted({'conbimamba', 'hubert_finetune'} & set(asr.encoder_choices.classes)),\n"
        "    's3prl_frontend': 's3prl' in asr.frontend_choices.classes,\n"
        "    'ssl': 'conbimamba' in ssl.encoder_choices.classes}))\n"
    )
    result = _result(_fresh(code))
    assert result["untouched"] is True
    assert result["attempts"] == []
    assert result["hub"] == ["mamba_hubert_local", "transformer_hubert_local", "mamba_mi_hubert_local"]
    assert result["asr"] == ["conbimamba", "hubert_finetune"] and result["ssl"] is True
    assert result["s3prl_frontend"] is True


# ------------------------------------------------------------ espnet_compat
def test_espnet_internals_come_from_the_first_layout_that_has_them(tmp_path, monkeypatch):
    from espnet_mamba import espnet_compat

    for package, body in (("newer", "VALUE = 'newer'\n"), ("older", "VALUE = 'older'\n"),
                          ("broken", "import a_missing_dependency\n")):
        (tmp_path / package / "nets").mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "nets" / "__init__.py").write_text("")
        (tmp_path / package / "nets" / "utils.py").write_text(body)
    (tmp_path / "older" / "nets" / "only_old.py").write_text("VALUE = 'old only'\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    monkeypatch.setattr(espnet_compat, "_LEGACY_PACKAGES", ("missing_package", "newer", "older"))
    assert espnet_compat._legacy_module("nets.utils").VALUE == "newer"
    assert espnet_compat._legacy_module("nets.only_old").VALUE == "old only"
    with pytest.raises(ImportError, match="ESPnet has no module nets.nothing under missing_package or newer"):
        espnet_compat._legacy_module("nets.nothing")
    monkeypatch.setattr(espnet_compat, "_LEGACY_PACKAGES", ("missing_package.legacy", "missing_too"))
    with pytest.raises(ModuleNotFoundError, match="ESPnet is not installed .*tools/install.sh"):
        espnet_compat._legacy_module("nets.utils")
    monkeypatch.setattr(espnet_compat, "_LEGACY_PACKAGES", ("broken", "older"))
    with pytest.raises(ModuleNotFoundError, match="a_missing_dependency"):  # not hidden by the fallback
        espnet_compat._legacy_module("nets.utils")
    # the installed ESPnet: its legacy modules, whichever layout it has
    assert espnet_compat.make_pad_mask([1, 3]).tolist() == [[False, True, True], [False, False, False]]
