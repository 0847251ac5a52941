"""Known submissions of chapter 08 and the exact points each must get (see tests/test_grading.py)."""

from helpers.checks import training as checks

from ..nbgrader_course import Submission, put, replace


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


STUDENTS = {
    # The catalogued mistakes, one each.
    "no_shift": Submission(
        {"ex1-answer": replace("preds, targets = logits[:, :-1], ids[:, 1:]", "preds, targets = logits, ids")},
        {"ex1"}, _msg(checks.LM_LOSS_MISTAKES, "no_shift")),
    "shift_wrong_way": Submission(
        {"ex1-answer": replace("preds, targets = logits[:, :-1], ids[:, 1:]", "preds, targets = logits[:, 1:], ids[:, :-1]")},
        {"ex1"}, _msg(checks.LM_LOSS_MISTAKES, "shift_wrong_way")),
    "padded_average": Submission(
        {"ex1-answer": replace("/ keep.sum()", "/ keep.numel()")},
        {"ex1"}, _msg(checks.LM_LOSS_MISTAKES, "padded_average")),
    "softmax_twice": Submission(
        {"ex1-answer": replace("torch.log_softmax(preds, dim=-1)", "torch.log_softmax(preds.softmax(-1), dim=-1)")},
        {"ex1"}, _msg(checks.LM_LOSS_MISTAKES, "softmax_twice")),
    "all_mask_token": Submission(
        {"ex2-answer": put("def mlm_mask(ids, mask_id, vocab_size, generator):\n"
                           "    u = torch.rand(ids.shape, generator=generator)\n"
                           "    torch.rand(ids.shape, generator=generator)\n"
                           "    torch.randint(0, vocab_size, ids.shape, generator=generator)\n"
                           "    selected = u < 0.15\n"
                           "    inputs = torch.where(selected, torch.full_like(ids, mask_id), ids)\n"
                           "    return inputs, torch.where(selected, ids, torch.full_like(ids, -100))\n")},
        {"ex2"}, _msg(checks.MLM_MISTAKES, "all_mask_token")),
    "labels_everywhere": Submission(
        {"ex2-answer": replace("labels = torch.where(selected, ids, torch.full_like(ids, -100))", "labels = ids.clone()")},
        {"ex2"}, _msg(checks.MLM_MISTAKES, "labels_everywhere")),
    "tie_by_copy": Submission(
        {"ex4-answer": put("def tie_weights(model):\n"
                           "    model.lm_head.weight = torch.nn.Parameter(model.tok_emb.weight.detach().clone())\n")},
        {"ex4"}, _msg(checks.TIE_MISTAKES, "copy")),
    # Issue 31: one Parameter, but the head's: the embedding's own weight is thrown away.
    "tied_backwards": Submission(
        {"ex4-answer": put("def tie_weights(model):\n    model.tok_emb.weight = model.lm_head.weight\n")},
        {"ex4"}, _msg(checks.TIE_MISTAKES, "tied_backwards")),
    "no_bos": Submission(
        {"ex3-answer": put("def teacher_forcing_inputs(targets, bos_id):\n    return targets.clone()\n")},
        {"ex3"}, _msg(checks.TEACHER_FORCING_MISTAKES, "no_shift")),
    "padding_labelled_zero": Submission(
        {"ex6-answer": replace("ids.masked_fill(~attention_mask, -100)", "ids.masked_fill(~attention_mask, 0)")},
        {"ex6"}, _msg(checks.PADDING_LABEL_MISTAKES, "zero_fill")),
    # Right only for the visible test's V = 11 and 2 cases: hard-coded, the hidden tests catch it.
    "hard_coded_vocab": Submission(
        {"ex1-answer": replace("torch.log_softmax(preds, dim=-1)", "torch.log_softmax(preds[..., :11], dim=-1)")},
        {"ex1-hidden"}),
    "cross_entropy_builtin": Submission(
        {"ex1-answer": put("import torch.nn.functional as F\n"
                           "def lm_loss(logits, ids, ignore_index=-100):\n"
                           "    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), "
                           "ids[:, 1:].reshape(-1), ignore_index=ignore_index)\n")},
        {"ex1"}, "calls torch"),
    # Exercise 7 (issue 26 item 6): the two confusions the issue named, each as a swap of two curves.
    "leak_read_as_healthy": Submission(
        {"ex7-answer": replace('"A": "mask_leak", "B": "healthy"', '"A": "healthy", "B": "mask_leak"')},
        {"ex7"}, _msg(checks.LOSS_CURVE_MISTAKES, "mask_leak_read_as_healthy")),
    "no_warmup_read_as_lr_too_high": Submission(
        {"ex7-answer": replace('"D": "no_warmup", "E": "lr_too_high"', '"D": "lr_too_high", "E": "no_warmup"')},
        {"ex7"}, _msg(checks.LOSS_CURVE_MISTAKES, "no_warmup_read_as_lr_too_high")),
    "bits_not_nats": Submission(
        {"ex5-answer": replace("initial_loss = math.log(512)", "initial_loss = math.log2(512)")},
        {"ex5"}, "that is log base 2"),
}
