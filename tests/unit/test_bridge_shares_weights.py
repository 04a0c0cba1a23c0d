"""The FP bridge shares the FP model's tensors (one set of weights for both) and never writes them:
qcheck/models/bridge.py `wrap`."""

import pytest
import torch

from qcheck.models.bridge import bridge_logit_error, wrap
from qcheck.models.digest import model_digest
from tests.helpers import TINY_FAMILIES, build_tiny


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_fp_bridge_reads_the_fp_models_own_tensors_and_leaves_them_as_they_were(family):
    hf = build_tiny(family).eval()
    before = model_digest(hf)
    bridge = wrap(hf)
    tokens = torch.randint(1, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    assert bridge_logit_error(hf, bridge, tokens) < 1e-4
    bridge.run_with_cache(tokens)
    assert model_digest(hf) == before
    # the HF model still runs as a plain HF model (quantizers copy and edit it)
    assert hf(input_ids=tokens).logits.shape == (2, 9, 256)
    fp_storages = {t.untyped_storage().data_ptr() for t in hf.state_dict().values()}
    bridge_storages = {t.untyped_storage().data_ptr() for t in bridge.state_dict().values()}
    new_bytes = sum(t.numel() * t.element_size() for t in bridge.state_dict().values()
                    if t.untyped_storage().data_ptr() not in fp_storages)
    fp_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    assert fp_storages & bridge_storages
    # what the bridge holds beyond the FP tensors (e.g. NeoX's q/k/v split from the fused weight)
    # is a fraction of the model, not a second copy of it
    assert new_bytes < 0.5 * fp_bytes, (new_bytes, fp_bytes)
