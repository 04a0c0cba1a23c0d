"""Command-line values -> validated objects. No pytest here: the plugin calls these from
`pytest_configure`, so a bad value is one clear usage error at collection time."""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qcheck.thresholds import Thresholds

if TYPE_CHECKING:
    from qcheck.quantize.spec import QuantSpec

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def parse_device(text: str) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> the device string to use on this machine."""
    if not _DEVICE.match(text):
        raise ValueError(f"--qcheck-device {text!r}: expected auto, cpu, cuda or cuda:N")
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--qcheck-device {text}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use --qcheck-device cpu or auto")
        index = int(text.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"--qcheck-device {text}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1}; or use --qcheck-device cuda (under xdist each "
                             f"worker then takes its own)")
    return text


def worker_device(device: str, worker_id: str, n_gpus: int) -> str:
    """Under xdist, worker gwK takes GPU K mod n when the device is plain 'cuda'."""
    if device != "cuda" or not worker_id.startswith("gw") or n_gpus == 0:
        return device
    return f"cuda:{int(worker_id[2:]) % n_gpus}"


def session_device(text: str, worker_id: str | None) -> str:
    """The device of this pytest process: `parse_device(text)`, then under xdist (worker_id
    "gwK") plain 'cuda' becomes the worker's own GPU, cuda:(K mod n)."""
    device = parse_device(text)
    if worker_id and device == "cuda":
        import torch

        device = worker_device(device, worker_id, torch.cuda.device_count())
    return device


def cuda_unavailable_reason() -> str | None:
    """Why tests marked `gpu` are skipped on this machine, or None when CUDA is usable."""
    import torch

    if torch.cuda.is_available():
        return None
    return (f"needs CUDA: torch {torch.__version__} sees no CUDA device here "
            f"(torch.cuda.is_available() is False)")


def check_calibration_lengths(quants: list[QuantSpec], models: list[str]) -> None:
    """A `-lenN` longer than a model's context is one usage error naming both, at collection
    (rather than an error in every test of the pair once the model is loaded)."""
    from qcheck.models.context import context_length
    from qcheck.models.registry import resolve

    for spec in quants:
        seq_len = spec.seq_len
        for name in models if seq_len is not None else ():
            context = context_length(resolve(name, probe_hub=False))
            if context is not None and seq_len > context:
                raise ValueError(f"--qcheck-quant {spec}: calibration sequences of {seq_len} tokens are longer "
                                 f"than the context of {name} ({context} tokens); use -len{context} or less, "
                                 f"or leave -lenN out (default: the context, at most 128)")


@dataclass(frozen=True)
class ThresholdOverrides:
    """`KEY=VALUE` applies to every model, `MODEL:KEY=VALUE` to one model (command line wins over
    pyproject's [tool.qcheck.thresholds] and [tool.qcheck.thresholds."MODEL"])."""

    everywhere: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_model(self, base: Thresholds, model: str) -> Thresholds:
        merged = base.updated(self.everywhere, source="threshold override")
        return merged.updated(self.per_model.get(model, {}), source=f"threshold override for {model}")


def parse_threshold_overrides(items: list[str], base: Thresholds) -> ThresholdOverrides:
    everywhere: dict[str, Any] = {}
    per_model: dict[str, dict[str, Any]] = {}
    for item in items:
        target, key_value = (item.split(":", 1) if ":" in item.split("=", 1)[0] else (None, item))
        key, sep, value = key_value.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--qcheck-threshold {item!r}: expected KEY=VALUE or MODEL:KEY=VALUE, "
                             f"e.g. min_resid_cosine=0.9")
        base.updated({key: value}, source=f"--qcheck-threshold {item!r}")  # validates now
        (per_model.setdefault(target, {}) if target else everywhere)[key] = value
    return ThresholdOverrides(everywhere, per_model)


def thresholds_from_pyproject(table: dict[str, Any]) -> tuple[Thresholds, dict[str, dict[str, Any]]]:
    """[tool.qcheck.thresholds]: plain keys apply to every model; a sub-table per model name."""
    plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
    per_model = {k: v for k, v in table.items() if isinstance(v, dict)}
    base = Thresholds().updated(plain, source="pyproject.toml [tool.qcheck.thresholds]")
    for model, values in per_model.items():
        base.updated(values, source=f"pyproject.toml [tool.qcheck.thresholds.{model!r}]")
    return base, per_model


from qcheck.suite.rootdir import DIRECTORY_OPTIONS  # noqa: E402  (the options that take a directory)


def check_directory_values_with_a_space(args, invocation_dir: Path, rootpath: Path,
                                        inipath: Path | None) -> None:
    """ValueError if pytest took a directory option's value for a test path.

    pytest chooses its rootdir and config file from the command line's paths before any plugin
    loads, so `--qcheck-report /abs/out` (with a space) makes an existing /abs/out one of those
    paths: the rootdir moves to it (or to a common ancestor) and the project's pytest.ini and
    tests/certify/expected_failures.toml are no longer read. qcheck/suite/rootdir.py chooses again
    when the plugin loads; this is the guard for a pytest whose private Config attributes it could
    not use. The `=` form is never a path.
    """
    args = list(args)
    for option, value in zip(args, args[1:]):
        if option not in DIRECTORY_OPTIONS:
            continue
        path = (invocation_dir / value).resolve()
        if path.is_dir() and (path == rootpath or (inipath is None and path.is_relative_to(rootpath))):
            raise ValueError(
                f"{option} {value}: written with a space, pytest took the existing directory for a test "
                f"path when it chose its rootdir ({rootpath}) and config file "
                f"({inipath or 'none found'}), before qcheck's options exist, so this project's "
                f"settings were not read; write {option}={value}")
