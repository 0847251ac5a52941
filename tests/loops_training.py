"""Chapter 08 written the slow, obvious way: one position at a time (the spec).

The checks must accept these: correct answers written without the reference's vectorized tricks.
"""

from __future__ import annotations

import math

import torch


def lm_loss(logits, ids, ignore_index=-100):
    """-log softmax(logits[b, t])[ids[b, t + 1]], averaged over the targets that are not ignored."""
    B, T, V = logits.shape
    total = torch.zeros((), dtype=logits.dtype, device=logits.device)
    count = 0
    for b in range(B):
        for t in range(T - 1):
            target = int(ids[b, t + 1])
            if target == ignore_index:
                continue
            z = logits[b, t]
            total = total + (torch.logsumexp(z, dim=0) - z[target])
            count += 1
    return total / count


def mlm_mask(ids, mask_id, vocab_size, generator):
    u = torch.rand(ids.shape, generator=generator)
    r = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
    inputs, labels = ids.clone(), torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if u[b, t] < 0.15:
                labels[b, t] = ids[b, t]
                if r[b, t] < 0.8:
                    inputs[b, t] = mask_id
                elif r[b, t] < 0.9:
                    inputs[b, t] = random_ids[b, t]
    return inputs, labels


def teacher_forcing_inputs(targets, bos_id):
    B, T = targets.shape
    inputs = torch.empty_like(targets)
    for b in range(B):
        inputs[b, 0] = bos_id
        for t in range(1, T):
            inputs[b, t] = targets[b, t - 1]
    return inputs


def padding_labels(ids, attention_mask):
    labels = ids.clone()
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if not attention_mask[b, t]:
                labels[b, t] = -100
    return labels


def tie_weights(model):
    model.lm_head.weight = model.tok_emb.weight


NUMBERS = {"saved_gpt2": 50257 * 768, "initial_loss": math.log(512), "random_tokens": 32 * 128 * 0.15 * 0.1}
