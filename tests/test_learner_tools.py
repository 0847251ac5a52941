"""A learner's everyday tools work in an exercise notebook with the checks loaded: %prun and
cProfile (and they see the learner's own code), %timeit, pdb and post-mortem debugging; and running
a profiler does not open a way around the checks."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

SETUP = """
import io, pdb, sys, cProfile, pstats
import torch
import torch.nn.functional as F
from helpers.checks import CheckFailed
from helpers.checks.attention import check_scaled_dot_product_attention as check

def my_attention(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, -1).nan_to_num(0.0)
    return w @ v, w
"""

CELLS = {
    "prun": "stats = %prun -q -r check(my_attention)\n"
            "print('prun sees the learner:', any(name == 'my_attention' for (_, _, name) in stats.stats))",
    "cprofile": "pr = cProfile.Profile(); pr.enable(); check(my_attention); pr.disable()\n"
                "print('cProfile sees the learner:', any(getattr(c, 'co_name', '') == 'my_attention' "
                "for c in (e.code for e in pr.getstats())))",
    "timeit": "t = %timeit -o -q -n 1 -r 2 check(my_attention)\nprint('timeit runs:', len(t.all_runs))",
    "pdb": "p = pdb.Pdb(stdin=io.StringIO('c\\n'), stdout=io.StringIO())\np.runcall(check, my_attention)\n"
           "print('pdb runcall: done')",
    "post_mortem": "def broken(q, k, v, mask=None):\n    return q\n"
                   "try:\n    check(broken)\nexcept CheckFailed:\n"
                   "    out = io.StringIO()\n"
                   "    debugger = pdb.Pdb(stdin=io.StringIO('p 20260 + 1\\nq\\n'), stdout=out)\n"
                   "    debugger.reset(); debugger.interaction(None, sys.exc_info()[2])\n"
                   "    print('post-mortem evaluates:', '20261' in out.getvalue())",
    "cheat_under_profiler": "def cheat(q, k, v, mask=None):\n"
                            "    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"
                            "    return out, torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1)\n"
                            "pr = cProfile.Profile(); pr.enable()\n"
                            "try:\n    check(cheat)\n    print('cheat: accepted')\n"
                            "except CheckFailed as e:\n    print('cheat: refused:', 'calls torch' in str(e))\n"
                            "finally:\n    pr.disable()",
}


@pytest.fixture(scope="module")
def outputs():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SETUP)] +
                                  [nbformat.v4.new_code_cell(code) for code in CELLS.values()])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True).execute()
    texts = {}
    for name, cell in zip(CELLS, nb.cells[1:]):
        texts[name] = "".join(o.get("text", "") if o["output_type"] == "stream"
                              else f"{o.get('ename')}: {o.get('evalue')}" if o["output_type"] == "error" else ""
                              for o in cell.outputs)
    return texts


@pytest.mark.parametrize("name, expected", [
    ("prun", "prun sees the learner: True"),
    ("cprofile", "cProfile sees the learner: True"),
    ("timeit", "timeit runs: 2"),
    ("pdb", "pdb runcall: done"),
    ("post_mortem", "post-mortem evaluates: True"),
    ("cheat_under_profiler", "cheat: refused: True"),
])
def test_tool_works_in_the_kernel(outputs, name, expected):
    assert expected in outputs[name], outputs[name]
    if name not in ("post_mortem", "cheat_under_profiler"):
        assert "✓ scaled_dot_product_attention" in outputs[name]
        assert "Error" not in outputs[name]
