"""Model-level properties not covered by the parity tests: chunking and trainability."""

from __future__ import annotations

import torch
from conftest import randomize_

from steadysam import build_model
from steadysam.models.image_encoder import rel_pos_attention


def _naive(q, k, v, rel_h, rel_w, size, scale):
    from steadysam.models.image_encoder import get_rel_pos

    h, w = size
    b, nh, n, d = q.shape
    Rh, Rw = get_rel_pos(h, h, rel_h), get_rel_pos(w, w, rel_w)
    r_q = q.reshape(b * nh, h, w, d)
    bias = (
        torch.einsum("bhwc,hkc->bhwk", r_q, Rh)[..., :, None]
        + torch.einsum("bhwc,wkc->bhwk", r_q, Rw)[..., None, :]
    )
    attn = (q * scale) @ k.transpose(-1, -2) + bias.reshape(b, nh, n, n)
    return attn.softmax(-1) @ v


def test_chunked_rel_pos_attention_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6 * 5, 8, generator=g) for _ in range(3))
    rel_h, rel_w = torch.randn(11, 8, generator=g), torch.randn(9, 8, generator=g)
    ref = _naive(q, k, v, rel_h, rel_w, (6, 5), 8**-0.5)
    for chunk in (1, 2 * 3 * 5 * 30 * 4, 1 << 30):  # one row, a few rows, everything
        out = rel_pos_attention(q, k, v, rel_h, rel_w, (6, 5), 8**-0.5, chunk_bytes=chunk)
        assert torch.allclose(out, ref, atol=1e-5)


def test_image_encoder_is_trainable():
    model = randomize_(build_model("sam_tiny", random_init=True), std=0.05)
    model.train()
    x = torch.randn(2, 3, 256, 256)
    model.image_encoder(x).square().mean().backward()
    for name, p in model.image_encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dense_pe_cache_follows_weight_updates():
    model = build_model("sam_tiny", random_init=True)
    pe = model.prompt_encoder
    with torch.inference_mode():
        first = pe.get_dense_pe()
        assert pe.get_dense_pe() is first  # cached between clicks
    state = model.state_dict()
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    state[key] = torch.randn_like(state[key])
    model.load_state_dict(state)
    with torch.inference_mode():
        again = pe.get_dense_pe()
    assert not torch.equal(first, again)
    assert torch.equal(again, pe.pe_layer(pe.image_embedding_size).unsqueeze(0))
