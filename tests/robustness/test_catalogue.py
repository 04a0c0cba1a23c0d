"""The catalogue of bad inputs and faults (issue 8): each case, what qcheck does, and the test that
proves it. "Usage error" means the run stops at collection with one error naming the value and the
fix, before any model is loaded; every test also checks that nothing on disk was lost, changed or
left half-written. Tests are in tests/robustness/ unless a path says otherwise; `slow` marks the
ones that start real pytest processes.

| case | outcome | test |
|---|---|---|
| unknown model name (`zoo-nope`, `not a model!`, `./no/such/dir`) | usage error: lists the zoo / the three ways to provide a model | test_bad_models.py::test_unknown_model_name_is_one_usage_error |
| hub id with no local weights, offline | usage error: `has no local weights and the Hugging Face hub is off`, the three ways to provide it | test_bad_models.py::test_hub_id_without_weights_offline_is_one_usage_error |
| local dir: no / truncated / corrupt safetensors, missing shard, no or broken config.json | usage error naming the directory and file (`truncated or corrupt`, `copy it again`, `save_pretrained`); files untouched | test_bad_models.py::test_broken_local_directory_is_one_usage_error |
| config that does not match the weights (more / fewer layers, other widths, another architecture) | refused at load naming the tensors or sizes; an oversized config is refused before anything is allocated | test_bad_models.py::test_config_that_does_not_match_the_weights_is_refused |
| grouped-query config (Llama, Qwen2) with the wrong `num_key_value_heads` | refused at load (more heads: before anything is allocated) naming how many key/value heads the weights hold | test_bad_models.py::test_config_with_the_wrong_key_value_head_count_is_refused |
| NaN/Inf in the FP weights | refused at load naming the tensor and count; the quantizer refuses them naming the layer | test_bad_models.py::test_nan_or_inf_in_fp_weights_is_refused, test_bad_models.py::test_nan_in_a_model_handed_to_the_quantizer_is_refused |
| all-zero or denormal weight row | recovered: exact zeros, finite scales (RTN, GPTQ, sym/asym, groups, act-order) | test_faulty_quantization.py::test_all_zero_and_denormal_weight_rows_quantize_to_exact_zeros, kernels/test_grid_rtn.py::test_zero_rows_stay_zero |
| dead inputs (singular H) | recovered: weights 0, counted in the report | test_faulty_quantization.py::test_dead_inputs_get_zero_weights_and_are_counted |
| too few calibration tokens (rank-deficient H) | recovered by damping; the damping used is reported | test_faulty_quantization.py::test_too_few_calibration_tokens_are_damped_not_fatal |
| indefinite H | retried with 10x damping, reported | kernels/test_gptq_properties.py::test_failed_cholesky_is_retried_with_more_damping |
| H no damping rescues | error naming the quantizer, the layer and the fix | test_faulty_quantization.py::test_hessian_no_damping_rescues_is_an_error_naming_the_layer |
| calibration longer than the context (`-len256`) | usage error naming the model, its context and `-lenN` that fits | test_bad_options.py::test_calibration_longer_than_the_context_is_one_usage_error |
| malformed `--qcheck-quant`, bits / group size out of range | usage error: the text, why, the grammar | test_bad_options.py::test_malformed_quant_spec_is_one_usage_error, unit/test_quant_spec.py::test_malformed_specs_show_the_text_and_the_grammar |
| group size not dividing d_in / larger than d_in | recovered: a shorter last group with its own grid / one group per row | test_faulty_quantization.py::test_group_size_not_dividing_the_input_dimension_leaves_a_shorter_last_group, test_faulty_quantization.py::test_group_size_larger_than_the_input_dimension_is_one_group_per_row |
| unknown `--qcheck-device` | usage error: `expected auto, cpu, cuda or cuda:N` | test_devices.py::test_unknown_device_is_one_usage_error |
| CUDA requested with none present; `cuda:N` beyond the devices | usage error: `use --qcheck-device cpu or auto` / the devices there are | test_devices.py::test_cuda_requested_without_cuda_is_one_usage_error, test_devices.py::test_cuda_index_beyond_the_devices_is_one_usage_error |
| corrupt or hand-edited baseline JSON (truncated, not a baseline, header stripped, values edited) | the test fails naming the file and fix, or the edited element old → new; never a silent pass; file untouched; `--snapshot-update` repairs | test_bad_baselines.py::test_corrupt_or_hand_edited_baseline_fails_naming_the_file |
| corrupt cache entry (truncated, garbage, bad sidecar, other format, other model's tensors) | recomputed with a note saying why; the same weights; the entry repaired | test_faulty_cache.py::test_corrupt_cache_entry_is_recomputed_and_repaired, test_faulty_cache.py::test_corrupt_calibration_entry_is_resampled |
| run killed (SIGKILL) while writing a cache entry | no partial file under a final name; lock released; next run recomputes, removes the stray temporary file, commits | test_faulty_cache.py::test_run_killed_while_writing_a_cache_entry_recovers |
| cache path (`--qcheck-cache`, `QCHECK_CACHE_DIR`) that is a file, or a directory that cannot be created | usage error naming the directory, where it came from and the fix; nothing written | test_faulty_cache.py::test_cache_path_that_is_a_file_is_one_usage_error, test_faulty_cache.py::test_cache_directory_that_cannot_be_created_is_one_usage_error |
| disk full while a cache entry is written | one error naming the directory, "the disk is full" and the fix; no partial file; the next run computes and stores it | test_faulty_cache.py::test_disk_full_while_writing_an_entry_is_one_clear_error_and_leaves_nothing_partial |
| two workers (processes) asking for one cache entry at once | computed once; the other waits and loads the same weights | test_faulty_cache.py::test_two_workers_asking_for_one_entry_compute_it_once |
| report directory not writable / a file / holding other files | usage error naming the directory; nothing created or removed | test_bad_outputs.py::test_unwritable_report_directory_is_one_usage_error, unit/test_report_plugin.py::test_a_report_directory_with_other_files_is_a_usage_error |
| checkpoint whose vocab (or tokenizer, shapes, weights) differs from the FP model | usage error: `describes another vocabulary than the FP model`; checkpoint untouched | test_bad_outputs.py::test_checkpoint_whose_vocab_differs_is_one_usage_error, unit/test_checkpoint.py::test_another_shape_or_vocabulary_is_refused, unit/test_checkpoint.py::test_tokenizer_mismatch_is_refused |
| checkpoint as GPTQModel saves it: a tokenizer it synthesised (special tokens only), BF16/F16 unquantized tensors, Pythia's unembedding as `lm_head` or `embed_out` | recovered: loads; the tokenizer ignored with a note in the result and report; values checked to their dtypes' rounding (beyond it, NaN, a real other tokenizer, another model's weights: refused naming the tensor and fix) | unit/test_real_tool_checkpoints.py::test_the_synthesised_tokenizer_is_ignored_with_a_note, unit/test_real_tool_checkpoints.py::test_save_pretrained_names_and_state_dict_names_both_match, unit/test_real_tool_checkpoints.py::test_values_beyond_their_dtypes_rounding_or_nan_are_refused, unit/test_real_tool_checkpoints.py::test_control_a_real_different_tokenizer_is_still_refused, unit/test_real_tool_checkpoints.py::test_control_a_checkpoint_of_another_model_is_still_refused |
| `--qcheck-quantizer` that does not import, lacks the attribute, is not callable, is malformed, or takes a built-in method's or another quantizer's name; `--qcheck-quant user:NAME` that no quantizer has | usage error naming the value and the fix | unit/test_user_quantizer_plugin.py::test_a_bad_user_quantizer_is_one_usage_error, unit/test_user_quantizer.py::test_a_target_that_does_not_load_is_named_with_the_fix, unit/test_user_quantizer.py::test_a_name_clash_or_an_unknown_name_is_refused, unit/test_user_quantizer.py::test_a_malformed_option_value_is_named_with_the_fix |
| a user quantizer returning None, the FP model itself, another class or configuration, a missing block linear, a shape, NaN/inf, integer weights, an unknown tensor, other tensors beyond their dtype's rounding | refused when its pair is built: one line per test of the pair naming the tensor and the fix | unit/test_user_quantizer.py::test_what_cannot_be_certified_is_refused_naming_it_and_the_fix, unit/test_user_quantizer.py::test_the_fp_model_itself_is_refused, unit/test_user_quantizer.py::test_other_tensors_may_come_back_rounded_to_their_own_dtype_only, unit/test_user_quantizer_plugin.py::test_the_pair_is_built_from_what_it_returns_and_a_refusal_is_one_line |
| determinism: the same run twice (fresh caches) | bit-identical quantized weights, calibration and every analysis result | test_determinism.py::test_same_run_twice_is_bit_identical |
| determinism: seeds | every seed explicit in every result | test_determinism.py::test_every_seed_is_explicit |
| determinism: serial vs `-n 2` (slow) | identical results.json up to volatile fields | test_determinism.py::test_serial_runs_and_xdist_give_identical_results_json |
| devices: `auto` | cuda when present, else cpu | test_devices.py::test_auto_takes_cuda_only_when_present |
| devices: xdist worker k | takes GPU k mod n (an explicit cuda:N is kept); end to end with two real workers (slow) | test_devices.py::test_each_xdist_worker_takes_gpu_k_mod_n, test_devices.py::test_worker_mapping_without_gpus_leaves_the_device_alone, test_devices.py::test_xdist_workers_take_their_own_gpu_end_to_end |
| devices: a `gpu` test without CUDA | skipped with the reason (torch build, no device) | test_devices.py::test_gpu_marked_tests_are_skipped_with_a_reason_without_cuda, test_devices.py::test_quantization_on_cuda_matches_cpu |
| security: unpickling, remote code in qcheck's source | none: no pickle import, no torch.load without weights_only=True, trust_remote_code only ever a literal False | test_security.py::test_source_never_unpickles_and_never_trusts_remote_code |
| security: a model directory with only a pickled `.bin` (a payload) | usage error `has only pickled weights`; the pickle never opened | test_security.py::test_pickle_only_model_directory_is_refused_unopened |
| security: a pickled `.bin` beside safetensors | ignored with a warning naming it; never opened | test_security.py::test_pickle_beside_safetensors_is_ignored_with_a_warning, unit/test_checkpoint.py::test_pickles_are_never_loaded |
| security: a model directory that needs its own code (`auto_map`) | usage error: qcheck never runs code shipped with a model; the code never ran | test_security.py::test_model_directory_needing_remote_code_is_refused_unrun |
"""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).parent
TESTS = HERE.parent


def catalogue() -> list[tuple[str, str, list[str]]]:
    """(case, outcome, [test references]) per row of the table above."""
    rows = [line for line in __doc__.splitlines() if line.startswith("| ") and not line.startswith("| case ")]
    out = []
    for row in rows:
        case, outcome, tests = (cell.strip() for cell in row.strip("|").split(" | "))
        out.append((case, outcome, [t.strip() for t in tests.split(",")]))
    return out


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_reference_in_the_catalogue_names_an_existing_test():
    missing = []
    for _, _, references in catalogue():
        for reference in references:
            file, _, name = reference.partition("::")
            path = HERE / file if "/" not in file else TESTS / file
            if not path.is_file() or name not in defined_tests(path):
                missing.append(reference)
    assert len(catalogue()) >= 25 and missing == []


def test_every_robustness_test_is_in_the_catalogue():
    listed = {reference for _, _, references in catalogue() for reference in references}
    unlisted = [f"{path.name}::{name}" for path in sorted(HERE.glob("test_*.py")) if path != Path(__file__)
                for name in sorted(defined_tests(path)) if f"{path.name}::{name}" not in listed]
    assert unlisted == []
