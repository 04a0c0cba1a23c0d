"""`QuantSpec`: which quantizer, with which options, and its short string form; `CheckpointRef`:
a checkpoint folder as a quantizer.

The short form is used in test ids and on the command line. Grammar (tokens joined by "-",
defaults omitted, canonical order as written; `str(spec)` gives the canonical form and
`parse_quant_spec(str(spec)) == spec`):

    METHOD-wBITS [-gGROUP] [-asym | -ref] [-act | -gar] [-static | -blockfit] [-dampX] [-bsN] [-noseq]
                 [-bf16] [-sampled | -wikitext2] [-nN] [-lenN] [-seedN] [-file:PATH]

    METHOD   rtn | gptq | gptq-study | checkpoint | user:NAME   (checkpoint: -wBITS optional)
             user:NAME is a user quantizer (--qcheck-quantizer, entry point group qcheck.quantizers;
             qcheck/quantize/user.py): NAME is letters, digits, "_" and "." (no "-": it splits
             the spec), not a built-in method. It takes every option below and is handed them all.
    wBITS    bits per weight, 2..8
    gGROUP   one scale per GROUP input columns: 16, 32, 64 or 128 (default: one per output row).
             16 is there because the zoo's linears have d_in of 32..384: g128 is per-row there.
    asym     asymmetric min/max grid with a zero point (default: symmetric)
    ref      the reference implementation's symmetric grid instead of the study's (see below)
    act      act-order: quantize input columns by decreasing diag(H)          (GPTQ only)
    gar      group-aware reordering (GAR, Gafni et al. 2025; GPTQModel's default act_group_aware):
             each group's columns by decreasing diag(H), groups by their largest diag(H); every
             group keeps its columns, so g_idx stays in order. Needs -gGROUP.  (GPTQ only)
    static   fit every group's grid up front instead of at the group's start  (GPTQ only)
    blockfit fit a group's grid on the weights as they were at the start of its lazy-update block,
             as IST-DASLab gptq.py and GPTQModel do (the updates from the block's earlier columns
             are still pending there); default: on the up-to-date weights (gptq.py
             `_block_sizes`). With it the result depends on -bsN. Needs -gGROUP.  (gptq only)
    dampX    damping, fraction of mean diag(H), a plain decimal (default 0.01) (GPTQ only)
    bsN      lazy-update block size (default 128)                        (gptq only)
    noseq    not true-sequential: quantize a block's linears from one pass    (GPTQ only)
    bf16     quantize as a tool that holds the model in bfloat16 does (GPTQModel's default):
             the weights are rounded to bfloat16 before they are quantized, GPTQ's calibration
             forwards run on a bfloat16 copy (so its Hessians see bfloat16 activations), and the
             scales are rounded to float16 as GPTQ checkpoints store them. The rest of the
             quantized twin is the FP model's, as for an imported checkpoint.
    sampled | wikitext2 | file:PATH   calibration source (default sampled; file: must come last,
             it takes the rest of the text, so PATH may contain "-")           (GPTQ only)
    nN       calibration sequences (default 128); lenN tokens each (default: the model's
             context, at most 128); seedN the calibration seed (default 0)   (GPTQ only)
    ("GPTQ only": gptq, gptq-study and user quantizers; a user quantizer is handed them all.)

Examples: `rtn-w4`, `rtn-w3-g64`, `gptq-w4`, `gptq-w4-g128-act`, `rtn-w4-asym`,
`gptq-w4-damp0.1`, `gptq-study-w4`, `gptq-w4-n32-len64-file:/data/calib.txt`, `user:my_rtn-w4-g32`.

The symmetric grid. Default `study`: scale = max|w| / (2^(b-1) - 1), levels -2^(b-1) .. 2^(b-1)-1
(at 4 bits scale = max|w|/7): the study's formula, so max|w| is represented without clipping.
qcheck applies it per output row of the raw HF weights; the study applied it to TransformerLens-
processed weights along TL's last axis (docs/study.md), so `rtn-w4` is not the study's RTN. It is degenerate at 2 bits (levels
{-2, -1, 0, 1}·max|w|, most weights round to 0); `ref` is the IST-DASLab/GPTQ grid, scale =
2·max|w| / (2^b - 1) with zero point 2^(b-1) (at 2 bits {-4/3, -2/3, 0, 2/3}·max|w|), the one
GPTQ checkpoints from other tools use. RTN and GPTQ share the grid, so comparing them compares
the algorithms only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from decimal import Decimal

METHODS = ("rtn", "gptq", "gptq-study", "checkpoint", "user")
GROUP_SIZES = (16, 32, 64, 128)
GRIDS = ("study", "reference")
WORKING_DTYPES = ("float32", "bfloat16")
CALIBRATION_SOURCES = ("sampled", "wikitext2", "file:PATH")

GRAMMAR = ("METHOD-wBITS[-gGROUP][-asym|-ref][-act|-gar][-static|-blockfit][-dampX][-bsN][-noseq][-bf16]"
           "[-sampled|-wikitext2][-nN][-lenN][-seedN][-file:PATH], METHOD in rtn|gptq|gptq-study|"
           "checkpoint|user:NAME, BITS 2..8, GROUP 16|32|64|128; e.g. rtn-w4, gptq-w4-g128-act, user:my_rtn-w4")
# A user quantizer's NAME (user:NAME): no "-", which splits the short form; not a built-in method.
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

# Options that only a calibrated method (GPTQ, a user quantizer) reads; rtn and checkpoint must
# leave them default.
_GPTQ_ONLY = ("act_order", "group_aware", "static_groups", "block_start_grids", "damp", "block_size", "true_sequential", "calibration",
              "n_samples", "seq_len", "seed")


@dataclass(frozen=True)
class QuantSpec:
    """One quantizer configuration. See the module docstring for the meaning of each field."""

    method: str
    bits: int | None = None
    group_size: int | None = None  # None: one scale per output row
    sym: bool = True
    grid: str = "study"            # symmetric grid: "study" or "reference"
    act_order: bool = False
    group_aware: bool = False      # GAR: reorder within groups, then groups (see "gar" above)
    static_groups: bool = False
    block_start_grids: bool = False  # fit groups as the reference does ("blockfit" above)
    damp: float = 0.01             # fraction of mean diag(H) added to the diagonal
    block_size: int = 128          # columns per lazy-update block (Frantar et al. 2022, 3.2 step 2)
    true_sequential: bool = True
    working_dtype: str = "float32"  # "bfloat16": quantize as a bf16-holding tool does ("bf16")
    calibration: str = "sampled"   # "sampled" | "wikitext2" | "file:PATH"
    n_samples: int = 128           # calibration sequences
    seq_len: int | None = None     # tokens per sequence; None: min(model context, 128)
    seed: int = 0                  # calibration seed (sampling / window positions)
    name: str | None = None        # method "user" only: the user quantizer's name (user:NAME)

    def __post_init__(self) -> None:
        where = f"QuantSpec({self.method!r}, ...)"
        if self.method not in METHODS:
            raise ValueError(f"{where}: unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.method == "user":
            check_user_name(self.name, where)
        elif self.name is not None:
            raise ValueError(f"{where}: name={self.name!r} only applies to user quantizers (method 'user')")
        if self.bits is None:
            if self.method != "checkpoint":
                raise ValueError(f"{where}: bits is required (2..8), e.g. {self._tokens(bits=False)[0]}-w4")
        elif isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"{where}: bits={self.bits!r} is out of range; use an integer 2..8")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ValueError(f"{where}: group_size={self.group_size!r} is not supported; use None "
                             f"(per output row) or one of {GROUP_SIZES}")
        if self.grid not in GRIDS:
            raise ValueError(f"{where}: grid={self.grid!r}; expected one of {GRIDS}")
        if not self.sym and self.grid != "study":
            raise ValueError(f"{where}: grid={self.grid!r} applies to symmetric grids only; drop -ref or -asym")
        if not (0 < self.damp <= 1):
            raise ValueError(f"{where}: damp={self.damp!r} must be a fraction in (0, 1], e.g. 0.01")
        if self.block_size < 1:
            raise ValueError(f"{where}: block_size={self.block_size!r} must be >= 1")
        if self.method == "gptq-study" and self.block_size != 128:
            raise ValueError(f"{where}: gptq-study has no lazy batching, so no block size; drop -bs{self.block_size}")
        if self.working_dtype not in WORKING_DTYPES:
            raise ValueError(f"{where}: working_dtype={self.working_dtype!r}; expected one of {WORKING_DTYPES}")
        if self.method == "checkpoint" and self.working_dtype != "float32":
            raise ValueError(f"{where}: a checkpoint was quantized already; drop -bf16")
        if self.group_aware and self.group_size is None:
            raise ValueError(f"{where}: group-aware reordering (-gar) reorders within groups and needs a "
                             f"group size, e.g. -g32-gar")
        if self.group_aware and (self.act_order or self.static_groups):
            raise ValueError(f"{where}: -gar is a column order of its own; it cannot be combined with "
                             f"{'-act' if self.act_order else '-static'}")
        if self.block_start_grids and (self.group_size is None or self.static_groups):
            raise ValueError(f"{where}: -blockfit changes when a group's grid is fitted during the solve; it "
                             f"needs a group size and no -static, e.g. -g32-blockfit")
        if self.block_start_grids and self.method == "gptq-study":
            raise ValueError(f"{where}: gptq-study has no lazy-update blocks; drop -blockfit")
        if self.static_groups and self.group_size is None:
            raise ValueError(f"{where}: static groups need a group size, e.g. -g128-static")
        if not (self.calibration in ("sampled", "wikitext2")
                or (self.calibration.startswith("file:") and len(self.calibration) > 5)):
            raise ValueError(f"{where}: calibration={self.calibration!r}; expected one of "
                             f"{', '.join(CALIBRATION_SOURCES)}")
        if self.n_samples < 1:
            raise ValueError(f"{where}: n_samples={self.n_samples!r} must be >= 1")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"{where}: seq_len={self.seq_len!r} must be >= 2 (or None for the default)")
        if self.seed < 0:
            raise ValueError(f"{where}: seed={self.seed!r} must be >= 0")
        if not self.needs_calibration:
            defaults = {f.name: f.default for f in fields(self)}
            changed = [name for name in _GPTQ_ONLY if getattr(self, name) != defaults[name]]
            if changed:
                raise ValueError(f"{where}: {', '.join(changed)} only apply to gptq, gptq-study and user quantizers; "
                                 f"remove them from the {self.method} spec")

    @property
    def needs_calibration(self) -> bool:
        """True for the methods that read calibration inputs: GPTQ (its Hessian) and a user
        quantizer (always handed them, qcheck/quantize/user_apply.py)."""
        return self.method in ("gptq", "gptq-study", "user")

    def __str__(self) -> str:
        return "-".join(self._tokens(bits=True))

    @property
    def without_bits(self) -> str:
        """The short form without its bit width (`gptq-g128-act` for `gptq-w4-g128-act`): one
        method of the scaling table (qcheck/report/table.py), across bit widths."""
        return "-".join(self._tokens(bits=False))

    def _tokens(self, *, bits: bool) -> list[str]:
        parts = [f"user:{self.name}" if self.method == "user" else self.method]
        if bits and self.bits is not None:
            parts.append(f"w{self.bits}")
        if self.group_size is not None:
            parts.append(f"g{self.group_size}")
        if not self.sym:
            parts.append("asym")
        if self.grid == "reference":
            parts.append("ref")
        if self.act_order:
            parts.append("act")
        if self.group_aware:
            parts.append("gar")
        if self.static_groups:
            parts.append("static")
        if self.block_start_grids:
            parts.append("blockfit")
        if self.damp != 0.01:
            parts.append(f"damp{_decimal(self.damp)}")
        if self.block_size != 128:
            parts.append(f"bs{self.block_size}")
        if not self.true_sequential:
            parts.append("noseq")
        if self.working_dtype == "bfloat16":
            parts.append("bf16")
        if self.calibration == "wikitext2":
            parts.append("wikitext2")
        if self.n_samples != 128:
            parts.append(f"n{self.n_samples}")
        if self.seq_len is not None:
            parts.append(f"len{self.seq_len}")
        if self.seed != 0:
            parts.append(f"seed{self.seed}")
        if self.calibration.startswith("file:"):
            parts.append(self.calibration)
        return parts


@dataclass(frozen=True)
class CheckpointRef:
    """A quantizer that is a GPTQ checkpoint folder (--qcheck-checkpoint), by its name: the folder
    name, sanitized (qcheck/quantize/checkpoint/format.py `checkpoint_name`). `str()` is its id in
    test ids, `checkpoint:<name>`.

    It answers what a QuantSpec answers for the report (qcheck/report/results.py): its id has no
    bit width to take out, so `without_bits` is the id whole, and `bits` is None: the bit width is
    in the folder's quantization config, read when the checkpoint loads (its QuantSpec, method
    `checkpoint`, has it)."""

    name: str

    bits = None  # not a field: see the class docstring

    def __str__(self) -> str:
        return f"checkpoint:{self.name}"

    @property
    def without_bits(self) -> str:
        return str(self)


def check_user_name(name: object, where: str) -> None:
    """ValueError unless `name` can be a user quantizer's NAME (USER_NAME, not a built-in method)."""
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise ValueError(f"{where}: user quantizer name {name!r} must be letters, digits, '_' and '.', "
                         f"starting with a letter or '_' (no '-': it splits the short form user:NAME-w4)")
    if name in METHODS:
        raise ValueError(f"{where}: user quantizer name {name!r} is qcheck's built-in method {name}; "
                         f"give yours another name (--qcheck-quantizer NAME=module:callable)")


def _decimal(x: float) -> str:
    """Shortest plain decimal that round-trips (never '1e-05': a '-' would split the spec)."""
    return format(Decimal(repr(float(x))), "f")


# token regex -> (field, converter); flags map to a fixed value.
_VALUED = [
    (re.compile(r"w(\d+)"), "bits", int),
    (re.compile(r"g(\d+)"), "group_size", int),
    (re.compile(r"damp(\d+\.?\d*|\.\d+)"), "damp", float),
    (re.compile(r"bs(\d+)"), "block_size", int),
    (re.compile(r"n(\d+)"), "n_samples", int),
    (re.compile(r"len(\d+)"), "seq_len", int),
    (re.compile(r"seed(\d+)"), "seed", int),
]
_FLAGS = {"asym": ("sym", False), "ref": ("grid", "reference"), "act": ("act_order", True), "gar": ("group_aware", True),
          "bf16": ("working_dtype", "bfloat16"),
          "static": ("static_groups", True),
          "blockfit": ("block_start_grids", True), "noseq": ("true_sequential", False),
          "sampled": ("calibration", "sampled"), "wikitext2": ("calibration", "wikitext2")}


def parse_quant_spec(text: str) -> QuantSpec:
    """Parse a short form such as `gptq-w4-g128-act` (grammar in the module docstring).

    Raises ValueError naming the offending text and token and showing the grammar.
    """
    def fail(why: str) -> ValueError:
        return ValueError(f"bad quantization spec {text!r}: {why}. Grammar: {GRAMMAR}")

    if not isinstance(text, str) or not text.strip():
        raise fail("empty")
    body, _, path = text.strip().partition("-file:")
    tokens = body.split("-")
    values: dict[str, object] = {}
    if tokens[:2] == ["gptq", "study"]:
        method, tokens = "gptq-study", tokens[2:]
    else:
        method, tokens = tokens[0], tokens[1:]
    if method.startswith("user:"):
        method, values["name"] = "user", method[5:]
    elif method == "user":
        raise fail("a user quantizer is written user:NAME, e.g. user:my_rtn-w4")
    if method not in METHODS:
        raise fail(f"unknown method {method!r} (expected one of {', '.join(METHODS[:-1])}, user:NAME)")
    if path:
        values["calibration"] = "file:" + path
    for token in tokens:
        field_name, value = _token(token, fail)
        if field_name in values:
            raise fail(f"{token!r} repeats or contradicts an earlier token")
        values[field_name] = value
    if method != "checkpoint" and "bits" not in values:
        head = f"user:{values['name']}" if method == "user" else method
        raise fail(f"missing the bit width, e.g. {head}-w4")
    try:
        return QuantSpec(method=method, **values)
    except ValueError as err:
        raise fail(str(err)) from None


def _token(token: str, fail) -> tuple[str, object]:
    if token in _FLAGS:
        return _FLAGS[token]
    for pattern, field_name, convert in _VALUED:
        match = pattern.fullmatch(token)
        if match:
            return field_name, convert(match.group(1))
    raise fail(f"unknown token {token!r}" if token else "empty token (doubled '-')")
