"""Security: no user-supplied file is ever unpickled (safetensors only), and no code shipped with
a model ever runs (trust_remote_code is never on). Proven by payloads that would leave a mark on
disk if they ran, and by a scan of qcheck's own source."""

from __future__ import annotations

import ast
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from qcheck.models.load import load_model
from qcheck.models.errors import ModelNotAvailable

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "qcheck").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])
UNPICKLERS = {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


class Payload:
    """Unpickling this creates the directory `marker`: proof that a pickle was opened."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def plant_pickle(directory: Path, marker: Path) -> None:
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))


def _keyword(call: ast.Call, name: str):
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0] if found else None


def violations(source: str, name: str) -> list[str]:
    """Unpickling, torch.load without weights_only=True, trust_remote_code other than a literal
    False, and from_pretrained without an explicit trust_remote_code=False."""
    found, tree = [], ast.parse(source, name)
    where = lambda node: f"{name}:{node.lineno}"  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where(node)} imports {m}" for m in modules if m.split(".")[0] in UNPICKLERS]
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                found.append(f"{where(node.value)} sets trust_remote_code to {ast.unparse(node.value)}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        method, owner = node.func.attr, ast.unparse(node.func.value)
        if method == "load" and owner == "torch":
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where(node)} calls torch.load without weights_only=True")
        if method == "load" and owner in ("np", "numpy") and _keyword(node, "allow_pickle") is not None:
            found.append(f"{where(node)} calls {owner}.load with allow_pickle")
        if method == "from_pretrained" and _keyword(node, "trust_remote_code") is None:
            found.append(f"{where(node)} calls {owner}.from_pretrained without trust_remote_code=False")
    return sorted(found, key=lambda v: int(v.split(":")[1].split()[0]))


def test_source_never_unpickles_and_never_trusts_remote_code():
    assert len(SOURCES) > 40
    found = [v for path in SOURCES for v in violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []
    # the scan sees what it must refuse
    bad = ("import pickle\nimport torch\ntorch.load(f)\nM.from_pretrained(x)\n"
           "M.from_pretrained(x, trust_remote_code=flag)\nnp.load(f, allow_pickle=True)\n")
    assert violations(bad, "bad.py") == [
        "bad.py:1 imports pickle", "bad.py:3 calls torch.load without weights_only=True",
        "bad.py:4 calls M.from_pretrained without trust_remote_code=False",
        "bad.py:5 sets trust_remote_code to flag", "bad.py:6 calls np.load with allow_pickle"]


def test_pickle_only_model_directory_is_refused_unopened(cli, tiny_gpt2_lm, tmp_path, tree):
    directory, marker = tmp_path / "pickled", tmp_path / "UNPICKLED"
    tiny_gpt2_lm.config.save_pretrained(directory)
    plant_pickle(directory, marker)
    before = tree(directory)
    message = cli.usage_error(f"--qcheck-model={directory}")
    assert message == (f"--qcheck-model {directory}: model directory '{directory}' has only pickled weights "
                       f"(pytorch_model.bin): qcheck loads safetensors only and never unpickles a file; write "
                       f"config and weights together with `model.save_pretrained(DIR)` (safetensors, the "
                       f"default), or convert the weights to safetensors")
    with pytest.raises(ModelNotAvailable, match="has only pickled weights"):
        load_model(str(directory))
    assert not marker.exists() and tree(directory) == before


def test_pickle_beside_safetensors_is_ignored_with_a_warning(tiny_gpt2_lm, tmp_path):
    directory, marker = tmp_path / "both", tmp_path / "UNPICKLED"
    tiny_gpt2_lm.save_pretrained(directory)
    plant_pickle(directory, marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(str(directory))
    assert f"model directory '{directory}': ignoring pytorch_model.bin (pickled; qcheck loads only the " \
           f"safetensors weights and never unpickles a file)" in [str(w.message) for w in caught]
    assert not marker.exists()
    assert all(torch.equal(loaded.hf.state_dict()[k], v) for k, v in tiny_gpt2_lm.state_dict().items())


def test_model_directory_needing_remote_code_is_refused_unrun(cli, tiny_gpt2_lm, tmp_path, tree):
    directory, marker = tmp_path / "custom", tmp_path / "CODE-RAN"
    tiny_gpt2_lm.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="my-gpt", architectures=["MyGPT"],
                  auto_map={"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyGPT"})
    (directory / "config.json").write_text(json.dumps(config))
    for module in ("configuration_my.py", "modeling_my.py"):
        (directory / module).write_text(f"import os\nos.makedirs({str(marker)!r})\n")
    before = tree(directory)
    assert cli.usage_error(f"--qcheck-model={directory}") == (
        f"--qcheck-model {directory}: model directory '{directory}': model_type 'my-gpt' needs the code its "
        f"config.json names in auto_map; qcheck never runs code shipped with a model (trust_remote_code stays "
        f"off). Use an architecture transformers ships")
    with pytest.raises(ModelNotAvailable, match="never runs code shipped with a model"):
        load_model(str(directory))
    assert not marker.exists() and tree(directory) == before
