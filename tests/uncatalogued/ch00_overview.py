"""Chapter 00: uncatalogued wrong answers."""

from __future__ import annotations

import math

from . import Wrong

TOPIC = "overview"


def _tour(*, wpe_rows=lambda T: slice(0, T), embed_scale=False, final_twice=False, order=lambda b: b):
    def lm_forward(ids, wte, wpe, blocks, final_norm):
        T = ids.shape[1]
        h = wte[ids]
        if embed_scale:
            h = h * math.sqrt(wte.shape[1])
        if wpe is not None:
            h = h + wpe[wpe_rows(T)]
        for block in order(list(blocks)):
            h = block(h)
        h = final_norm(h)
        if final_twice:
            h = final_norm(h)
        return h @ wte.T
    return lm_forward


def _merge(ids, pair, new_id, *, keep=False, reverse_pair=False):
    a, b = (pair[1], pair[0]) if reverse_pair else pair
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out += [ids[i], ids[i + 1], new_id] if keep else [new_id]
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _least_frequent(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return min(counts, key=lambda p: (counts[p], p))


def _gap_pairs(ids):
    counts = {}
    for pair in zip(ids, ids[2:]):
        counts[pair] = counts.get(pair, 0) + 1
    return max(counts, key=lambda p: (counts[p], [-v for v in p]))


WRONG = [
    Wrong("char_encode", "reversed", lambda text, vocab: [vocab.index(c) for c in reversed(text)], r"order|revers"),
    Wrong("char_encode", "drops_last", lambda text, vocab: [vocab.index(c) for c in text[:-1]],
          r"last|every character|length"),
    Wrong("char_decode", "reversed", lambda ids, vocab: "".join(vocab[i] for i in reversed(ids)), r"order|revers"),
    Wrong("most_frequent_pair", "least_frequent", _least_frequent, r"least|rarest|fewest", named=False),
    Wrong("most_frequent_pair", "gap_pairs", _gap_pairs, r"adjacent|neighbo|consecutive", named=False),
    Wrong("merge_pair", "reversed_pair", lambda ids, pair, new_id: _merge(ids, pair, new_id, reverse_pair=True),
          r"order|revers|pair\[0\]", named=False),
    Wrong("merge_pair", "keeps_pair", lambda ids, pair, new_id: _merge(ids, pair, new_id, keep=True),
          r"replace|both|instead", named=False),
    Wrong("lm_forward", "positions_off_by_one", _tour(wpe_rows=lambda T: slice(1, T + 1)),
          r"position.*(off by one|shifted|wpe\[:T\]|0 \.\. T-1)"),
    Wrong("lm_forward", "embeddings_scaled", _tour(embed_scale=True), r"sqrt\(d_model\)"),
    Wrong("lm_forward", "final_norm_twice", _tour(final_twice=True), r"final norm.*twice"),
    Wrong("lm_forward", "blocks_reversed", _tour(order=lambda b: b[::-1]), r"order|revers"),
    Wrong("lm_forward", "first_block_only", _tour(order=lambda b: b[:1]), r"first block|every block"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _merged_at_end(ids, pair, new_id):
    merged = _merge(ids, pair, new_id)
    return [t for t in merged if t != new_id] + [new_id] * merged.count(new_id)


def _tour_extra(style):
    def lm_forward(ids, wte, wpe, blocks, final_norm):
        T = ids.shape[1]
        h = wte[ids]
        if wpe is not None:
            h = h + (2 if style == "positions_twice" else 1) * wpe[:T]
        for block in blocks:
            h = h + block(h) if style == "extra_residual" else block(h)
        logits = final_norm(h) @ wte.T
        return logits / math.sqrt(wte.shape[1]) if style == "scaled_logits" else logits
    return lm_forward


HELD_OUT = [
    Wrong("lm_forward", "positions_twice", _tour_extra("positions_twice"), r"position", named=False),
    Wrong("lm_forward", "scaled_logits", _tour_extra("scaled_logits"), r"times|factor"),
    Wrong("lm_forward", "extra_residual", _tour_extra("extra_residual"), r"block|residual", named=False),
    Wrong("merge_pair", "new_ids_at_the_end", lambda ids, pair, new_id: _merged_at_end(ids, pair, new_id),
          r"place|position", named=False),
]
