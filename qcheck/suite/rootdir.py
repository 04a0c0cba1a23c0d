"""Choose pytest's rootdir and config file again when a directory option was written with a space.

pytest chooses its rootdir and config file from the command line's paths before any plugin loads,
so in `pytest --qcheck-report /abs/out` an existing /abs/out is one of those paths: the rootdir
moves to it and the project's pytest.ini (addopts, markers, testpaths) is not read. When the
plugin loads (still before the initial conftests and the final parse) this module repeats
pytest's choice without those values and, if it differs, puts the right one in place the way
`Config.parse` does: the new config file's addopts replace the old ones at the front of the
arguments, and the known arguments, pythonpath and `-p` plugins are taken again.

That uses pytest's private `Config` attributes. If they are not there (another pytest), nothing
changes and qcheck/suite/options.py `check_directory_values_with_a_space` stops the run with a
usage error naming the `=` form, which works everywhere.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import pytest

DIRECTORY_OPTIONS = ("--qcheck-report", "--qcheck-checkpoint", "--qcheck-cache")
_PRIVATE = ("_rootpath", "_inipath", "_inicfg", "_inicache", "_validate_args", "_checkversion",
            "_configure_python_path", "_validate_plugins")


def spaced_directory_values(args: list[str]) -> list[str]:
    """The values of directory options written as two arguments (`--qcheck-report DIR`)."""
    return [value for option, value in zip(args, args[1:]) if option in DIRECTORY_OPTIONS]


def _determine_setup(config: pytest.Config, paths: list[str]):
    from _pytest.config.findpaths import determine_setup

    namespace = config.known_args_namespace
    kwargs = dict(inifile=namespace.inifilename, override_ini=namespace.override_ini, args=paths,
                  rootdir_cmd_arg=namespace.rootdir or None, invocation_dir=config.invocation_params.dir)
    accepted = inspect.signature(determine_setup).parameters
    found = determine_setup(**{key: value for key, value in kwargs.items() if key in accepted})
    return found[0], found[1], found[2], (found[3] if len(found) > 3 else None)


def rechoose_rootdir(config: pytest.Config, args: list[str]) -> bool:
    """Redo pytest's rootdir/config-file choice without spaced directory values; True if it moved.

    `args` is the list pytest will parse next (addopts already in front); it is edited in place.
    """
    values = spaced_directory_values(args)
    if not values or not all(hasattr(config, name) for name in _PRIVATE):
        return False
    # Parsed again once the entry points were loaded: the values are options' values by now.
    paths = list(config.known_args_namespace.file_or_dir)
    rootpath, inipath, inicfg, ignored = _determine_setup(config, paths)
    if (rootpath, inipath) == (config.rootpath, config.inipath):
        return False

    old_addopts = config._validate_args(config.getini("addopts"), "via addopts config")
    if old_addopts and args[:len(old_addopts)] == old_addopts:
        del args[:len(old_addopts)]
    config._rootpath, config._inipath, config._inicfg = rootpath, inipath, inicfg
    if ignored is not None and hasattr(config, "_ignored_config_files"):
        config._ignored_config_files = ignored
    config._inicache.clear()
    config._parser.extra_info["rootdir"] = str(rootpath)
    config._parser.extra_info["inifile"] = str(inipath)
    args[:0] = config._validate_args(config.getini("addopts"), "via addopts config")

    namespace = config._parser.parse_known_args(args, namespace=copy.copy(config.option))
    namespace.confcutdir = namespace.confcutdir or str(Path(inipath).parent if inipath else rootpath)
    config.known_args_namespace = namespace
    config._checkversion()
    config._configure_python_path()
    config.pluginmanager.consider_preparse(args, exclude_only=False)
    config._validate_plugins()
    return True
