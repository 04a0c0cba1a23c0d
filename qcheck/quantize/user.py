"""User quantizers: a function of the user's, found by `module:callable`, run by qcheck as the
quantizer `user:NAME` (docs/design.md, "Quantizers"; the call and its checks: user_apply.py).

Two ways to name one:
- `--qcheck-quantizer [NAME=]module:callable` (repeatable): NAME defaults to the callable's name,
  sanitized (`pkg.kernels:Rtn.quantize` -> `quantize`);
- an entry point of an installed package, group `qcheck.quantizers`, `NAME = module:callable`
  (pyproject.toml `[project.entry-points."qcheck.quantizers"]`); loaded only when a
  `--qcheck-quant user:NAME-...` names it, so an installed package costs nothing otherwise.

Everything here runs when the options are validated, so a bad value is one usage error naming the
option value and the fix: a malformed value, a module that does not import, a missing attribute,
something not callable, or a name taken by a built-in method or by another quantizer.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from qcheck.quantize.spec import check_user_name

ENTRY_POINT_GROUP = "qcheck.quantizers"
_TARGET = re.compile(r"([A-Za-z_][\w.]*):([A-Za-z_][\w.]*)")


@dataclass(frozen=True)
class UserQuantizer:
    """A loaded user quantizer: `quantize(model, calibration, options)` (user_apply.py).

    target: `module:callable` as written; origin: where it was named, for messages
    (`--qcheck-quantizer my=pkg:fn`, `entry point my = pkg:fn (dist 1.0)`); installed: named by an
    entry point rather than on the command line."""

    name: str
    target: str
    origin: str
    fn: Callable
    installed: bool = False


def parse_quantizer_option(value: str) -> tuple[str, str]:
    """`[NAME=]module:callable` -> (NAME, `module:callable`); ValueError naming the value."""
    where = f"--qcheck-quantizer {value}"
    name, sep, target = value.strip().rpartition("=")
    target = target.strip()
    match = _TARGET.fullmatch(target)
    if match is None:
        raise ValueError(f"{where}: expected [NAME=]module:callable, e.g. my_kernels.rtn:quantize or "
                         f"my_rtn=my_kernels.rtn:quantize (the module importable from this Python)")
    if not sep:
        name = re.sub(r"[^A-Za-z0-9_]", "_", match.group(2).rpartition(".")[2])
    check_user_name(name.strip(), where)
    return name.strip(), target


def load_target(target: str, where: str) -> Callable:
    """The callable `module:attr.attr` names; ValueError naming `where` and the fix."""
    match = _TARGET.fullmatch(target)
    if match is None:
        raise ValueError(f"{where}: {target!r} is not module:callable")
    module_name, attributes = match.groups()
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{where}: module {module_name} does not import ({type(error).__name__}: {error}); "
                         f"put it on sys.path (PYTHONPATH, or install it) or fix its imports") from None
    except Exception as error:  # the user's module raised while it was imported
        raise ValueError(f"{where}: importing {module_name} raised {type(error).__name__}: {error}; fix the "
                         f"module") from error
    for i, attribute in enumerate(attributes.split(".")):
        if not hasattr(obj, attribute):
            owner = ".".join([module_name, *attributes.split(".")[:i]])
            raise ValueError(f"{where}: {owner} has no attribute {attribute!r}; name a function of that "
                             f"module, module:function")
        obj = getattr(obj, attribute)
    if not callable(obj):
        raise ValueError(f"{where}: {target} is a {type(obj).__name__}, not callable; name a function "
                         f"quantize(model, calibration, options) -> nn.Module | dict[str, Tensor]")
    return obj


def installed_targets(group: str = ENTRY_POINT_GROUP) -> dict[str, list[tuple[str, str]]]:
    """{NAME: [(module:callable, distribution), ...]} of the entry points in `group`, not loaded.
    More than one target for a NAME is a clash, refused when the NAME is used."""
    from importlib.metadata import entry_points

    found: dict[str, list[tuple[str, str]]] = {}
    for point in entry_points(group=group):
        dist = getattr(point, "dist", None)
        label = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
        pair = (point.value.strip(), label)
        if pair not in found.setdefault(point.name, []):
            found[point.name].append(pair)
    return found


def user_quantizers(values: list[str], used: list[str],
                    installed: dict[str, list[tuple[str, str]]]) -> dict[str, UserQuantizer]:
    """{NAME: UserQuantizer} for the --qcheck-quantizer `values` and the installed entry points
    (`installed`, installed_targets()) whose NAME is in `used` (the names the --qcheck-quant
    values give as user:NAME). Loads each callable; ValueError naming the value and the fix."""
    found: dict[str, UserQuantizer] = {}
    for value in dict.fromkeys(values):
        name, target = parse_quantizer_option(value)
        where = f"--qcheck-quantizer {value}"
        if name in found and found[name].target != target:
            raise ValueError(f"{where}: the name {name} is taken by {found[name].origin}; name one of them "
                             f"NAME=module:callable")
        others = [(t, dist) for t, dist in installed.get(name, []) if t != target]
        if others:
            raise ValueError(f"{where}: the name {name} is taken by the installed entry point {name} = "
                             f"{others[0][0]} ({others[0][1]}, group {ENTRY_POINT_GROUP}); name yours "
                             f"another way, NAME=module:callable")
        found[name] = UserQuantizer(name, target, where, load_target(target, where))
    for name in dict.fromkeys(used):
        if name in found:
            continue
        targets = installed.get(name, [])
        if not targets:
            known = ", ".join(sorted(installed)) or "none"
            raise ValueError(f"--qcheck-quant user:{name}-...: no user quantizer {name}; name one with "
                             f"--qcheck-quantizer {name}=module:callable, or install a package with an entry "
                             f"point {name} in group {ENTRY_POINT_GROUP} (installed: {known})")
        if len(targets) > 1:
            listed = "; ".join(f"{t} ({dist})" for t, dist in targets)
            raise ValueError(f"--qcheck-quant user:{name}-...: {len(targets)} installed entry points are named "
                             f"{name} in group {ENTRY_POINT_GROUP} ({listed}); uninstall one, or pick one "
                             f"with --qcheck-quantizer other_name=module:callable")
        target, dist = targets[0]
        where = f"entry point {name} = {target} ({dist}, group {ENTRY_POINT_GROUP})"
        check_user_name(name, where)
        found[name] = UserQuantizer(name, target, where, load_target(target, where), installed=True)
    return found
