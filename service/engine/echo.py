"""What a response shows of a student's answer: the answer itself when it is small, a bounded summary otherwise.

A result echoes the submission (`actual`, `formula`, the message). Echoed verbatim, a 5 MB wrong-shape list made a
15 MB Gradescope results.json, a list nested 300 deep overflowed the encoder's recursion (and orjson refuses more
than 254 levels), and a 40 KB formula came back twice. So an answer is echoed as it was sent only when it is a
tensor literal (rectangular, at most max_tensor_dims dimensions per point) with the checked shape (its size is
then the problem's, not the student's choice) or with at most ECHO_VALUES numbers; anything else is summarized in
at most ~ECHO_CHARS characters: the first numbers, an ellipsis, the true count and the shape or depth. Formulas
are cut at ECHO_CHARS characters with their true length. Every walk here is iterative: nesting cannot overflow it.
"""

from __future__ import annotations

from itertools import chain, islice

from .cost import slots
from .values import outline, sublists, tensor_shape

ECHO_VALUES = 100  # an answer of at most this many numbers is echoed as it was sent
ECHO_CHARS = 200  # a formula, a summary, at most about this many characters
PREVIEW_VALUES = 10  # numbers shown at the head of a summary
# Items (lists too) a summary's preview looks at, at most: a million empty lists hold no number to show, and a
# Python step each took 3.6 s (`[[[]]] * 1000000` as an answer, an audit); 4,096 steps are ~1 ms.
PREVIEW_STEPS = 4096
VALUE_CHARS = 24  # one number's text in a summary (a 4000-digit integer typed into a text box)


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` when it is at most `limit` characters, else its head, an ellipsis and its true length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def apart(got: float, want: float) -> tuple[str, str]:
    """An answer and its reference as a failed check's message prints them: to 6 significant digits, or as many more
    as it takes to tell them apart (rtol 1e-7: "you gave 0.123457, autograd gives 0.123457", a ninth audit); 17
    digits tell any two doubles apart."""
    for digits in range(6, 18):
        shown = f"{got:.{digits}g}", f"{want:.{digits}g}"
        if shown[0] != shown[1] or got == want:
            break
    return shown


def shape_of(value, max_dims: int) -> tuple[int, ...] | None:
    """The shape of a rectangular nested list of an answer's numbers (a number: ()), or None when it is ragged,
    mixed or nested deeper than max_dims: values.tensor_shape, which copies only the lists, never the numbers."""
    try:
        shape = tensor_shape(value)
    except ValueError:
        return None
    return shape if len(shape) <= max_dims else None


def _leaves(value, steps: int = PREVIEW_STEPS):
    """The non-list items of a nested list in row-major order, lazily (a stack of iterators, no recursion), among
    its first `steps` items (lists included): what is further on is not looked for."""
    stack = [iter([value])]
    for _ in range(steps):
        if not stack:
            return
        item = next(stack[-1], stack)
        if item is stack:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            yield item


def _walk(value) -> tuple[int, int, tuple[int, ...] | None]:
    """(numbers, depth, shape or None when ragged or mixed) of a nested list, level by level; only the lists are
    copied, never the numbers."""
    count, depth, shape, lists = 0, 0, [], [[value]]  # lists: those whose items are the level counted next
    while lists:
        items = sum(map(len, lists))
        types = set(map(type, chain.from_iterable(lists)))
        lists = sublists(lists, types)
        count += items - len(lists)
        if lists:
            depth += 1
            lengths = set(map(len, lists))
            shape = shape if shape is not None and types == {list} and len(lengths) == 1 else None
            if shape is not None:
                shape.append(lengths.pop())
    return count, depth, None if shape is None else tuple(shape)


# a preview's item that is not a number, by its JSON kind: str() of an object nested 990 deep overflowed the stack
_NOT_NUMBERS = {dict: "{…}", type(None): "null", True: "true", False: "false"}


def _number(value) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif type(value) is int:
        text = str(value)  # a request's integers fit 64 bits (orjson; an answer typed as text: problems._json_int)
    elif isinstance(value, str):
        text = value[: VALUE_CHARS + 1]
    else:
        text = _NOT_NUMBERS.get(value if type(value) is bool else type(value), type(value).__name__)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def summary(value, max_dims: int) -> str:
    """A bounded description of an answer that is not echoed: its first numbers, how many, its shape or depth."""
    count, depth, shape = _walk(value)
    head = [_number(v) for v in islice(_leaves(value), PREVIEW_VALUES)]
    preview = "[" + ", ".join(head + ["…"] if count > len(head) else head) + "]"
    if shape is not None and len(shape) <= max_dims:
        what = f"shape {list(shape)}"
    elif depth > max_dims:
        what = f"lists nested {depth} deep"
    else:
        what = f"ragged lists nested {depth} deep"
    return clip(f"{count} value(s) in {what}: {preview}")


def echoable(value, per_point: bool, max_dims: int) -> bool:
    """Whether an answer (with `per_point`, a list of one answer per point) may be echoed as it was sent when its
    shape is not the checked one: a tensor literal per point with at most ECHO_VALUES numbers in all (cost.slots():
    `[[]] * 1000000` holds no number but a million empty lists)."""
    values = value if per_point and isinstance(value, list) else [value]
    count = 0
    for item in values:
        count += slots(outline(item))  # its size if it has a shape at all (an empty row counts): known without a walk
        if count > ECHO_VALUES or shape_of(item, max_dims) is None:
            return False
    return True
