"""The mechanism every chapter's checks share.

A check calls the learner's function on inputs it generates (axis sizes all different, so a
swapped axis cannot pass by accident), compares each result with the reference implementation,
and on failure raises `CheckFailed` with one specific sentence:

* the output's shape in course terms: "weights has shape (B, T_k, T_q) = (2, 7, 5); expected
  (B, T_q, T_k) = (2, 5, 7)";
* the name of a known mistake when the output equals that mistake's output (each chapter keeps a
  catalogue of them: softmax over the wrong axis, a missing 1/sqrt(d_k), ...);
* else the name of a probe, a systematic variant of the reference (another scale, a swapped
  projection, a shifted position: helpers/checks/probes.py), when the output clearly is that variant
  (`closest_probe`), or a constant factor;
* otherwise the first symptom found (which intermediate went wrong first, NaN, wrong dtype, the
  largest difference and where).

Checks run in the learner's kernel, where the learner's code could replace anything, so they
defend themselves:

* `protect` seals the course's modules (assigning to their attributes raises) and snapshots
  torch, NumPy, math and builtins; every check verifies that nothing it relies on was replaced
  since the notebook's first cell, before and after calling the learner's code;
* an answer that is the exercise's reference implementation or the torch built-in it asks the
  learner to write is refused; so is one that calls them (or the checks' own code) while it
  runs, which a profiler watches for.

None of this is a sandbox. The instructor's grading path adds a scan of the submitted answer
cells for what a kernel cannot see.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import dis
import functools
import inspect
import io
import math
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..numerics import tolerances
from ..shapes import fmt_shape
from ..threads import torch_threads

__all__ = [
    "Case",
    "CheckFailed",
    "Mistake",
    "Probe",
    "as_count",
    "call_learner",
    "check_function",
    "check_numbers",
    "answers_computed_by",
    "compare",
    "refuse_answers_computed_by",
    "named_shape",
    "on_one_thread",
    "protect",
    "verify_environment",
]


class CheckFailed(AssertionError):
    """A check found a problem; the message says what it is, in one sentence."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a stack trace: the learner needs the sentence, not the
        # check's internals (and graded feedback never shows more than this line).
        return [f"CheckFailed: {self}"]


# ---------------------------------------------------------------------------------------------
# Tamper resistance
# ---------------------------------------------------------------------------------------------

_SNAPSHOT: dict[tuple[str, str], tuple[Any, Any]] = {}  # (owner, name) -> (owner object, value)


class _SealedModule(types.ModuleType):
    """A module whose attributes cannot be reassigned or deleted (submodules may still be added)."""

    def __setattr__(self, name: str, value: Any) -> None:
        is_new_submodule = (
            isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
            and name not in vars(self)
        )
        is_import_dunder = name.startswith("__") and name.endswith("__") and name != "__class__"
        if is_new_submodule or is_import_dunder:
            super().__setattr__(name, value)
            return
        raise AttributeError(
            f"{self.__name__}.{name} cannot be replaced: the course's modules are read-only in "
            f"notebooks (give your own function a name of its own instead)"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self.__name__}.{name} cannot be deleted: the course's modules are read-only")


def _watchable(value: Any) -> bool:
    # Bound methods are created afresh on each access (IPython re-installs some in builtins per cell).
    if isinstance(value, (types.ModuleType, types.MethodType)):
        return False
    return callable(value)


def _lookup(owner: Any, name: str) -> Any:
    """What `owner.name` resolves to, without running descriptors: a class's MRO, a module's dict."""
    for namespace in (vars(k) for k in owner.__mro__) if isinstance(owner, type) else (vars(owner),):
        if name in namespace:
            return namespace[name]
    return None


def _snapshot(label: str, owner: Any, names: Iterable[str] | None = None) -> None:
    if names is None:
        names = {n for k in owner.__mro__[:-1] for n in vars(k)} if isinstance(owner, type) else list(vars(owner))
    for name in names:
        value = _lookup(owner, name)
        if _watchable(value):
            _SNAPSHOT[(label, name)] = (owner, value)


def _snapshot_libraries() -> None:
    _snapshot("torch", torch)
    _snapshot("torch.nn.functional", F)
    _snapshot("torch.Tensor", torch.Tensor)  # its own methods and torch._C.TensorBase's
    _snapshot("numpy", np)
    _snapshot("numpy.testing", np.testing)
    _snapshot("math", math)
    builtin_names = [
        n for n, v in vars(builtins).items()
        if isinstance(v, type) or (isinstance(v, types.BuiltinFunctionType) and v.__self__ is builtins)
    ]
    _snapshot("builtins", builtins, builtin_names)
    _snapshot("sys", sys, ["setprofile", "getprofile", "settrace", "gettrace"])
    _snapshot("warnings", warnings, ["catch_warnings", "simplefilter"])
    _snapshot("contextlib", contextlib, ["redirect_stderr"])


_CHECKS_PACKAGE = __name__.rsplit(".", 1)[0] + "."


def on_one_thread(check: Callable[..., Any]) -> Callable[..., Any]:
    """Run a check with one torch thread. A check's tensors are tiny, so a second thread only adds
    hand-off: on a 2-core CPU that also runs another kernel (a grading worker, a test worker) two
    threads per kernel made chapter 02's attention checks 5 to 7 times slower. The learner's thread
    setting is restored afterwards."""

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch_threads(1):
            return check(*args, **kwargs)

    run.on_one_thread = True
    return run


def _with_its_modules(module: types.ModuleType) -> list[types.ModuleType]:
    """A package of the course's code (helpers.blocks) and its modules: the package only re-exports
    names, its code runs in (and looks its functions up in) the modules, so they are sealed too.
    The course's root package and the checks' package are not expanded (each module seals itself)."""
    name = module.__name__
    if not hasattr(module, "__path__") or "." not in name or name + "." == _CHECKS_PACKAGE:
        return [module]
    return [module, *(m for key, m in sorted(sys.modules.items()) if key.startswith(name + ".") and m is not None)]


def protect(*modules: types.ModuleType) -> None:
    """Seal these course modules (a package with its modules) and record their functions; checks
    verify them later. In the checks' own modules, every public `check_*` function first gets
    `on_one_thread`, and FORBIDDEN becomes a read-only mapping."""
    for module in [m for given in modules for m in _with_its_modules(given)]:
        if module.__name__.startswith(_CHECKS_PACKAGE):
            for name, value in list(vars(module).items()):
                if (name.startswith("check_") and isinstance(value, types.FunctionType)
                        and value.__module__ == module.__name__ and not getattr(value, "on_one_thread", False)):
                    setattr(module, name, on_one_thread(value))
            # what each exercise forbids, read-only: an answer cell cannot empty an exercise's set to make
            # its check accept the reference (a dict subclass would still yield to dict.__setitem__)
            forbidden = vars(module).get("FORBIDDEN")
            if isinstance(forbidden, dict):
                module.FORBIDDEN = types.MappingProxyType(dict(forbidden))
        _snapshot(module.__name__, module)
        if not isinstance(module, _SealedModule):
            module.__class__ = _SealedModule


_TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep


def _unchanged(current: Any, original: Any) -> bool:
    """`current` is `original`, or torch's own wrapper of it: importing torch._dynamo (which
    `torch.compile` and `with torch.device(...)` do) wraps torch.manual_seed, and that is no patch."""
    for _ in range(4):
        if current is original:
            return True
        code = getattr(current, "__code__", None)
        if code is None or not str(Path(code.co_filename).resolve()).startswith(_TORCH_DIR):
            return False
        current = getattr(current, "__wrapped__", None)
    return False


def verify_environment() -> None:
    """Raise CheckFailed if a function a check relies on was replaced after the first cell."""
    replaced = []
    for (label, name), (owner, value) in _SNAPSHOT.items():
        # Fast path first (a dict lookup and an identity test): this runs twice per learner call.
        current = _lookup(owner, name) if isinstance(owner, type) else vars(owner).get(name)
        if current is not value and not _unchanged(current, value):
            replaced.append(f"{label}.{name}")
    if replaced:
        shown = ", ".join(replaced[:3]) + (f" and {len(replaced) - 3} more" if len(replaced) > 3 else "")
        raise CheckFailed(
            f"this check will not run because {shown} was replaced after the notebook's first cell; "
            f"a check cannot trust a patched library. Restart the kernel and run all cells without "
            f"replacing library or course functions"
        )


# ---------------------------------------------------------------------------------------------
# Describing inputs and outputs in course terms
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One call of the learner's function: positional arguments and the axis sizes behind them."""

    args: tuple
    sizes: Mapping[str, int]  # axis name -> size, e.g. {"B": 2, "T_q": 5}; sizes differ where possible
    arg_names: tuple[str, ...]
    note: str = ""  # e.g. "with a causal mask"

    def describe_inputs(self) -> str:
        parts = []
        for name, arg in zip(self.arg_names, self.args):
            if isinstance(arg, torch.Tensor):
                parts.append(f"{name} {named_shape(arg.shape, self.sizes)} {str(arg.dtype).replace('torch.', '')}")
            else:
                parts.append(f"{name}={_one_line(arg)}")
        return ", ".join(parts)


def _one_line(value: Any) -> str:
    """A short one-line description: a model's class and size rather than its repr of 25 lines."""
    if isinstance(value, torch.nn.Module):
        n = sum(p.numel() for p in value.parameters())
        blocks = next((len(m) for name, m in value.named_children() if isinstance(m, torch.nn.ModuleList)), None)
        return f"{type(value).__name__}({f'{blocks} blocks, ' if blocks else ''}{n:,} parameters)"
    text = repr(value)
    first = text.splitlines()[0] if text else text
    return first if first == text and len(text) <= 100 else first[:97].rstrip() + " ..."


def named_shape(shape: Sequence[int], sizes: Mapping[str, int]) -> str:
    """(B, T_q, d_v) = (2, 5, 13): axis names where a size identifies exactly one axis."""
    by_size: dict[int, list[str]] = {}
    for axis, size in sizes.items():
        by_size.setdefault(int(size), []).append(axis)
    names = [by_size[d][0] if len(by_size.get(int(d), [])) == 1 else str(int(d)) for d in shape]
    named = "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"
    plain = fmt_shape(shape)
    return plain if named == plain else f"{named} = {plain}"


@dataclass(frozen=True)
class Mistake:
    """A known wrong version of the exercise: same signature as the answer, mistaken output."""

    key: str
    message: str
    impl: Callable[..., Any]


class Probe(Mistake):
    """A systematic variant of the reference (another scale, a swapped input, a shifted position, ...).

    Checked after the catalogue, and named only when the learner's output is clearly that variant
    (`closest_probe`): equal to it within the course's tolerance, or far closer to it than to the
    reference and to every other probe.
    """


# ---------------------------------------------------------------------------------------------
# Calling the learner's code
# ---------------------------------------------------------------------------------------------


_HELPERS_DIR = str(Path(__file__).resolve().parent.parent) + os.sep  # .../helpers/
_CHECKS_DIR = str(Path(__file__).resolve().parent) + os.sep  # .../helpers/checks/
_THIS_FILE = str(Path(__file__).resolve())
# Answers the course's own tests hand to a check although they call the reference: the catalogues'
# implementations (tests/conftest.py registers each Mistake and Probe as it is made). Empty in a
# learner's kernel, so building a Mistake there exempts nothing.
EXEMPT_IN_TESTS: set[Any] = set()


# torch's C functions report private homes; learners know them by their public names
_PUBLIC_HOMES = {"torch._C._nn": "torch.nn.functional", "torch._C._VariableFunctionsClass": "torch",
                 "torch._VariableFunctionsClass": "torch",
                 "torch._C._VariableFunctions": "torch"}


def exporting_modules(module: str, qualname: str) -> list[str]:
    """`module` and each course package above it that re-exports the object `qualname` names (its
    class, for a method) under the same name, outermost last: helpers.blocks.decoder's
    decoder_forward is also helpers.blocks.decoder_forward, the name learners know."""
    owner = qualname.split(".")[0]
    found = vars(sys.modules[module]).get(owner) if module in sys.modules else None
    paths, package = [module], module.rpartition(".")[0]
    while found is not None and package.startswith("helpers.") and package in sys.modules:
        if vars(sys.modules[package]).get(owner) is found:
            paths.append(package)
        package = package.rpartition(".")[0]
    return paths


def _label(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None) or "torch"
    qualname = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    owner, _, name = qualname.rpartition(".")
    if f"{module}.{owner}".rstrip(".") in _PUBLIC_HOMES:
        return f"{_PUBLIC_HOMES[f'{module}.{owner}'.rstrip('.')]}.{name}"
    if module.startswith("helpers."):
        module = exporting_modules(module, qualname)[-1]
    return f"{_PUBLIC_HOMES.get(module, module)}.{qualname}"


class _Forbidden:
    """What an answer may not call: the chapter's reference module, torch built-ins, the checks."""

    def __init__(self, forbidden: Sequence[Any]) -> None:
        self.files: dict[str, str] = {}
        self.codes: dict[types.CodeType, str] = {}
        self.c_functions: dict[int, tuple[Any, str]] = {}
        for obj in forbidden:
            if isinstance(obj, types.ModuleType):  # a package (helpers.blocks): its modules' code, named by it
                for part in _with_its_modules(obj):
                    self.files[str(Path(part.__file__).resolve())] = obj.__name__
            elif getattr(obj, "__code__", None) is not None:
                self.codes[obj.__code__] = _label(obj)
            else:
                self.c_functions[id(obj)] = (obj, _label(obj))

    def _code_label(self, code: types.CodeType) -> str | None:
        if code in self.codes:
            return self.codes[code]
        filename = code.co_filename
        if filename in self.files:
            return f"{self.files[filename]}.{code.co_name}"
        if filename.startswith(_CHECKS_DIR) and filename != _THIS_FILE:
            return f"the checks' own code ({code.co_name})"
        return None

    def direct(self, fn: Any) -> str | None:
        """The label of `fn` if the answer *is* a forbidden function (possibly wrapped)."""
        if fn in EXEMPT_IN_TESTS:
            return None
        target = fn
        for _ in range(10):
            target = inspect.unwrap(getattr(target, "__func__", target))
            if isinstance(target, functools.partial):
                target = target.func
            else:
                break
        if id(target) in self.c_functions and self.c_functions[id(target)][0] is target:
            return self.c_functions[id(target)][1]
        code = getattr(target, "__code__", None)
        return self._code_label(code) if code is not None else None

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[str]]:
        """Record calls into forbidden code made by code outside `helpers` (the learner's)."""
        hits: list[str] = []

        def profiler(frame: types.FrameType, event: str, arg: Any) -> None:
            if event == "call":
                label = self._code_label(frame.f_code)
                caller = frame.f_back
                if label and (caller is None or not caller.f_code.co_filename.startswith(_HELPERS_DIR)):
                    hits.append(label)
            elif event == "c_call":
                entry = self.c_functions.get(id(arg))
                if entry and entry[0] is arg and not frame.f_code.co_filename.startswith(_HELPERS_DIR):
                    hits.append(entry[1])

        previous = sys.getprofile()
        paused = None
        if previous is not None and not callable(previous) and callable(getattr(previous, "disable", None)):
            # A C-level profiler is running (cProfile, IPython's %prun): sys.setprofile cannot put it
            # back, so pause it and re-enable it afterwards. call_learner then repeats the learner's
            # call under it, so the profile still shows the learner's code.
            previous.disable()
            paused, previous = previous, None
        sys.setprofile(profiler)
        try:
            yield hits
        finally:
            sys.setprofile(previous)
            if paused is not None:
                paused.enable()


class ShapeRecorder(torch.overrides.TorchFunctionMode):
    """Records the shape of every tensor a torch function or method returns while it is active, so a
    check can see how an answer computes (for example how wide a block of scores it forms). Defined
    here because the forbidden-call watcher does not count this file's code as the checks' own."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for out in (result if isinstance(result, (tuple, list)) else (result,)):
            if isinstance(out, torch.Tensor):
                self.shapes.append(tuple(out.shape))
        return result


def _c_profiler_running() -> bool:
    current = sys.getprofile()
    return current is not None and not callable(current)


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def call_learner(fn: Any, name: str, case: Case, forbidden: Sequence[Any] = ()) -> Any:
    """Call the learner's function on one case; translate every way it can go wrong."""
    if not callable(fn):
        raise CheckFailed(f"{name} should be a function; got {type(fn).__name__}")
    rules = _Forbidden(forbidden)
    refused = rules.direct(fn)
    if refused:
        raise CheckFailed(
            f"{name} is {refused}, not your own function; this exercise asks you to write it "
            f"yourself, and an answer that is the reference or torch's built-in scores no points"
        )
    originals = [_clone(a) for a in case.args]
    verify_environment()
    try:
        # Anything on stderr zeroes a graded cell: silence warnings, send the answer's own
        # stderr prints to stdout, where the learner still sees them.
        with warnings.catch_warnings(), contextlib.redirect_stderr(sys.stdout):
            warnings.simplefilter("ignore")
            with rules.watching() as hits:
                result = fn(*case.args)
            if _c_profiler_running():  # the learner is profiling (%prun): let the profiler see their code too
                fn(*[_clone(a) for a in originals])
    except NotImplementedError:
        raise CheckFailed(
            f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code, "
            f"run that cell, then run this one"
        ) from None
    except CheckFailed:
        raise
    except Exception as error:
        raise CheckFailed(
            f"{name} raised {type(error).__name__}: {error} (called with {case.describe_inputs()})"
        ) from None
    verify_environment()
    if hits:
        raise CheckFailed(
            f"{name} calls {hits[0]}, which is what this exercise asks you to write yourself; "
            f"an answer that calls the reference or torch's built-in scores no points"
        )
    for arg_name, before, after in zip(case.arg_names, originals, case.args):
        if isinstance(before, torch.Tensor) and before.device.type != "meta" and not torch.equal(before, after.detach()):
            if before.is_floating_point() or before.dtype == torch.bool:
                fix = "return a new tensor instead (for example masked_fill rather than masked_fill_)"
            else:  # ids, indices: changed to try something out
                fix = (f"change a copy instead ({arg_name}.clone()) and leave {arg_name} as it was: the caller "
                       f"still needs it")
            raise CheckFailed(f"{name} modified its input {arg_name} in place; {fix}")
    return result


# ---------------------------------------------------------------------------------------------
# Comparing outputs
# ---------------------------------------------------------------------------------------------

# As tight as each dtype allows: the course's one rule (helpers.numerics), read once at import so
# that nothing a notebook does later can loosen it.
_TOLERANCE = {dtype: (tolerances(dtype)["rtol"], tolerances(dtype)["atol"])
              for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _values_problem(what: str, got: torch.Tensor, expected: torch.Tensor) -> str | None:
    """None when equal within tolerance (NaN where expected NaN, the same infinities), else why not."""
    got = got.detach().cpu()
    expected = expected.detach().cpu()
    if got.dtype == torch.bool or not got.is_floating_point():
        diff = got != expected
        if not diff.any():
            return None
        index = tuple(int(i) for i in diff.nonzero()[0])
        return (f"{what} is {got[index].item()!r} at index {index}, where {expected[index].item()!r} "
                f"was expected ({int(diff.sum())} of {diff.numel()} entries differ)")
    got_nan, exp_nan = torch.isnan(got), torch.isnan(expected)
    if (got_nan & ~exp_nan).any():
        index = tuple(int(i) for i in (got_nan & ~exp_nan).nonzero()[0])
        return f"{what} contains NaN (first at index {index}); expected finite numbers there"
    rtol, atol = _TOLERANCE.get(expected.dtype, (1e-7, 1e-7))
    both_inf = torch.isinf(got) & torch.isinf(expected) & (torch.sign(got) == torch.sign(expected))
    finite = ~(got_nan | exp_nan | both_inf)
    error = torch.where(finite, (got - expected).abs(), torch.zeros((), dtype=got.dtype))
    allowed = atol + rtol * expected.abs()
    bad = (finite & ((error > allowed) | torch.isinf(got) | torch.isinf(expected))) | (exp_nan & ~got_nan)
    if not bad.any():
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    return (f"{what} differs from the reference in {int(bad.sum())} of {bad.numel()} entries; first at "
            f"index {index}: got {got[index].item():.6g}, expected {expected[index].item():.6g}")


def compare(got: Any, expected: Any, output_names: Sequence[str], sizes: Mapping[str, int], fn_name: str) -> str | None:
    """None if `got` equals `expected` (a tensor, or a tuple of tensors named by output_names)."""
    if len(output_names) > 1:
        if not isinstance(got, (tuple, list)) or len(got) != len(output_names):
            kind = f"a {type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            return f"{fn_name} should return a tuple ({', '.join(output_names)}); it returned {kind}"
        pairs = list(zip(output_names, got, expected))
    else:
        pairs = [(output_names[0], got, expected)]
    for what, g, e in pairs:
        if not isinstance(g, torch.Tensor):
            return f"{what} should be a torch.Tensor; {fn_name} returned a {type(g).__name__}"
        if g.shape != e.shape:
            return (f"{what} has shape {named_shape(g.shape, sizes)}; expected "
                    f"{named_shape(e.shape, sizes)}")
        if g.dtype != e.dtype:
            hint = " (boolean masks mean True = may attend)" if e.dtype == torch.bool else " (keep the input's dtype)"
            return f"{what} has dtype {g.dtype}; expected {e.dtype}{hint}"
        problem = _values_problem(what, g, e)
        if problem:
            return problem
    return None


def _nan_to_zero(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return torch.nan_to_num(value.detach(), nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    if isinstance(value, (tuple, list)):
        return type(value)(_nan_to_zero(v) for v in value)
    return value


def _matching_mistake(got: Any, mistakes: Sequence[Mistake], case: Case, outputs: Sequence[str],
                      name: str) -> Mistake | None:
    """The catalogued mistake whose output equals `got` on this case, if any.

    A second pass reads NaN in `got` as 0: a learner who made a catalogued mistake and also let
    fully blocked rows become NaN is told about the catalogued mistake first.
    """
    wrong_outputs = []
    for mistake in mistakes:
        try:
            wrong_outputs.append((mistake, mistake.impl(*case.args)))
        except Exception:  # a mistake that cannot run on this case cannot match it
            continue
    for candidate in (got, _nan_to_zero(got)):
        for mistake, wrong in wrong_outputs:
            if compare(candidate, wrong, outputs, case.sizes, name) is None:
                return mistake
    return None


# ---------------------------------------------------------------------------------------------
# Probing: naming a mistake that no catalogue lists
# ---------------------------------------------------------------------------------------------

# A probe is named when the learner's output equals it within the course's tolerance, or when both
# (1) it lies within PROBE_NEAR of the probe (relative root-mean-square distance), and
# (2) it is at least 1 / PROBE_MARGIN times closer to that probe than to the reference and to any
#     other probe.
# (2) keeps a probe from being blamed for an answer that is wrong in some other way (it is then about
# as far from every variant); (1) keeps "the least wrong of many wrong variants" from being named.
# Together they still name a probe's mistake with a small second slip on top (an eps, a rounding
# order, a stray factor of 1.01): tests/test_probes.py pins both sides.
PROBE_NEAR = 0.05
PROBE_MARGIN = 0.1


def _flat_outputs(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def output_distance(got: Any, reference: Any) -> float:
    """Relative root-mean-square distance of `got` from `reference` over all their outputs (0 = equal,
    inf = another layout, or NaN / infinities where the other has none)."""
    if not _same_layout(got, reference):
        return math.inf
    num = den = 0.0
    for g, e in zip(_flat_outputs(got), _flat_outputs(reference)):
        g, e = g.detach().cpu(), e.detach().cpu()
        if not e.is_floating_point():
            num += float((g != e).sum())
            den += float(e.numel())
            continue
        g, e = g.double(), e.double()
        same_special = (torch.isnan(g) & torch.isnan(e)) | (torch.isinf(g) & (g == e))
        finite = torch.isfinite(g) & torch.isfinite(e)
        if bool((~(same_special | finite)).any()):
            return math.inf
        num += float(((g - e)[finite] ** 2).sum())
        den += float((e[finite] ** 2).sum())
    if num == 0.0:
        return 0.0
    return math.sqrt(num / den) if den > 0 else math.inf


def closest_probe(got: Any, expected: Any, probes: Sequence[Mistake], case: Case, outputs: Sequence[str],
                  name: str) -> tuple[Mistake, bool] | None:
    """(probe, exact) for the probe `got` clearly is (see PROBE_NEAR, PROBE_MARGIN), else None."""
    runs = []
    for probe in probes:
        try:
            runs.append((probe, probe.impl(*case.args)))
        except Exception:  # a probe that cannot run on this case says nothing about it
            continue
    for probe, value in runs:
        if compare(got, value, outputs, case.sizes, name) is None:
            return probe, True
    distances = [(output_distance(got, value), probe) for probe, value in runs]
    distances = [(d, p) for d, p in distances if math.isfinite(d)]
    if not distances:
        return None
    best, probe = min(distances, key=lambda pair: pair[0])
    rivals = [output_distance(got, expected)] + [d for d, p in distances if p is not probe]
    if best <= PROBE_NEAR and all(best <= PROBE_MARGIN * r for r in rivals):
        return probe, False
    return None


def constant_factor(got: Any, expected: Any, outputs: Sequence[str]) -> str | None:
    """The sentence for an output that is the reference times one constant (a scale that is off)."""
    for what, g, e in zip(outputs, _flat_outputs(got), _flat_outputs(expected)):
        if not (isinstance(g, torch.Tensor) and g.is_floating_point() and g.shape == e.shape):
            return None
        g, e = g.detach().cpu().double(), e.detach().cpu().double()
        if not (torch.isfinite(g).all() and torch.isfinite(e).all()) or float((e * e).sum()) == 0.0:
            return None
        if output_distance(g, e) < 1e-6:
            continue  # this output is right; look at the next one
        c = float((g * e).sum() / (e * e).sum())
        if abs(c) > 1e-6 and output_distance(g, c * e) < 1e-4:
            return (f"{what} is the right answer times {c:.4g} everywhere: one constant factor is off (a scale, "
                    f"or a division or multiplication too many or too few)")
        return None
    return None


def _same_layout(got: Any, expected: Any) -> bool:
    """Same structure, shapes and dtypes: only the values differ."""
    if isinstance(expected, tuple):
        return (isinstance(got, (tuple, list)) and len(got) == len(expected)
                and all(_same_layout(g, e) for g, e in zip(got, expected)))
    return isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype


# ---------------------------------------------------------------------------------------------
# Prerequisites: a failure caused by an earlier exercise's function
# ---------------------------------------------------------------------------------------------

# A prerequisite: the earlier exercise's check (called as `check(fn)`, and `check(fn, dtype=...)`
# when it takes a dtype) and where the learner wrote that function, e.g. "exercise 1".
Prerequisite = tuple[Callable[..., Any], str]

_LIBRARY_DIRS = tuple({str(Path(p).resolve()) + os.sep for p in (
    os.path.dirname(os.__file__), os.path.dirname(os.path.dirname(np.__file__)), _TORCH_DIR)})
_PREREQUISITES_RUNNING: set[int] = set()  # ids of functions whose prerequisite checks are running


def _learner_function(obj: Any) -> bool:
    """A plain Python function written outside the course's and the libraries' code (a notebook's)."""
    if not isinstance(obj, types.FunctionType):
        return False
    filename = obj.__code__.co_filename
    if filename.startswith("<") or not os.path.isabs(filename):
        return True  # exec'd or interactive code
    path = str(Path(filename).resolve())
    return not path.startswith(_HELPERS_DIR) and not path.startswith(_LIBRARY_DIRS)


def _global_names(code: types.CodeType) -> Iterator[str]:
    """The names `code` (and the functions, lambdas and comprehensions inside it) load as globals.
    Attribute names are not among them: `F.gelu` does not use the learner's own `gelu`."""
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _used_prerequisites(fn: Any, prerequisites: Mapping[str, Prerequisite]) -> dict[str, Any]:
    """The learner's functions named in `prerequisites` that `fn` uses: the names its code refers
    to in its globals, followed through the learner's own helper functions."""
    found: dict[str, Any] = {}
    seen: set[int] = set()
    try:
        start = inspect.unwrap(fn)
    except ValueError:  # a wrapper chain without end
        return {}
    pending = [start] if _learner_function(start) else []
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for global_name in dict.fromkeys(_global_names(current.__code__)):
            value = current.__globals__.get(global_name)
            if not _learner_function(value):
                continue
            if global_name in prerequisites and value is not start:
                found.setdefault(global_name, value)
            pending.append(value)
    return {name: found[name] for name in prerequisites if name in found}  # in exercise order


def _prerequisite_problem(check: Callable[..., Any], earlier: Any, cases: Sequence[Case]) -> str | None:
    """The earlier check's sentence if `earlier` fails it (run silently), else None.

    The earlier check runs with its defaults, then with the dtypes of the failing check's cases,
    then with their axis sizes where it takes them (an earlier function that only works for the
    visible test's sizes is found too)."""
    try:
        parameters = inspect.signature(check).parameters
    except (TypeError, ValueError):
        parameters = {}
    runs: list[dict[str, Any]] = [{}]
    for case in cases:
        dtypes = [a.dtype for a in case.args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if dtypes and "dtype" in parameters and {"dtype": dtypes[0]} not in runs:
            runs.append({"dtype": dtypes[0]})
    for case in cases:
        sized = {axis: int(size) for axis, size in case.sizes.items() if axis in parameters and axis != "dtype"}
        dtypes = [a.dtype for a in case.args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if dtypes and "dtype" in parameters:
            sized["dtype"] = dtypes[0]
        if sized and sized not in runs:
            runs.append(sized)
    for kwargs in runs:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                check(earlier, **kwargs)
        except CheckFailed as failure:
            return str(failure)
        except Exception:  # the earlier check could not run: no blame, the original failure stands
            return None
    return None


@contextlib.contextmanager
def _blame_prerequisites(fn: Any, name: str, prerequisites: Mapping[str, Prerequisite],
                         cases: Sequence[Case]) -> Iterator[None]:
    """On a failure of `fn`'s check, name the earlier exercise whose function `fn` uses and which
    fails its own check: that is what to fix first. Nothing runs when the check passes."""
    try:
        yield
    except CheckFailed:
        if id(fn) in _PREREQUISITES_RUNNING:
            raise
        verify_environment()  # a patched library is the problem to report, not an earlier exercise
        _PREREQUISITES_RUNNING.add(id(fn))
        try:
            for dep, earlier in _used_prerequisites(fn, prerequisites).items():
                check, exercise = prerequisites[dep]
                problem = _prerequisite_problem(check, earlier, cases)
                if problem is not None:
                    problem = problem.removeprefix(f"{dep}: ")
                    raise CheckFailed(
                        f"{name} uses your `{dep}` from {exercise}, which is not right yet: {problem}; "
                        f"fix {exercise} first, then run this check again") from None
        finally:
            _PREREQUISITES_RUNNING.discard(id(fn))
        raise


# ---------------------------------------------------------------------------------------------
# After the values: gradients, dtype and device
# ---------------------------------------------------------------------------------------------

_CUT_OFF = ("your output is cut off from autograd: {what} does not require grad although the inputs "
            "do (the reference's does). That happens with .detach(), a round trip through NumPy, "
            ".tolist()/float()/.item(), torch.no_grad() inside the function, or an output built with "
            "torch.tensor(...) from values; compute it with torch operations on the input tensors "
            "(torch.stack/torch.cat, or index assignment into torch.empty(..., dtype=x.dtype, "
            "device=x.device))")


def _floating(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _differentiable(case: Case) -> bool:
    """A case whose floating inputs can carry gradients (random-number cases are left alone)."""
    return (not any(isinstance(a, torch.Generator) for a in case.args)
            and any(_floating(a) for a in case.args))


def _converted(case: Case, convert: Callable[[torch.Tensor], torch.Tensor]) -> Case:
    args = tuple(convert(a) if isinstance(a, torch.Tensor) else a for a in case.args)
    return Case(args, case.sizes, case.arg_names, case.note)


def _requiring_grad(case: Case) -> Case:
    return _converted(case, lambda a: a.detach().clone().requires_grad_(True) if _floating(a) else a.detach().clone())


def _named(value: Any, outputs: Sequence[str]) -> list[tuple[str, Any]]:
    if len(outputs) > 1 and isinstance(value, (tuple, list)):
        return list(zip(outputs, value))
    return [(outputs[0], value)]


def _gradient_loss(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum(output * w) with fixed random weights w, over the entries where the reference is finite."""
    gen = torch.Generator().manual_seed(20240)
    total = 0
    for out, ref in zip(outs, refs):
        w = torch.randn(tuple(ref.shape), generator=gen, dtype=torch.float64).to(ref.dtype).to(ref.device)
        finite = torch.isfinite(ref.detach())
        total = total + (torch.where(finite, out, torch.zeros((), dtype=out.dtype, device=out.device)) * w).sum()
    return total


def _tracked_outputs(reference: Callable[..., Any], case: Case, outputs: Sequence[str]
                     ) -> tuple[Case, list[tuple[str, torch.Tensor]]]:
    """The reference run on the case's inputs made to require grad: (that case, its floating outputs
    on the autograd graph, by name)."""
    ref_case = _requiring_grad(case)
    with torch.enable_grad():
        expected = reference(*ref_case.args)
    return ref_case, [(what, e) for what, e in _named(expected, outputs) if _floating(e) and e.requires_grad]


def _learner_outputs_on_graph(fn: Any, name: str, case: Case, outputs: Sequence[str], forbidden: Sequence[Any],
                              tracked: Sequence[tuple[str, torch.Tensor]], where: str
                              ) -> tuple[Case, dict[str, Any]]:
    """The learner's function run on the case's inputs made to require grad: (that case, its outputs by
    name); CheckFailed when an output the reference keeps on the graph is cut off from it."""
    learner_case = _requiring_grad(case)
    try:
        with torch.enable_grad():
            got = call_learner(fn, name, learner_case, forbidden)
    except CheckFailed as failure:
        if "requires grad" in str(failure):  # x.numpy() on a tensor that requires grad
            raise CheckFailed(f"{_CUT_OFF.format(what=name + ' output')} [{failure}]") from None
        raise
    got_by_name = dict(_named(got, outputs))
    for what, _ in tracked:
        value = got_by_name.get(what)
        if not isinstance(value, torch.Tensor) or not value.requires_grad:
            raise CheckFailed(_CUT_OFF.format(what=f"{name}'s {what}{where}"))
    return learner_case, got_by_name


def _learner_gradients(name: str, where: str, got: Sequence[torch.Tensor], tracked: Sequence[torch.Tensor],
                       inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """The gradients of _gradient_loss through the learner's outputs `got` with respect to its inputs;
    CheckFailed naming the in-place operation when the backward pass fails."""
    try:
        with torch.enable_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(sys.stdout):
            warnings.simplefilter("ignore")
            return torch.autograd.grad(_gradient_loss(got, tracked), inputs, allow_unused=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckFailed(
            f"{name}{where}: the values are right but the backward pass through your output fails "
            f"({type(error).__name__}: {first}); an in-place operation (x[...] = ..., x += ..., a method "
            f"ending in _) changed a tensor autograd had saved: compute a new tensor instead"
        ) from None


def _compare_gradients(name: str, where: str, case: Case, input_names: Sequence[str],
                       ref_grads: Sequence[torch.Tensor | None], got_grads: Sequence[torch.Tensor | None],
                       ref_inputs: Sequence[torch.Tensor]) -> None:
    """CheckFailed for the first input whose gradient the learner's output does not pass on, or passes
    on with other values than the reference's (where the reference's is a number)."""
    for arg_name, g_ref, g_got, inp in zip(input_names, ref_grads, got_grads, ref_inputs):
        if g_got is None and g_ref is not None and bool((g_ref != 0).any()):
            raise CheckFailed(_CUT_OFF.format(what=f"no gradient reaches {arg_name} from {name}'s output{where}")
                              .replace("does not require grad although the inputs do", "(the output does not "
                                       f"depend on {arg_name} as far as autograd can see)"))
        g_ref = torch.zeros_like(inp) if g_ref is None else g_ref
        g_got = torch.zeros_like(inp) if g_got is None else g_got
        undefined = ~torch.isfinite(g_ref)  # where the reference's gradient is not a number, any is accepted
        g_ref, g_got = g_ref.masked_fill(undefined, 0), g_got.masked_fill(undefined, 0)
        problem = _values_problem(f"the gradient with respect to {arg_name}", g_got, g_ref)
        if problem:
            raise CheckFailed(
                f"{name}{where}: the values are right but the gradient with respect to {arg_name} is "
                f"not: {problem}. Autograd must see the computation that produces the output (no "
                f".detach() tricks, no custom backward) [inputs: {case.describe_inputs()}]"
            )


def _check_autograd(fn: Any, name: str, reference: Callable[..., Any], case: Case, outputs: Sequence[str],
                    forbidden: Sequence[Any], gradients: bool) -> None:
    """The learner's output must stay on the autograd graph and its backward pass must run; with
    `gradients`, its gradients must equal the reference's."""
    where = f" ({case.note})" if case.note else ""
    ref_case, tracked = _tracked_outputs(reference, case, outputs)
    if not tracked:
        return
    learner_case, got_by_name = _learner_outputs_on_graph(fn, name, case, outputs, forbidden, tracked, where)
    ref_inputs = [a for a in ref_case.args if _floating(a)]
    got_inputs = [a for a in learner_case.args if _floating(a)]
    input_names = [n for n, a in zip(case.arg_names, case.args) if _floating(a)]
    expected = [e for _, e in tracked]
    with torch.enable_grad():  # a check may run under torch.no_grad (an nn.Module's fast path)
        ref_grads = torch.autograd.grad(_gradient_loss(expected, expected), ref_inputs, allow_unused=True)
    got_grads = _learner_gradients(name, where, [got_by_name[w] for w, _ in tracked], expected, got_inputs)
    verify_environment()
    if not gradients:  # float32: the backward pass must run; its values are compared on float64 cases
        return
    _compare_gradients(name, where, case, input_names, ref_grads, got_grads, ref_inputs)


def _float64_probe(fn: Any, name: str, reference: Callable[..., Any], cases: Sequence[Case],
                   outputs: Sequence[str], forbidden: Sequence[Any], gradients: bool) -> None:
    """All cases were float32: run one in float64, so an answer fixed to float32 is named now."""
    tensors = [a for case in cases for a in case.args if _floating(a)]
    if not tensors or any(t.dtype != torch.float32 for t in tensors):
        return
    case = next((c for c in cases if _differentiable(c)), None)
    if case is None:
        return
    case = _converted(case, lambda a: a.to(torch.float64) if _floating(a) else a)
    lead = f"{name} works in float32 but not in float64"
    advice = ("keep the input's dtype: create new tensors with dtype=x.dtype (or torch.zeros_like/"
              "new_zeros), not a hard-coded torch.float32")
    try:
        expected = reference(*case.args)
    except Exception:  # this exercise's inputs come together in one dtype (a module's weights): no probe
        return
    try:
        got = call_learner(fn, name, case, forbidden)
    except CheckFailed as failure:
        raise CheckFailed(f"{lead}: {failure}; {advice}") from None
    problem = compare(got, expected, outputs, case.sizes, name)
    if problem:
        raise CheckFailed(f"{lead}: {problem}; {advice} [inputs: {case.describe_inputs()}]")
    _check_autograd(fn, name, reference, case, outputs, forbidden, gradients)


# Errors a CUDA device raises too: these name a CPU-only answer. Anything else that fails on `meta`
# (.item(), data-dependent indexing, copying values out) works on a real GPU and is not blamed.
_DEVICE_ERRORS = ("same device", "two devices", "not on the expected device", "to numpy", "numpy()",
                  "expected device", "device type tensor")
_CPU_ONLY = ("creates a tensor on the CPU (pass device=x.device, or use torch.zeros_like/x.new_zeros) "
             "or goes through NumPy or .cpu(); keep the input's device")


def _device_probe(fn: Any, name: str, reference: Callable[..., Any], cases: Sequence[Case],
                  outputs: Sequence[str], forbidden: Sequence[Any]) -> None:
    """Run one case on a second device (the GPU when there is one, else PyTorch's `meta` device)."""
    # Only cases made of tensors and plain values: a module or a function among the arguments keeps
    # its own weights on the CPU, and moving those is not the learner's job.
    plain = (torch.Tensor, int, float, bool, str, type(None), torch.dtype)
    case = next((c for c in cases if all(isinstance(a, plain) for a in c.args)
                 and any(isinstance(a, torch.Tensor) for a in c.args)), None)
    if case is None:
        return
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("meta")
    real = device.type != "meta"
    moved = _converted(case, lambda a: a.to(device))
    try:
        expected = reference(*moved.args)
    except Exception:  # the reference reads values (meta has none): the learner's output is not compared
        if real:
            return
        expected = None
    lead = f"{name} works only on CPU tensors"
    try:
        got = call_learner(fn, name, moved, forbidden)
    except CheckFailed as failure:
        if real or any(s in str(failure) for s in _DEVICE_ERRORS):
            raise CheckFailed(f"{lead}: on {device.type} inputs it fails ({failure}); it {_CPU_ONLY}") from None
        return  # meta-only failure (.item(), data-dependent ops): it would work on a GPU
    for what, g in _named(got, outputs):
        if isinstance(g, torch.Tensor) and g.device.type != device.type:
            raise CheckFailed(f"{lead}: for inputs on {device.type}, its {what} is on {g.device.type}; it "
                              f"{_CPU_ONLY}")
    if real:
        problem = compare(got, expected, outputs, case.sizes, name)
        if problem:
            raise CheckFailed(f"{lead}: on {device.type} inputs, {problem}")


@on_one_thread
def check_function(
    fn: Any,
    *,
    name: str,
    reference: Callable[..., Any],
    cases: Sequence[Case],
    outputs: Sequence[str] = ("output",),
    mistakes: Sequence[Mistake] = (),
    forbidden: Sequence[Any] = (),
    diagnose: Callable[[Any, Any, Case], str | None] | None = None,
    probes: Sequence[Mistake] = (),
    prerequisites: Mapping[str, Prerequisite] | None = None,
    gradients: bool = True,
    structure: Callable[[Any, Case], str | None] | None = None,
) -> None:
    """Compare `fn` with `reference` on every case; name a catalogued mistake when one matches, else
    a probe the output clearly is, else a constant factor, else what `diagnose` finds (which
    intermediate went wrong first), else the first difference.

    Once the values are right: where the reference's floating output carries gradients, the
    learner's must too, and on float64 cases its gradients must equal the reference's
    (`gradients=False` skips both, for outputs that are legitimately not differentiable); an answer
    checked only in float32 is re-run on one case in float64, and one case runs on a second device
    (the GPU, else `meta`), so an answer fixed to float32 or to the CPU is named.

    `prerequisites` maps the names of earlier exercises' functions that `fn` may call to
    (their check, "exercise N"): when `fn` fails and uses one that fails its own check, the
    message says so (see `_blame_prerequisites`).

    `structure(fn, case)`, run on every case once the values match, says how the answer computes
    what the exercise asks it to compute another way (for example the whole score matrix where the
    exercise asks for blocks of keys), or None."""
    if prerequisites:
        parameters = inspect.signature(check_function).parameters  # the same call, minus prerequisites
        kwargs = {k: v for k, v in locals().items() if k in parameters and k not in ("fn", "prerequisites")}
        with _blame_prerequisites(fn, name, prerequisites, cases):
            return check_function(fn, **kwargs)
    verify_environment()
    for case in cases:
        expected = reference(*case.args)
        got = call_learner(fn, name, case, forbidden)
        problem = compare(got, expected, outputs, case.sizes, name)
        if problem is None:
            continue
        where = f" ({case.note})" if case.note else ""
        mistake = _matching_mistake(got, mistakes, case, outputs, name)
        if mistake is not None:
            raise CheckFailed(f"{name}{where}: {mistake.message}")
        if not _same_layout(got, expected):
            raise CheckFailed(f"{name}{where}: {problem} [inputs: {case.describe_inputs()}]")
        found = closest_probe(got, expected, probes, case, outputs, name) if probes else None
        if found is not None:
            probe, exact = found
            nearly = "" if exact else " (your output is not exactly that, but far closer to it than to the right answer)"
            raise CheckFailed(f"{name}{where}: {probe.message}{nearly}")
        symptom = (diagnose(got, expected, case) if diagnose else None) or constant_factor(got, expected, outputs)
        raise CheckFailed(f"{name}{where}: {symptom or problem} [inputs: {case.describe_inputs()}]")
    if structure is not None:
        for case in cases:
            problem = structure(fn, case)
            if problem is not None:
                raise CheckFailed(f"{name}" + (f" ({case.note})" if case.note else "") + f": {problem}")
    if gradients:
        for case in cases:
            if _differentiable(case):
                float64 = any(_floating(a) and a.dtype == torch.float64 for a in case.args)
                _check_autograd(fn, name, reference, case, outputs, forbidden, gradients=float64)
    _float64_probe(fn, name, reference, cases, outputs, forbidden, gradients)
    _device_probe(fn, name, reference, cases, outputs, forbidden)
    verify_environment()
    print(f"✓ {name}: matches the reference on " + ("its test case" if len(cases) == 1 else f"all {len(cases)} cases"))


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Standard normal numbers drawn in float64 from `gen`, then cast: the same values in every dtype."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def as_count(name: str, value: Any, verb: str = "returned") -> int:
    """A count the exercise says is an int: a Python int or a NumPy integer. A float (even 3.0) or a
    tensor is named, with the fix, rather than converted: the exercise asks for an int."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, torch.Tensor):
        shown = f" ({value.item()})" if value.numel() == 1 else ""
        kind = "a 0-d tensor" if value.dim() == 0 else f"a tensor of shape {fmt_shape(value.shape)}"
        raise CheckFailed(f"{name} {verb} {kind}{shown}; a count is a Python int: return int(...) or .item()")
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value) and value.is_integer():
            raise CheckFailed(f"{name} {verb} a float ({value}); a count is an int: use // for exact division, "
                              f"or int(...) on a whole number")
        raise CheckFailed(f"{name} {verb} {value}, which is not a whole number; a count is an integer "
                          f"(use // for exact division)")
    if isinstance(value, bool) or not isinstance(value, int):
        should = "should return a number (an int); it returned" if verb == "returned" else "should be a number (an int); got"
        raise CheckFailed(f"{name} {should} a {type(value).__name__}")
    return value


def _integer_problem(key: str, value: Any, target: float, tol: float, known: Sequence[tuple[float, str]]) -> None:
    """A count that is not an int: a catalogued wrong value is named first (it says more), else the type."""
    number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    if isinstance(number, (float, np.floating)) and abs(float(number) - target) > tol:
        for wrong, message in known:
            if abs(float(number) - wrong) <= max(tol, 1e-9 * abs(wrong)):
                raise CheckFailed(f"{key} = {number}: {message}")
    as_count(key, value, verb="is")


def check_numbers(
    answers: Mapping[str, Any],
    expected: Mapping[str, float],
    *,
    tolerance: Mapping[str, float] | None = None,
    mistakes: Mapping[str, Sequence[tuple[float, str]]] | None = None,
    hints: Mapping[str, str] | None = None,
    name: str = "this check",
    integers: Iterable[str] = (),
) -> None:
    """Numeric answers: each must be a number within its tolerance; known wrong values are named.
    `name` (the check's name) is used when an answer is not passed at all; the keys in `integers`
    are counts the exercise says are ints (a float or a tensor there is named, see `as_count`)."""
    integers = set(integers)
    unknown = integers - set(expected)
    if unknown:
        raise ValueError(f"check_numbers: integers names keys with no expected value: {sorted(unknown)}")
    verify_environment()
    missing = [key for key in expected if key not in answers]
    if missing:
        raise CheckFailed(f"{name} needs an answer for {', '.join(missing)}")
    tolerance = tolerance or {}
    for key, target in expected.items():
        value = answers.get(key)
        if value is None:
            raise CheckFailed(f"{key} has no answer yet: assign a number to it and run its cell")
        if key in integers and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            _integer_problem(key, value, target, tolerance.get(key, 0.0), (mistakes or {}).get(key, ()))
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise CheckFailed(f"{key} should be a number; got {type(value).__name__}")
        tol = tolerance.get(key, 0.0)
        if abs(float(value) - target) <= tol:
            continue
        for wrong, message in (mistakes or {}).get(key, ()):
            if abs(float(value) - wrong) <= max(tol, 1e-9 * abs(wrong)):
                raise CheckFailed(f"{key} = {value}: {message}")
        hint = (hints or {}).get(key)
        raise CheckFailed(f"{key} = {value} is not right" + (f"; {hint}" if hint else ""))
    verify_environment()
    print(f"✓ all {len(expected)} answers are right")


# ---------------------------------------------------------------------------------------------
# Answers assigned in a cell (names, numbers): computed by what the exercise forbids?
# ---------------------------------------------------------------------------------------------

# Every cell the IPython kernel runs from the import of the checks on (each chapter's notebook imports
# its checks in the setup cell, before any answer): IPython's history `In` is empty when cells run with
# store_history=False, as nbval runs them. Also read by `recompute`.
CELLS: list[str] = []


def _record_cell(info: Any) -> None:
    CELLS.append(getattr(info, "transformed_cell", None) or info.raw_cell)


def _start_recording_cells() -> None:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the course
        return
    shell = get_ipython()
    if shell is not None and _record_cell not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _record_cell)


def _assigned_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr, ast.For)) else []
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _resolve(node: ast.AST, namespace: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(dotted name, object) of a name or an attribute chain of modules, read without running code."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in namespace:
        return None
    obj = namespace[node.id]
    for part in reversed(parts):
        if not isinstance(obj, types.ModuleType):  # only modules' attributes: no property runs
            return None
        obj = vars(obj).get(part)
    return ".".join([node.id, *reversed(parts)]), obj


def _ipython_cells_and_namespace(cells: Sequence[str] | None, namespace: Mapping[str, Any] | None
                                 ) -> tuple[Sequence[str], Mapping[str, Any]] | None:
    """The cells and namespace to read: those given, else the recorded cells (CELLS) and IPython's user
    namespace; None outside IPython (plain Python: the course's own tests call checks directly)."""
    if cells is not None and namespace is not None:
        return cells, namespace
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the course
        return None
    shell = get_ipython()
    if shell is None:  # plain Python (the course's own tests call checks directly)
        return None
    return (CELLS if cells is None else cells), (shell.user_ns if namespace is None else namespace)


def _parsed_cell(source: str) -> ast.Module | None:
    """A cell's code as a tree, its magics (%) and shell lines (!) blanked; None when it does not parse."""
    try:
        return ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line
                                   for line in source.splitlines()))
    except SyntaxError:
        return None


def _cell_names(tree: ast.Module, namespace: Mapping[str, Any], modules: set[str]
                ) -> tuple[dict[str, Any], str | None]:
    """The namespace with what the cell itself imports (from an imported module), and the first
    forbidden module (one of `modules`) the cell imports from, if any (the names are then partial)."""
    local = dict(namespace)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in sys.modules:
            for alias in node.names:
                local[alias.asname or alias.name] = vars(sys.modules[node.module]).get(alias.name)
            if node.module in modules:
                return local, node.module
    return local, None


def _forbidden_name_in(tree: ast.Module, local: Mapping[str, Any], rules: _Forbidden, by_id: dict[int, Any],
                       owners: dict[str, str]) -> str | None:
    """What the first forbidden whole name or attribute chain of the cell is: a class of a forbidden
    module (not a config dataclass), a function the rules refuse, or one of the forbidden objects."""
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):  # whole names only: `helpers.blocks.ModelConfig`, not `helpers.blocks`
        if not isinstance(node, (ast.Name, ast.Attribute)) or id(node) in inner:
            continue
        found = _resolve(node, local)
        if found is None:
            continue
        dotted, obj = found
        if isinstance(obj, type):
            # a class of a forbidden module (a model to measure), but not a config to read sizes from
            if obj.__module__ in owners and not dataclasses.is_dataclass(obj):
                return f"{owners[obj.__module__]}.{obj.__qualname__}"
        elif callable(obj):
            label = rules.direct(obj)
            if label and not label.startswith("the checks' own code"):
                return label
        if obj is not None and by_id.get(id(obj)) is obj:
            return dotted
    return None


def answers_computed_by(names: Iterable[str], forbidden: Sequence[Any], *, cells: Sequence[str] | None = None,
                        namespace: Mapping[str, Any] | None = None) -> tuple[str, str] | None:
    """(answers, what) when a cell that assigns some of the variables `names` (listed in `answers`,
    comma-separated) uses a forbidden object
    (a reference function, a module of them, an answer key): the call watcher of `call_learner` only
    runs while a check calls the learner's function, so a value computed in the answer cell itself
    is read here from the cell's code, each name looked up in the learner's namespace (an alias made
    in another cell is still recognised). Outside IPython, and with no cells recorded, nothing is found."""
    found = _ipython_cells_and_namespace(cells, namespace)
    if found is None:
        return None
    cells, namespace = found
    names = set(names)
    rules = _Forbidden([f for f in forbidden if isinstance(f, types.ModuleType) or callable(f)])
    by_id = {id(f): f for f in forbidden}
    modules = {f.__name__ for f in forbidden if isinstance(f, types.ModuleType)}
    # a class defined in a forbidden package's module (helpers.blocks.encoders), named by the package
    owners = {part.__name__: f.__name__ for f in forbidden if isinstance(f, types.ModuleType)
              for part in _with_its_modules(f)}
    for source in cells:
        tree = _parsed_cell(source)
        if tree is None:
            continue
        assigned = sorted(_assigned_names(tree) & names)
        if not assigned:
            continue
        local, module = _cell_names(tree, namespace, modules)
        what = module or _forbidden_name_in(tree, local, rules, by_id, owners)
        if what:
            return ", ".join(assigned), what
    return None


def refuse_answers_computed_by(names: Iterable[str], forbidden: Sequence[Any], *, cells: Sequence[str] | None = None,
                               namespace: Mapping[str, Any] | None = None) -> None:
    """CheckFailed when a cell assigning one of `names` uses a forbidden object (`answers_computed_by`;
    `cells` and `namespace` replace IPython's, for tests)."""
    found = answers_computed_by(names, forbidden, cells=cells, namespace=namespace)
    if found is not None:
        answer, what = found
        raise CheckFailed(f"the cell that sets {answer} uses {what}, which gives the answer away; this exercise "
                          f"asks you to work it out yourself, and an answer computed by the course's reference or "
                          f"read from its answer key scores no points")


_start_recording_cells()
_snapshot_libraries()
protect(sys.modules[__name__])
