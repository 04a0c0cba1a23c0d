"""Model names -> FP Hugging Face modules (float32, eval mode).

A name is one of: an embedded zoo model (`zoo-...`, weights in qcheck/models/zoo/<name>/), a local
directory written by `save_pretrained`, or a Hugging Face id (the study's five are registered;
any other id of a TransformerBridge-supported decoder works too). `resolve` is cheap (no torch,
no weights) so the plugin can reject a bad name at collection time with one clear error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ZOO_DIR = Path(__file__).parent / "zoo"

# The study's five models (seed/study.txt, "Scaling Study"); other hub ids resolve too.
STUDY_MODELS = ("gpt2", "gpt2-xl", "EleutherAI/pythia-410m", "EleutherAI/pythia-1.4b",
                "EleutherAI/pythia-2.8b")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelNotAvailable(LookupError):
    """A model name that cannot be loaded here; the message names the model and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    name: str          # as the user wrote it; used in test ids
    kind: str          # "zoo" | "local" | "hub"
    location: str      # zoo/local: a directory; hub: the repo id

    @property
    def is_byte_level(self) -> bool:
        """Zoo models read bytes (vocab 256, BOS = 0) and have no HF tokenizer."""
        return self.kind == "zoo"


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec


def zoo_names() -> list[str]:
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "model.safetensors").is_file())


def _register_builtins() -> None:
    for name in zoo_names():
        register(ModelSpec(name, "zoo", str(ZOO_DIR / name)))
    for name in STUDY_MODELS:
        register(ModelSpec(name, "hub", name))


_register_builtins()


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_has_local_copy(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _how_to_provide(name: str) -> str:
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
        from qcheck.models.checks import check_model_dir

        check_model_dir(path)  # headers only: a truncated or pickled-only directory fails here
        return ModelSpec(name, "local", str(path.resolve()))
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelNotAvailable(f"model {name!r} is neither a zoo name, an existing directory nor "
                                f"a Hugging Face id; {_how_to_provide(name)}")
    spec = _REGISTRY.get(name, ModelSpec(name, "hub", name))
    if _hub_has_local_copy(name):
        return spec
    if _hub_offline():
        raise ModelNotAvailable(f"model {name!r} has no local weights and the Hugging Face hub is "
                                f"off (HF_HUB_OFFLINE=1); {_how_to_provide(name)}")
    if probe_hub:
        from huggingface_hub import hf_hub_download

        try:
            hf_hub_download(name, "config.json")
        except Exception as error:  # network, auth, 404: all mean "not loadable here"
            raise ModelNotAvailable(f"model {name!r} could not be fetched from the Hugging Face hub "
                                    f"({type(error).__name__}); {_how_to_provide(name)}. "
                                    f"Set HF_HUB_OFFLINE=1 to fail fast.") from None
    return spec


def context_length(spec: ModelSpec) -> int | None:
    """The model's context in tokens from its config.json (no torch, no weights); None if unknown
    here (a hub model not in the local cache). Same keys as qcheck.data.calibration.model_context."""
    import json

    if spec.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.location, "config.json")
        path = Path(found) if isinstance(found, str) else None
    else:
        path = Path(spec.location) / "config.json"
    try:
        config = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return None
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None


def load_hf_model(spec: ModelSpec, *, device: str = "cpu"):
    """The FP model as an HF module: float32, eval mode, eager attention (TL reads patterns).

    Weights load from safetensors only (`use_safetensors=True`): a directory holding only a
    pickled `pytorch_model.bin` is refused, never unpickled (one beside safetensors is ignored with
    a warning); remote code is never trusted. A config that does not match the weights and NaN/Inf
    weights are refused (qcheck/models/checks.py).
    """
    import warnings

    from transformers import AutoModelForCausalLM

    from qcheck.models import checks

    where = f"model {spec.name!r}" if spec.kind == "hub" else f"model directory {spec.location!r}"
    if spec.kind != "hub":
        directory = Path(spec.location)
        checks.check_model_dir(directory)
        pickled = checks.pickled_files(directory)
        if pickled:
            warnings.warn(f"{where}: ignoring {', '.join(pickled)} (pickled; qcheck loads only the "
                          f"safetensors weights and never unpickles a file)", UserWarning, stacklevel=2)
        from transformers import AutoConfig

        checks.check_config_fits(AutoConfig.from_pretrained(directory, trust_remote_code=False), directory, where)
    local_only = spec.kind != "hub" or _hub_has_local_copy(spec.location) or _hub_offline()
    try:
        # ignore_mismatched_sizes: report every misshapen tensor in `info` (refused below) instead
        # of transformers' bare RuntimeError
        model, info = AutoModelForCausalLM.from_pretrained(
            spec.location, dtype="float32", attn_implementation="eager",
            use_safetensors=True, trust_remote_code=False, local_files_only=local_only,
            ignore_mismatched_sizes=True, output_loading_info=True)
    except OSError as error:
        if spec.kind == "hub":
            raise ModelNotAvailable(f"model {spec.name!r} could not be loaded: {error}; "
                                    f"{_how_to_provide(spec.name)}") from None
        raise ModelNotAvailable(f"model directory {spec.location!r} could not be loaded: {error}. "
                                f"It needs config.json and model.safetensors (pickled .bin "
                                f"weights are refused); rewrite it with "
                                f"`model.save_pretrained(DIR, safe_serialization=True)`") from None
    checks.check_loading_info(info, where)
    checks.check_finite(model, where)
    return model.float().to(device).eval()
