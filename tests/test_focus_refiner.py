"""FocusRefiner against a slow, loop-based transcription of the official forward
(docs/focsam.md §4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from steadysam.models.focus_refiner import (
    FocusRefiner,
    RefineBlock,
    box_mask,
    focus_box,
    focus_box_mask,
)
from steadysam.models.refiner_parts import Attention, MSAModule

# ---------------------------------------------------------------------------------------------
# Reference: official code structure, one window at a time, NCHW, explicit roll / zero slot.


def ref_linear(lin, x):
    return x @ lin.weight.t() + lin.bias


def ref_ln(ln, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_attention(attn, q, k, v, zero_slot=True):
    hn = attn.num_heads
    q, k, v = ref_linear(attn.q_proj, q), ref_linear(attn.k_proj, k), ref_linear(attn.v_proj, v)

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], hn, -1).permute(0, 2, 1, 3)

    q, k, v = heads(q), heads(k), heads(v)
    if zero_slot:
        k = torch.cat([k, torch.zeros_like(k[..., :1, :])], dim=-2)
        v = torch.cat([v, torch.zeros_like(v[..., :1, :])], dim=-2)
    a = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    out = (a @ v).permute(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)
    return ref_linear(attn.proj, out)


def ref_cross(m, q, kv):
    x = q
    x = x + m.gamma1 * ref_attention(
        m.attn, ref_ln(m.norm_q, q), ref_ln(m.norm_kv, kv), ref_ln(m.norm_kv, kv)
    )
    h = torch.relu(ref_linear(m.mlp[0], ref_ln(m.norm, x)))
    return x + m.gamma2 * ref_linear(m.mlp[2], h)


def ref_pdyrelu(m, x, cls):
    c = m.channels
    s = x @ cls.transpose(-1, -2)
    r = torch.tanh(ref_linear(m.pixel_mlp[2], torch.relu(ref_linear(m.pixel_mlp[0], s))))
    r = r * m.pixel_scale.exp() + m.pixel_bias
    pixel_act = r[..., :c] * x + r[..., c:]
    r = torch.tanh(
        ref_linear(
            m.channel_mlp[2], torch.relu(ref_linear(m.channel_mlp[0], x.mean(1, keepdim=True)))
        )
    )
    r = r * m.channel_scale.exp() + m.channel_bias
    channel_act = r[..., :c] * x + r[..., c:]
    return torch.max(pixel_act, channel_act)


def ref_mdcn(x, offset, mask, weight):
    """x: C x H x W, offset: 18 x H x W, mask: 9 x H x W; 3x3, stride 1, pad 1, zero outside."""
    c, h, w = x.shape
    cols = []
    for k in range(9):
        i, j = divmod(k, 3)
        py = torch.arange(h, dtype=x.dtype)[:, None] - 1 + i + offset[2 * k]
        px = torch.arange(w, dtype=x.dtype)[None, :] - 1 + j + offset[2 * k + 1]
        y0, x0 = py.floor(), px.floor()
        val = torch.zeros(c, h, w, dtype=x.dtype)
        for yy in (y0, y0 + 1):
            for xx in (x0, x0 + 1):
                ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                wgt = (1 - (py - yy).abs()) * (1 - (px - xx).abs()) * ok
                val = val + x[:, yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()] * wgt
        inside = (py > -1) & (py < h) & (px > -1) & (px < w)
        cols.append(val * inside * mask[k])
    return torch.einsum(
        "ock,ckhw->ohw", weight.reshape(weight.shape[0], c, 9), torch.stack(cols, 1)
    )


def ref_msa(m, x, cls):
    """x: 1 x C x S x S (one window), cls: 1 x 1 x C."""
    c, s1, s2 = x.shape[1:]
    out = x.flatten(2).transpose(1, 2)
    out = ref_attention(m.attn, out, out, out)
    q = ref_ln(m.cls_proj[1], ref_linear(m.cls_proj[0], cls))
    out = ref_pdyrelu(m.relu1, ref_ln(m.norm1, out), q)
    out = out.transpose(1, 2).reshape(1, c, s1, s2)
    out = x + m.gamma1 * out
    conv = m.conv2
    om = F.conv2d(out, conv.dcn_offset.weight, conv.dcn_offset.bias, padding=1)
    o1, o2, mk = torch.chunk(om, 3, dim=1)
    out = ref_mdcn(out[0], torch.cat([o1, o2], 1)[0], mk.sigmoid()[0], conv.dcn.weight)[None]
    out = F.group_norm(out, 1, m.norm2.weight, m.norm2.bias, m.norm2.eps)
    return x + m.gamma2 * torch.relu(out)


def ref_block(blk, x, cls, mask, shift, last):
    b, c, h, w = x.shape
    s = blk.window_size
    pre_cls = cls
    pad_b, pad_r = (s - h % s) % s, (s - w % s) % s
    x = F.pad(x, (0, pad_r, 0, pad_b))
    mask = F.pad(mask, (0, pad_r, 0, pad_b))
    if shift:
        x = torch.roll(x, shifts=(-(s // 2), -(s // 2)), dims=(-2, -1))
        mask = torch.roll(mask, shifts=(-(s // 2), -(s // 2)), dims=(-2, -1))
    hp, wp = x.shape[-2:]
    out = x.clone()
    tokens, n_sel = [], []
    for n in range(b):
        toks, cnt = [], 0
        for i in range(0, hp, s):
            for j in range(0, wp, s):
                t = cls[n : n + 1]
                if mask[n, :, i : i + s, j : j + s].max() != 0:
                    win = x[n : n + 1, :, i : i + s, j : j + s]
                    t = ref_cross(blk.img2cls, t, win.flatten(2).transpose(1, 2))
                    out[n : n + 1, :, i : i + s, j : j + s] = ref_msa(blk.cls2img, win, t)
                    cnt += 1
                toks.append(t)
        tokens.append(torch.cat(toks).mean(0, keepdim=True))
        n_sel.append(cnt / len(toks))
    if shift:
        out = torch.roll(out, shifts=(s // 2, s // 2), dims=(-2, -1))
    out = out[..., :h, :w]
    cls = torch.cat(tokens)
    if not last:
        rho = torch.tensor(n_sel, dtype=x.dtype).clip(1e-2).view(b, 1, 1)
        scale = (blk.cls_scale_proj.weight[0, 0] * -rho.log() + blk.cls_scale_proj.bias[0]).exp()
        cls = scale * (cls - pre_cls) + pre_cls
    return out, cls


def ref_refiner(m, feats, mask, token):
    x = F.conv2d(feats, m.embed_proj.weight, m.embed_proj.bias)
    cls = ref_linear(m.token_proj, token.reshape(token.shape[0], 1, -1))
    mask = F.adaptive_max_pool2d(mask.float(), x.shape[-2:])
    for i, blk in enumerate(m.blocks):
        x, cls = ref_block(blk, x, cls, mask, shift=i % 2 == 1, last=i == len(m.blocks) - 1)
    return x


# ---------------------------------------------------------------------------------------------


def randomise(m, seed=0, offset_std=1.5):
    """Non-trivial values for every parameter (gammas, scales and biases away from their init),
    sized so that activations stay O(1) through the blocks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2 and "cls_scale_proj" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                base = (
                    1.0
                    if any(k in name for k in ("gamma", "norm", "cls_proj.1", "cls_scale"))
                    and name.endswith(("weight", "gamma1", "gamma2"))
                    else 0.0
                )
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
            if name.endswith("dcn_offset.bias"):
                # Large offsets: many samples cross the window border or land between pixels.
                p.copy_(offset_std * torch.randn(p.shape, generator=g))
    return m


def small_refiner(dtype=torch.float64, depth=4, seed=0, dim=16, ws=4):
    m = FocusRefiner(embed_dim=dim, depth=depth, num_heads=2, mlp_ratio=2.0, window_size=ws)
    return randomise(m, seed).to(dtype)


def box(b, size, boxes):
    m = torch.zeros(b, 1, size, size)
    for n, (l, t, r, bt) in enumerate(boxes):
        m[n, :, t:bt, l:r] = 1
    return m


CASES = {
    # name: (H, W, mask-resolution factor, per-image boxes in mask pixels)
    "whole": (12, 12, 4, [(0, 0, 48, 48)]),
    "corner": (12, 12, 4, [(0, 0, 5, 6)]),
    "across_shift": (12, 12, 4, [(20, 4, 30, 13)]),
    "bottom_right_wrap": (12, 12, 4, [(44, 44, 48, 48)]),
    "padded_rect": (10, 14, 4, [(18, 2, 50, 30)]),
    "batch2": (12, 12, 4, [(0, 0, 8, 8), (17, 25, 40, 47)]),
    "none": (12, 12, 4, [(0, 0, 0, 0)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_float64(case):
    h, w, f, boxes = CASES[case]
    b = len(boxes)
    m = small_refiner()
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(b, 16, h, w, generator=g, dtype=torch.float64)
    token = torch.randn(b, 1, 16, generator=g, dtype=torch.float64)
    mask = box(b, max(h, w) * f, boxes)[..., : h * f, : w * f]
    with torch.no_grad():
        out = m(feats, mask, token)
        ref = ref_refiner(m, feats, mask, token)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    # Batched windows of several images are independent of each other.
    if b > 1:
        with torch.no_grad():
            single = torch.cat([m(feats[i : i + 1], mask[i : i + 1], token[i]) for i in range(b)])
        torch.testing.assert_close(out, single, rtol=1e-9, atol=1e-9)


def test_gradients_match_reference():
    m = small_refiner(depth=2)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 16, 8, 8, generator=g, dtype=torch.float64)
    token = torch.randn(2, 16, generator=g, dtype=torch.float64)
    mask = box(2, 32, [(0, 0, 10, 10), (14, 3, 30, 9)])
    w = torch.randn(2, 16, 8, 8, generator=g, dtype=torch.float64)
    grads = []
    for fn in (m, lambda a, b_, c: ref_refiner(m, a, b_, c)):
        m.zero_grad()
        fe, to = feats.clone().requires_grad_(), token.clone().requires_grad_()
        (fn(fe, mask, to) * w).sum().backward()
        grads.append([fe.grad, to.grad] + [p.grad.clone() for p in m.parameters()])
    for a, b_ in zip(*grads, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-8, atol=1e-9)


def test_default_config_float32_matches_reference():
    torch.manual_seed(0)
    m = randomise(FocusRefiner(), seed=3).eval()
    feats, token = torch.randn(1, 256, 64, 64), torch.randn(1, 256)
    mask = box(1, 1024, [(0, 900, 100, 1024)])  # bottom-left corner: few windows, wraps
    with torch.no_grad():
        out = m(feats, mask, token)
        ref = ref_refiner(m, feats, mask, token)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_rho_is_clipped_at_one_percent():
    # 11 x 11 = 121 windows and a single focused cell: rho = 1/121 must be clipped to 0.01.
    m = small_refiner(depth=3, ws=2)
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(1, 16, 22, 22, generator=g, dtype=torch.float64)
    token = torch.randn(1, 16, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 1, 22, 22)
    mask[..., 9, 9] = 1
    with torch.no_grad():
        out = m(feats, mask, token)
        torch.testing.assert_close(out, ref_refiner(m, feats, mask, token), rtol=1e-9, atol=1e-9)
        blk = m.blocks[0]
        x, t = feats.permute(0, 2, 3, 1), token[:, None]
        _, t_out = blk(x, t, mask[:, 0].double())
        tw = blk.img2cls(t, x[:, 8:10, 8:10].reshape(1, 4, 16))
        t_mean = t + (tw - t) / 121
        w, b = blk.cls_scale_proj.weight[0, 0], blk.cls_scale_proj.bias[0]
        expected = torch.exp(w * math.log(100.0) + b) * (t_mean - t) + t
        torch.testing.assert_close(t_out, expected, rtol=1e-10, atol=1e-10)
        unclipped = torch.exp(w * math.log(121.0) + b) * (t_mean - t) + t
        assert (t_out - unclipped).abs().max() > 1e-3


def test_outside_selected_windows_is_embed_proj_exactly():
    m = small_refiner(dtype=torch.float32)
    feats, token = torch.randn(1, 16, 16, 16), torch.randn(1, 16)
    mask = box(1, 16, [(1, 1, 2, 2)])  # cell (1, 1): plain window (0, 0), shifted window (3, 3)
    with torch.no_grad():
        out = m(feats, mask, token)
        proj = F.linear(
            feats.permute(0, 2, 3, 1), m.embed_proj.weight[:, :, 0, 0], m.embed_proj.bias
        ).permute(0, 3, 1, 2)
    touched = torch.zeros(16, 16, dtype=torch.bool)
    touched[:4, :4] = True  # plain window
    idx = torch.tensor([14, 15, 0, 1])  # shifted window wraps around the border
    touched[idx[:, None], idx[None, :]] = True
    assert torch.equal(out[..., ~touched], proj[..., ~touched])
    assert (out[..., touched] - proj[..., touched]).abs().sum(1).amin() > 0


def test_shift_windows_wrap_without_mask():
    m = small_refiner(dtype=torch.float64, depth=2)
    blk = m.blocks[1]
    assert blk.shift and not m.blocks[0].shift
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 8, 16, generator=g, dtype=torch.float64)
    t = torch.randn(1, 1, 16, generator=g, dtype=torch.float64)
    focus = torch.zeros(1, 8, 8, dtype=torch.float64)
    focus[0, 0, 0] = 1  # selects the wrapped window {6, 7, 0, 1} x {6, 7, 0, 1}
    with torch.no_grad():
        y, _ = blk(x, t, focus)
        x2 = x.clone()
        x2[0, 7, 7] += 1.0  # opposite corner: same window only through the cyclic wrap
        y2, _ = blk(x2, t, focus)
    changed = (y2 - y).abs().sum(-1)[0] > 1e-12
    assert changed[0, 0] and changed[1, 1] and changed[6, 6]
    assert not changed[2:6].any() and not changed[:, 2:6].any()
    assert torch.equal(y[0, 2:6], x[0, 2:6])


def test_second_residual_adds_to_block_input():
    m = randomise(MSAModule(16, 2)).double()
    g = torch.Generator().manual_seed(6)
    f = torch.randn(3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.randn(3, 1, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        m.gamma2.zero_()
        torch.testing.assert_close(m(f, t, (4, 4)), f, rtol=0, atol=0)
        m.gamma2.fill_(0.7)
        ref = torch.cat([ref_msa(m, f[i].t().reshape(1, 16, 4, 4), t[i : i + 1]) for i in range(3)])
        out = m(f, t, (4, 4)).transpose(1, 2).reshape(3, 16, 4, 4)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_zero_slot_matters():
    attn = randomise(Attention(16, 2)).double()
    g = torch.Generator().manual_seed(7)
    q = torch.randn(3, 1, 16, generator=g, dtype=torch.float64)
    kv = torch.randn(3, 9, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        with_slot = ref_attention(attn, q, kv, kv)
        without = ref_attention(attn, q, kv, kv, zero_slot=False)
        assert (with_slot - without).abs().max() > 1e-3
        torch.testing.assert_close(attn(q, kv, kv), with_slot, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(attn.attend_few(q, kv), with_slot, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            attn(kv, kv, kv), ref_attention(attn, kv, kv, kv), rtol=1e-10, atol=1e-10
        )


def test_last_block_returns_plain_mean_token():
    m = small_refiner(depth=3)
    assert m.blocks[2].cls_scale_proj is None
    assert all(m.blocks[i].cls_scale_proj is not None for i in range(2))
    blk = m.blocks[2]
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 8, 8, 16, generator=g, dtype=torch.float64)
    t = torch.randn(1, 1, 16, generator=g, dtype=torch.float64)
    focus = torch.zeros(1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        _, t_none = blk(x, t, focus)
        torch.testing.assert_close(t_none, t)
        focus[0, 4:, 4:] = 1  # one of the four 4 x 4 windows
        _, t_out = blk(x, t, focus)
        _, ref = ref_block(blk, x.permute(0, 3, 1, 2), t, focus[:, None], shift=False, last=True)
    torch.testing.assert_close(t_out, ref, rtol=1e-10, atol=1e-10)


def test_state_dict_matches_checkpoint_table():
    m = FocusRefiner()
    c, hid = 256, 1024
    expected = {
        "embed_proj.weight": (c, c, 1, 1),
        "embed_proj.bias": (c,),
        "token_proj.weight": (c, c),
        "token_proj.bias": (c,),
    }
    per_block = {
        "img2cls.gamma1": (c,),
        "img2cls.gamma2": (c,),
        "img2cls.norm_q.weight": (c,),
        "img2cls.norm_q.bias": (c,),
        "img2cls.norm_kv.weight": (c,),
        "img2cls.norm_kv.bias": (c,),
        "img2cls.norm.weight": (c,),
        "img2cls.norm.bias": (c,),
        "img2cls.mlp.0.weight": (hid, c),
        "img2cls.mlp.0.bias": (hid,),
        "img2cls.mlp.2.weight": (c, hid),
        "img2cls.mlp.2.bias": (c,),
        "cls2img.gamma1": (1, c, 1, 1),
        "cls2img.gamma2": (1, c, 1, 1),
        "cls2img.cls_proj.0.weight": (c, c),
        "cls2img.cls_proj.0.bias": (c,),
        "cls2img.cls_proj.1.weight": (c,),
        "cls2img.cls_proj.1.bias": (c,),
        "cls2img.norm1.weight": (c,),
        "cls2img.norm1.bias": (c,),
        "cls2img.relu1.pixel_scale": (2 * c,),
        "cls2img.relu1.pixel_bias": (2 * c,),
        "cls2img.relu1.pixel_mlp.0.weight": (c, 1),
        "cls2img.relu1.pixel_mlp.0.bias": (c,),
        "cls2img.relu1.pixel_mlp.2.weight": (2 * c, c),
        "cls2img.relu1.pixel_mlp.2.bias": (2 * c,),
        "cls2img.relu1.channel_scale": (2 * c,),
        "cls2img.relu1.channel_bias": (2 * c,),
        "cls2img.relu1.channel_mlp.0.weight": (c, c),
        "cls2img.relu1.channel_mlp.0.bias": (c,),
        "cls2img.relu1.channel_mlp.2.weight": (2 * c, c),
        "cls2img.relu1.channel_mlp.2.bias": (2 * c,),
        "cls2img.conv2.dcn_offset.weight": (27, c, 3, 3),
        "cls2img.conv2.dcn_offset.bias": (27,),
        "cls2img.conv2.dcn.weight": (c, c, 3, 3),
        "cls2img.norm2.weight": (c,),
        "cls2img.norm2.bias": (c,),
    }
    for mod in ("img2cls.attn", "cls2img.attn"):
        for p in ("q_proj", "k_proj", "v_proj", "proj"):
            per_block[f"{mod}.{p}.weight"] = (c, c)
            per_block[f"{mod}.{p}.bias"] = (c,)
    for i in range(12):
        expected.update({f"blocks.{i}.{k}": v for k, v in per_block.items()})
        if i < 11:
            expected[f"blocks.{i}.cls_scale_proj.weight"] = (1, 1)
            expected[f"blocks.{i}.cls_scale_proj.bias"] = (1,)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected
    assert len(list(m.buffers())) == 0
    assert sum(p.numel() for p in m.parameters()) == 25_396_058
    assert all(isinstance(b, RefineBlock) for b in m.blocks)
    assert [b.shift for b in m.blocks] == [False, True] * 6


def test_initialisation():
    m = FocusRefiner()
    blk = m.blocks[0]
    for g in (blk.img2cls.gamma1, blk.img2cls.gamma2, blk.cls2img.gamma1, blk.cls2img.gamma2):
        assert torch.equal(g, torch.ones_like(g))
    relu = blk.cls2img.relu1
    for p in (relu.pixel_scale, relu.pixel_bias, relu.channel_scale, relu.channel_bias):
        assert torch.equal(p, torch.zeros_like(p))
    assert blk.cls_scale_proj.weight.item() == 1 and blk.cls_scale_proj.bias.item() == 0
    std = blk.cls2img.conv2.dcn.weight.std().item()
    assert abs(std - math.sqrt(2 / (256 * 9 + 256))) < 1e-3
    assert blk.cls2img.conv2.dcn_offset.weight.abs().max() > 0  # PyTorch default, not zero
    # With the init (w=1, b=0) the new token is the mean of the selected windows' tokens.
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 64, 64, 256, generator=g)
    t = torch.randn(1, 1, 256, generator=g)
    focus = torch.zeros(1, 64, 64)
    focus[0, 0, 0] = focus[0, 40, 40] = 1
    with torch.no_grad():
        _, t_out = blk(x, t, focus)
        f = x[0, :16, :16].reshape(1, 256, 256), x[0, 32:48, 32:48].reshape(1, 256, 256)
        tw = [blk.img2cls(t, fi) for fi in f]
    torch.testing.assert_close(t_out, (tw[0] + tw[1]) / 2, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Focus box.


def test_focus_box_known_answers():
    logits = torch.full((3, 1, 256, 256), -5.0)
    logits[1, 0, 64:128, 32:96] = 5.0  # -> pixels [256, 512) x [128, 384) at 1024
    logits[2, 0, 0:20, 200:256] = 5.0  # touches top / right border: expansion gets clipped
    boxes = focus_box(logits, 1024, 1.0)
    assert boxes[0].tolist() == [0, 0, 1024, 1024]  # empty -> whole image
    l, t, r, b = boxes[1].tolist()
    assert abs(l - 128) <= 2 and abs(t - 256) <= 2 and abs(r - 384) <= 2 and abs(b - 512) <= 2
    # The bbox is taken on the upsampled logits thresholded at 0.
    up = F.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)[:, 0] > 0
    ys, xs = torch.nonzero(up[1], as_tuple=True)
    assert boxes[1].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    ys, xs = torch.nonzero(up[2], as_tuple=True)
    l, t, r, b = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
    expected = []
    for lo, hi, ratio, n in ((l, r, 1.4, 1024), (t, b, 1.2, 1024)):
        c = (lo + hi) / 2
        expected.append((max(0, round(c - ratio * (c - lo))), min(n, round(c - ratio * (c - hi)))))
    (el, er), (et, eb) = expected
    assert focus_box(logits, 1024, (1.2, 1.4))[2].tolist() == [el, et, er, eb]
    assert eb < 1024 and er == 1024 and et == 0  # clipped at the top and right


def test_focus_box_rounding_and_mask():
    logits = torch.full((1, 1, 8, 8), -1.0)
    logits[..., 2:5, 1:3] = 1.0
    # input_size 8: no upsampling, box (1, 2, 3, 5); centre (2, 3.5).
    assert focus_box(logits, 8, 1.0)[0].tolist() == [1, 2, 3, 5]
    # x: 2 -/+ 1.25 -> round(0.75)=1, round(3.25)=3; y: 3.5 -/+ 1.875 -> round(1.625)=2, 5
    assert focus_box(logits, 8, 1.25)[0].tolist() == [1, 2, 3, 5]
    # x: 2 -/+ 1.5 -> round(0.5)=0 (half to even), round(3.5)=4; y: 3.5 -/+ 2.25 -> 1, round(5.75)=6
    assert focus_box(logits, 8, 1.5)[0].tolist() == [0, 1, 4, 6]
    # Per-axis (h_ratio, w_ratio) and per-image tensor ratios.
    assert focus_box(logits, 8, (1.0, 3.0))[0].tolist() == [0, 2, 5, 5]
    two = logits.expand(2, -1, -1, -1)
    got = focus_box(two, 8, (torch.tensor([1.0, 1.5]), torch.tensor([1.0, 1.5])))
    assert got.tolist() == [[1, 2, 3, 5], [0, 1, 4, 6]]
    mask = focus_box_mask(logits, 8, 1.5)
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., 1:6, 0:4] = 1
    assert torch.equal(mask, expected)
    assert torch.equal(box_mask(torch.tensor([[0, 0, 8, 8]]), 8), torch.ones(1, 1, 8, 8))
    # Huge ratio clips to the image.
    assert focus_box(logits, 8, 10.0)[0].tolist() == [0, 0, 8, 8]
    # Strict threshold: logits of exactly 0 or slightly below are background.
    logits[..., 6, 6] = 0.0
    logits[..., 0, 7] = -0.25
    assert focus_box(logits, 8, 1.0)[0].tolist() == [1, 2, 3, 5]
    logits[..., 6, 6] = 1e-3
    assert focus_box(logits, 8, 1.0)[0].tolist() == [1, 2, 7, 7]


def test_box_mask_grid_path_equals_max_pool():
    g = torch.Generator().manual_seed(10)
    for size, grid in ((1024, 64), (100, 7), (48, 12), (30, 30)):
        lt = torch.randint(0, size, (6, 2), generator=g)
        wh = torch.randint(1, size + 1, (6, 2), generator=g)
        rb = (lt + wh).clamp(max=size)
        boxes = torch.cat([lt, rb], 1)
        boxes[0] = torch.tensor([0, 0, size, size])
        full = box_mask(boxes, size)
        assert torch.equal(box_mask(boxes, size, grid), F.adaptive_max_pool2d(full, grid))
        l, t, r, b = boxes[1].tolist()
        assert full[1, 0, t:b, l:r].all() and full[1].sum() == (r - l) * (b - t)


def test_focus_box_mask_drives_refiner_grid():
    m = FocusRefiner(embed_dim=16, depth=2, num_heads=2, window_size=4)
    logits = torch.full((1, 1, 256, 256), -1.0)
    logits[..., 64:128, 64:128] = 1.0
    mask = m.focus_mask(logits)
    assert mask.shape == (1, 1, 1024, 1024) and mask.dtype == torch.float32
    pooled = F.adaptive_max_pool2d(mask, (64, 64))
    assert pooled.sum() > 0 and pooled.sum() < 64 * 64
    assert torch.equal(focus_box_mask(logits, 1024, 1.4, grid_size=64), pooled)
    feats, token = torch.randn(1, 16, 64, 64), torch.randn(1, 16)
    with torch.no_grad():
        assert torch.equal(m(feats, mask, token), m(feats, pooled, token))
