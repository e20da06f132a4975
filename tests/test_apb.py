"""APB attention reference: its layout (anchor / passing / local), the plain-causal special
case, and configuration errors. (The kernel, compressor and distributed prefill are #5.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from frspec_cuda.reference.apb import apb_attention, apb_mask


def test_mask_layout_by_hand():
    # anchor 2, local 3, passing 2: keys [p0 p1 | a0 a1 | l0 l1 l2]
    m = apb_mask(2, 3, 2).int().tolist()
    assert m == [
        [0, 0, 1, 0, 0, 0, 0],  # a0: causal within the anchor
        [0, 0, 1, 1, 0, 0, 0],  # a1
        [1, 1, 1, 1, 1, 0, 0],  # l0: all passing + anchor, causal local
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ]


def test_no_anchor_no_passing_is_causal_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 8, 16, generator=g, dtype=torch.float64)
    k = torch.randn(37, 2, 16, generator=g, dtype=torch.float64)
    v = torch.randn(37, 2, 16, generator=g, dtype=torch.float64)
    out, lse = apb_attention(q, k, v, anchor_len=0, passing_len=0)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.repeat_interleave(4, 1).transpose(0, 1),
                                         v.repeat_interleave(4, 1).transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(out, ref)
    assert lse.shape == (37, 8)


def test_local_rows_equal_attention_over_their_visible_keys():
    g = torch.Generator().manual_seed(1)
    A, Lc, P = 3, 5, 4
    q = torch.randn(A + Lc, 2, 8, generator=g, dtype=torch.float64)
    k = torch.randn(P + A + Lc, 1, 8, generator=g, dtype=torch.float64)
    v = torch.randn(P + A + Lc, 1, 8, generator=g, dtype=torch.float64)
    out, lse = apb_attention(q, k, v, anchor_len=A, passing_len=P, scale=0.3)
    i = A + 2  # third local row sees passing + anchor + local[:3]
    keys = list(range(P + A + 3))
    s = (q[i] @ k[keys, 0].T) * 0.3  # [2 heads, keys]
    torch.testing.assert_close(out[i], torch.softmax(s, -1) @ v[keys, 0])
    torch.testing.assert_close(lse[i], torch.logsumexp(s, -1))


@pytest.mark.parametrize("anchor,passing,tk,msg", [(9, 0, 8, "fewer than anchor_len"), (2, 3, 9, "must have passing_len"),
                                                   (-1, 0, 8, ">= 0")])
def test_bad_configurations(anchor, passing, tk, msg):
    q = torch.randn(8, 2, 8)
    k = torch.randn(tk, 1, 8)
    with pytest.raises(ValueError, match=msg):
        apb_attention(q, k, k, anchor, passing)
