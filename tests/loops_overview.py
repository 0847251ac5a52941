"""Correct answers to chapter 00's exercises, written independently of the reference (explicit loops,
plain Python where it reads simpler). The checks must accept every one of them."""

from __future__ import annotations

import torch


def char_encode(text, vocab):
    table = {}
    for position, ch in enumerate(vocab):
        table[ch] = position
    ids = []
    for ch in text:
        if ch not in table:
            raise KeyError(f"unknown character {ch!r}")
        ids.append(table[ch])
    return ids


def char_decode(ids, vocab):
    text = ""
    for i in ids:
        text += vocab[i]
    return text


def most_frequent_pair(ids):
    counts = {}
    for i in range(len(ids) - 1):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    best = None
    for pair, n in counts.items():
        if best is None or n > counts[best] or (n == counts[best] and pair < best):
            best = pair
    return best


def merge_pair(ids, pair, new_id):
    out = []
    skip = False
    for i in range(len(ids)):
        if skip:
            skip = False
            continue
        if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            skip = True
        else:
            out.append(ids[i])
    return out


def shape_map(B, T, d_model, n_heads, d_ff, vocab):
    d_head = d_model // n_heads
    shapes = {}
    shapes["H"] = (B, T, d_model)
    for name in ("Q", "K", "V"):
        shapes[name] = (B, n_heads, T, d_head)
    shapes["S"] = (B, n_heads, T, T)
    shapes["A"] = (B, n_heads, T, T)
    shapes["O"] = (B, T, n_heads * d_head)
    shapes["mlp_hidden"] = (B, T, d_ff)
    shapes["block_out"] = (B, T, d_model)
    shapes["logits"] = (B, T, vocab)
    return shapes


def lm_forward(ids, wte, wpe, blocks, final_norm):
    B, T = ids.shape
    d_model = wte.shape[1]
    h = torch.zeros(B, T, d_model, dtype=wte.dtype, device=wte.device)
    for b in range(B):
        for t in range(T):
            h[b, t] = wte[int(ids[b, t])]
            if wpe is not None:
                h[b, t] = h[b, t] + wpe[t]
    for block in blocks:
        h = block(h)
    h = final_norm(h)
    return torch.einsum("btd,vd->btv", h, wte)


def is_permutation_equivariant(f, x):
    T = x.shape[1]
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        out = f(x)
        for _ in range(3):  # several random permutations that move every token
            while True:
                perm = torch.randperm(T, generator=generator)
                if T == 1 or all(int(perm[t]) != t for t in range(T)):
                    break
            moved = f(x[:, perm])
            expected = out[:, perm]
            if ((moved - expected).abs() > 1e-5 + 1e-5 * expected.abs()).any():
                return False
    return True
