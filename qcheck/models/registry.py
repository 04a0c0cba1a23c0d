"""Model names -> ModelSpecs: which model a name means and where its files are.

A name is one of: an embedded zoo model (`zoo-...`, weights in qcheck/models/zoo/<name>/), a local
directory written by `save_pretrained`, or a Hugging Face id (any id of a TransformerBridge-
supported decoder; the study's are gpt2, gpt2-xl and pythia-410m/1.4b/2.8b). `resolve` is cheap
(no torch, no weights) so the plugin can reject a bad name at collection time with one clear
error. Loading the weights is qcheck/models/load.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from qcheck.models.checks import check_model_dir
from qcheck.models.errors import ModelNotAvailable

ZOO_DIR = Path(__file__).parent / "zoo"

ModelKind = Literal["zoo", "local", "hub"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ModelSpec:
    name: str          # as the user wrote it; used in test ids
    kind: ModelKind
    location: str      # zoo/local: a directory; hub: the repo id


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec


def zoo_names() -> list[str]:
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "model.safetensors").is_file())


def _register_zoo() -> None:
    for name in zoo_names():
        register(ModelSpec(name, "zoo", str(ZOO_DIR / name)))


_register_zoo()


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_has_local_copy(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def how_to_provide(name: str) -> str:
    return (f"provide it one of three ways: (1) on a machine with network access run "
            f"`python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{name}').save_pretrained('DIR')\"` and pass "
            f"`--qcheck-model DIR`; (2) copy a Hugging Face cache that holds '{name}' into "
            f"HF_HOME; (3) use an embedded model: {', '.join(zoo_names())}")


def resolve(name: str, *, probe_hub: bool = True) -> ModelSpec:
    """Name -> ModelSpec, or ModelNotAvailable naming the model and how to provide it.

    Hub ids are checked against the local HF cache; with HF_HUB_OFFLINE=1 a missing copy fails
    at once, otherwise `probe_hub` fetches config.json so a bad id fails here, not in 100 tests.
    """
    if name in _REGISTRY and _REGISTRY[name].kind == "zoo":
        return _REGISTRY[name]
    if name.startswith("zoo-"):
        raise ModelNotAvailable(f"unknown zoo model {name!r}; the embedded models are: "
                                f"{', '.join(zoo_names())}")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"model directory {name!r} has no config.json; write it with "
                                    f"`model.save_pretrained({name!r})`")
        check_model_dir(path)  # headers only: a truncated or pickled-only directory fails here
        return ModelSpec(name, "local", str(path.resolve()))
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelNotAvailable(f"model {name!r} is neither a zoo name, an existing directory nor "
                                f"a Hugging Face id; {how_to_provide(name)}")
    spec = _REGISTRY.get(name, ModelSpec(name, "hub", name))
    if hub_has_local_copy(name):
        return spec
    if hub_offline():
        raise ModelNotAvailable(f"model {name!r} has no local weights and the Hugging Face hub is "
                                f"off (HF_HUB_OFFLINE=1); {how_to_provide(name)}")
    if probe_hub:
        from huggingface_hub import hf_hub_download

        try:
            hf_hub_download(name, "config.json")
        except Exception as error:  # network, auth, 404: all mean "not loadable here"
            raise ModelNotAvailable(f"model {name!r} could not be fetched from the Hugging Face hub "
                                    f"({type(error).__name__}); {how_to_provide(name)}. "
                                    f"Set HF_HUB_OFFLINE=1 to fail fast.") from None
    return spec
