"""Weight quantizers and their application to HF models.

Kernels (pure functions of tensors, no I/O): `grid` (the quantization grids), `rtn`
(round-to-nearest), `gptq` (Frantar et al. 2022) and `gptq_study` (the study's stale-inverse
variant), `hessian` (collecting H = 2/n Σ x xᵀ). Application: `linears` (which weights, read and
written in the (d_out, d_in) layout), `apply` (a quantized deep copy of an HF model, layer by
layer), `cache` (the on-disk cache shared by xdist workers, built on `store`), `result` (the
QuantizedModel they, `checkpoint` and `user_apply` return). User quantizers: `user` (found by
`module:callable` or entry point), `user_apply` (run on a copy of the FP model, what they return
checked).
The spec that names a quantizer is `spec.QuantSpec`, written `rtn-w4`, `gptq-w4-g128-act`,
`user:my_rtn-w4`, ...; a checkpoint folder is named by `spec.CheckpointRef` (`checkpoint:<name>`).

Nothing heavy is imported here: import the submodule you need.
"""
