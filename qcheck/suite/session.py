"""One pytest session's state: validated options, and everything built once per worker (FP
models, bridges, quantized models, captures, SAEs). The plugin's fixtures only call into this.

Nothing here imports pytest; `from_pytest_config` reads a config object duck-typed.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcheck.pair import Case
from qcheck.quantize.spec import CheckpointRef, QuantSpec
from qcheck.quantize.user import UserQuantizer
from qcheck.suite import matrix
from qcheck.thresholds import Thresholds
from qcheck.suite.expected import ExpectedFailure, load_expected_failures
from qcheck.suite.options import (ThresholdOverrides, check_calibration_lengths,
                                  check_directory_values_with_a_space, parse_threshold_overrides,
                                  session_device, thresholds_from_pyproject)
from qcheck.suite.progress import Progress

EXPECTED_FAILURES = Path("tests") / "certify" / "expected_failures.toml"


@dataclass
class QcheckSession:
    models: list[str]
    quants: list[QuantSpec]   # --qcheck-quant, parsed once here
    device: str
    base_thresholds: Thresholds
    pyproject_per_model: dict[str, dict[str, Any]]
    overrides: ThresholdOverrides
    cache_dir: Path
    expected_failures: dict[tuple[str, str, str], ExpectedFailure]
    # --qcheck-checkpoint: {checkpoint: directory}, validated against the one --qcheck-model
    checkpoints: dict[CheckpointRef, str] = field(default_factory=dict)
    # user quantizers by NAME (--qcheck-quantizer, and the entry points --qcheck-quant names), loaded
    quantizers: dict[str, UserQuantizer] = field(default_factory=dict)
    # user:NAME-w4 of each --qcheck-quantizer no --qcheck-quant names, added like a checkpoint
    user_quants: list[QuantSpec] = field(default_factory=list)
    # --qcheck-require-baselines: a default-matrix result with no comparable baseline fails
    require_baselines: bool = False
    # --qcheck-borderline: what a borderline criterion (qcheck/verdict.py) does to its test
    borderline: str = "pass"
    # --qcheck-seeds: independent induction sets of 50 sequences (qcheck/data/induction.py)
    n_induction_sets: int = 1
    # --qcheck-sae: SAELens SAEs to use as the features basis instead of qcheck's (qcheck/sae/basis.py)
    user_saes: list = field(default_factory=list)
    # --qcheck-noise-floor: auto, on or off (qcheck/noise_floor.py)
    noise_floor_mode: str = "auto"
    # {(model, analysis): as_baseline() of FP float32 vs float64}, for the report
    noise_floors: dict = field(default_factory=dict, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)
    results: list = field(default_factory=list, repr=False)
    _pair_entries: dict = field(default_factory=dict, repr=False)
    # Long steps report here (quantization with its calibration, the SAE basis); the plugin sets a
    # terminal one (qcheck/suite/progress.py), silent by default.
    progress: Progress = field(default_factory=Progress, repr=False)

    @classmethod
    def from_pytest_config(cls, config) -> "QcheckSession":
        """Validate every qcheck option once; raises ValueError naming the bad value."""
        from qcheck.models.errors import ModelNotAvailable
        from qcheck.models.registry import resolve, zoo_names
        from qcheck.quantize.cache import default_cache_dir
        from qcheck.quantize.store import check_cache_dir
        from qcheck.suite.checkpoint_options import validate_checkpoints
        from qcheck.quantize.spec import parse_quant_spec
        from qcheck.quantize.user import installed_targets, user_quantizers

        check_directory_values_with_a_space(config.invocation_params.args, Path(config.invocation_params.dir),
                                            Path(config.rootpath), config.inipath)
        table = _pyproject_table(Path(config.rootpath) / "pyproject.toml")
        base, per_model = thresholds_from_pyproject(table.get("thresholds", {}))
        rule = config.getoption("--qcheck-induction-rule")
        if rule:
            base = base.updated({"induction_rule": rule}, source="--qcheck-induction-rule")
        feature_rule = config.getoption("--qcheck-feature-rule")
        if feature_rule:
            base = base.updated({"feature_survival_rule": feature_rule}, source="--qcheck-feature-rule")
        models = list(dict.fromkeys(config.getoption("--qcheck-model")))
        for name in models:
            try:
                resolve(name)
            except ModelNotAvailable as error:
                raise ValueError(f"--qcheck-model {name}: {error}") from None
        # equal specs written two ways (gptq-act-w4, gptq-w4-act) are one quantizer
        quants = list(dict.fromkeys(parse_quant_spec(text) for text in config.getoption("--qcheck-quant")))
        check_calibration_lengths(quants, models or zoo_names())
        quantizers = user_quantizers(config.getoption("--qcheck-quantizer"),
                                     [q.name for q in quants if q.method == "user"], installed_targets())
        named = [name for name, q in quantizers.items() if not q.installed]
        cache = config.getoption("--qcheck-cache") or table.get("cache_dir")
        cache_dir = Path(cache).expanduser() if cache else default_cache_dir()
        check_cache_dir(cache_dir, "--qcheck-cache" if config.getoption("--qcheck-cache") else
                        "[tool.qcheck] cache_dir" if cache else "QCHECK_CACHE_DIR"
                        if os.environ.get("QCHECK_CACHE_DIR") else "the default cache directory")
        return cls(
            models=models, quants=quants,
            # under xdist (workerinput), worker gwK takes GPU K mod n
            device=session_device(config.getoption("--qcheck-device"),
                                  getattr(config, "workerinput", {}).get("workerid")),
            base_thresholds=base, pyproject_per_model=per_model,
            overrides=parse_threshold_overrides(config.getoption("--qcheck-threshold"), base),
            cache_dir=cache_dir,
            expected_failures=load_expected_failures(Path(config.rootpath) / EXPECTED_FAILURES),
            checkpoints=validate_checkpoints(config.getoption("--qcheck-checkpoint"), models),
            quantizers=quantizers, user_quants=matrix.default_user_quants(named, quants),
            require_baselines=bool(config.getoption("--qcheck-require-baselines")),
            borderline=config.getoption("--qcheck-borderline"),
            n_induction_sets=_induction_sets(config.getoption("--qcheck-seeds")),
            user_saes=_user_saes(config.getoption("--qcheck-sae"), models, Path(config.invocation_params.dir)),
            noise_floor_mode=config.getoption("--qcheck-noise-floor"),
        )

    # --- the matrix -----------------------------------------------------------------------
    def pair_cases(self) -> list[Case]:
        from qcheck.models.registry import zoo_names

        return matrix.build_cases(zoo_names(), self.models, self.quants, self.added)

    def selected(self, case: Case) -> bool:
        return matrix.is_selected(case, self.models, self.quants, self.added)

    @property
    def added(self) -> list:
        """Quantizers that join the selection without replacing it: checkpoints, user defaults."""
        return [*self.checkpoints, *self.user_quants]

    def expected_failure(self, case: Case, analysis: str) -> ExpectedFailure | None:
        """The case's declaration, if any and if it applies under the case's thresholds."""
        entry = self.expected_failures.get((case.model, case.quant_id, analysis))
        return entry if entry is not None and entry.applies(self.thresholds_for(case.model)) else None

    def in_default_matrix(self, case: Case) -> bool:
        """Cases whose baselines are committed: every zoo model under the default quantizers."""
        from qcheck.models.registry import zoo_names

        return case.model in zoo_names() and case.quant in matrix.DEFAULT_QUANTS

    def thresholds_for(self, model: str) -> Thresholds:
        base = self.base_thresholds.updated(self.pyproject_per_model.get(model, {}),
                                            source=f"pyproject.toml thresholds for {model}")
        return self.overrides.for_model(base, model)

    def record(self, pair, analysis: str, nodeid: str, result) -> None:
        """Keep a result for the report layer: (case, analysis, test id, result), and what the
        report says of its pair (the pair itself is released after its tests)."""
        from qcheck.report.results import entry_for_pair

        if pair.case not in self._pair_entries:
            self._pair_entries[pair.case] = entry_for_pair(pair, worker="")
        self.results.append((pair.case, analysis, nodeid, result))

    # --- built once per worker ------------------------------------------------------------
    def _once(self, key, build):
        if key not in self._memo:
            from qcheck.memory import release_freed_memory

            self._memo[key] = build()
            release_freed_memory()  # a build's temporaries must not add to the next one's peak
        return self._memo[key]

    def model(self, name: str):
        from qcheck.models.load import load_model

        def build():
            with self.progress.step(f"{name}: load"):
                return load_model(name, device=self.device)
        return self._once(("model", name), build)

    def fp_bridge(self, name: str):
        from qcheck.models.bridge import wrap

        return self._once(("fp_bridge", name), lambda: wrap(self.model(name).hf))

    def weight_digest(self, name: str) -> str:
        from qcheck.models.digest import model_digest

        return self._once(("digest", name), lambda: model_digest(self.model(name).hf))

    def fp_capture(self, name: str, prompt_set: str):
        from qcheck.pair import capture_prompt_set

        return self._once(("fp_capture", name, prompt_set),
                          lambda: capture_prompt_set(self.fp_bridge(name), self.model(name), prompt_set,
                                                     n_induction_sets=self.n_induction_sets))

    def noise_floor(self, pair, analysis, context) -> dict | None:
        """The analysis's values between the pair's FP model in float32 and in float64
        (qcheck/noise_floor.py), once per (model, analysis); None when --qcheck-noise-floor leaves
        this model out."""
        from qcheck.analyses import ANALYSES
        from qcheck.noise_floor import wanted

        if not wanted(self.noise_floor_mode, pair.fp.n_params):
            return None
        key = (pair.case.model, analysis.name)
        if key not in self.noise_floors:
            with self.progress.step(f"{pair.case.model}: noise floor ({analysis.name}, float64 forward)"):
                self.noise_floors[key] = self._measure_floor(pair, analysis, context)
            if all((pair.case.model, name) in self.noise_floors for name in ANALYSES):
                # every floor of this model is measured: its float64 copy and captures are not needed again
                for memo_key in [k for k in self._memo if k[0] in ("fp64_bridge", "fp64_capture")
                                 and k[1] == pair.case.model]:
                    del self._memo[memo_key]
        return self.noise_floors[key]

    def _measure_floor(self, pair, analysis, context) -> dict:
        from qcheck.models.bridge import wrap
        from qcheck.noise_floor import float64_twin, floor_of
        from qcheck.pair import capture_prompt_set

        name, s = pair.case.model, analysis.prompt_set
        bridge = self._once(("fp64_bridge", name), lambda: wrap(float64_twin(pair.fp.hf), copy_model=False))
        fp64 = self._once(("fp64_capture", name, s),
                          lambda: capture_prompt_set(bridge, pair.fp, s, n_induction_sets=self.n_induction_sets))
        return floor_of(analysis, pair.captures(s)[0], fp64, context)

    def sae(self, name: str):
        from qcheck.sae.basis import pick_user_sae, sae_for

        def build():
            model, bridge = self.model(name), self.fp_bridge(name)
            with self.progress.step(f"{name}: SAE basis (shipped, cached or trained)") as step:
                return sae_for(model, bridge, weight_digest=self.weight_digest(name), cache_dir=self.cache_dir,
                               user=pick_user_sae(self.user_saes, name), progress=step.say)
        return self._once(("sae", name), build)

    def quantized(self, case: Case):
        """The quantized HF model for a case: from the disk cache, or computed and stored; for a
        checkpoint case, the checkpoint dequantized into a copy of the FP model; for a user
        quantizer, what it returns, checked, never cached (qcheck/quantize/user_apply.py)."""
        from qcheck.quantize.cache import load_or_quantize

        def build():
            model = self.model(case.model)
            if isinstance(case.quant, CheckpointRef):
                from qcheck.quantize.checkpoint import load_checkpoint

                with self.progress.step(f"{case.id}: load {self.checkpoints[case.quant]}"):
                    return load_checkpoint(model.hf, self.checkpoints[case.quant], name=case.model,
                                           weight_digest=self.weight_digest(case.model))
            if case.quant.method == "user":
                return self._user_quantized(case)
            with self.progress.step(f"{case.id}: quantize") as step:
                quantized = load_or_quantize(model.hf, case.quant, cache_dir=self.cache_dir,
                                             weight_digest=self.weight_digest(case.model),
                                             tokenizer=model.tokenizer.hf_tokenizer, progress=step.say)
                step.outcome = "from cache" if quantized.from_cache else "computed"
            return quantized
        return self._once(("quantized", case), build)

    def _user_quantized(self, case: Case):
        from qcheck.quantize.cache import cached_calibration
        from qcheck.quantize.user_apply import run_user_quantizer

        model, quantizer = self.model(case.model), self.quantizers[case.quant.name]
        with self.progress.step(f"{case.id}: quantize with {quantizer.target}") as step:
            step.say("calibration")  # the tokens qcheck's GPTQ gets for the same options, cached
            calibration = cached_calibration(model.hf, case.quant, weight_digest=self.weight_digest(case.model),
                                             cache_dir=self.cache_dir, tokenizer=model.tokenizer.hf_tokenizer)
            step.say("running it")
            return run_user_quantizer(quantizer, model.hf, case.quant, calibration, name=case.model,
                                      weight_digest=self.weight_digest(case.model))

    def pair(self, case: Case):
        from qcheck.models.bridge import wrap
        from qcheck.pair import Pair

        def build():
            quantized = self.quantized(case)
            quantized.quantized_digest  # before the bridge rewrites the module's state dict
            # The quantized copy is the pair's own: wrap it in place, not a second copy of it.
            return Pair(case=case, fp=self.model(case.model), quant=quantized,
                        fp_bridge=self.fp_bridge(case.model), quant_bridge=wrap(quantized.model, copy_model=False),
                        fp_capture=lambda prompt_set: self.fp_capture(case.model, prompt_set),
                        n_induction_sets=self.n_induction_sets)
        return self._once(("pair", case), build)

    def release(self, case: Case) -> None:
        """Drop a pair's quantized model, bridge and captures (its tests are done; pytest tears the
        session-scoped pair down before it builds the next one), so a run holds one at a time."""
        from qcheck.memory import release_freed_memory

        self._memo.pop(("pair", case), None)
        self._memo.pop(("quantized", case), None)
        release_freed_memory()

    def pair_entry(self, case: Case, worker: str) -> dict:
        """What the report says of a pair (qcheck/report/results.py), kept when it was recorded."""
        entry = self._pair_entries[case]
        return {**entry, "builds": [{**build, "worker": worker} for build in entry["builds"]]}


def _pyproject_table(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text()).get("tool", {}).get("qcheck", {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None


def _induction_sets(value: str) -> int:
    """--qcheck-seeds N: a whole number >= 1, else a usage error naming it."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise ValueError(f"--qcheck-seeds {value}: expected a whole number of induction sets >= 1, e.g. 3")
    return n


def _user_saes(values: list[str], models: list[str], base: Path) -> list:
    """--qcheck-sae [MODEL=]DIR values, each read and checked once (qcheck/sae/basis.py UserSAE);
    a MODEL= must name a model of the run (the --qcheck-model ones, else the zoo's)."""
    from qcheck.models.registry import zoo_names
    from qcheck.sae.basis import UserSAE

    saes = [UserSAE.parse(value, base) for value in values]
    run = models or zoo_names()
    for value, sae in zip(values, saes):
        if sae.model is not None and sae.model not in run:
            raise ValueError(f"--qcheck-sae {value}: {sae.model} is not a model of this run ({', '.join(run)}); "
                             f"pass MODEL=DIR for one of them, or DIR alone for every model")
    return saes
