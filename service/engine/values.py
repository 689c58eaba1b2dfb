"""Tensor values as they arrive in JSON: a number or a rectangular nested list, "NaN"/"Infinity" as strings.

Plain Python (no torch, no marshmallow): the request schemas validate with it, and the grader parses a
submitted answer with it, where a ragged list is a failed check rather than a 400.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, chain, compress, count, islice, repeat
from operator import is_
from typing import Any, NamedTuple

NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_NUMBER_TYPES = {int, float}
_NUMBER_OR_STR = {int, float, str}


class TensorData(NamedTuple):
    """A validated tensor literal: its values in row-major order and its shape."""

    values: list
    shape: tuple[int, ...]


def _not_a_number(item: Any) -> ValueError:
    kind = "boolean" if isinstance(item, bool) else type(item).__name__
    return ValueError(f'Tensor elements must be numbers (or "NaN", "Infinity", "-Infinity"), got {kind}.')


def _as_numbers(level: list) -> list:
    """Map the strings "NaN"/"Infinity"/"-Infinity" to floats; reject any other non-number (the first in order).
    C loops: each item looked up in NON_FINITE with itself as the default, so a number stays itself and a
    non-finite string becomes its float; whatever is then not a number is refused (a million strings: ~0.1 s, where
    a Python step per item took 0.6 s)."""
    types = set(map(type, level))
    if types <= _NUMBER_TYPES:
        return level
    if types <= _NUMBER_OR_STR:
        out = list(map(NON_FINITE.get, level, level))
        if set(map(type, out)) <= _NUMBER_TYPES:
            return out
    raise _not_a_number(level[_first_non_number(level, types)])


def _first_non_number(items: list, types: set[type]) -> int:
    """The index of the first item of `items` (whose types are `types`) that is neither a number nor a non-finite
    string, or -1: C loops over the items' types (list.index per bad type), a lookup per string."""
    kinds = list(map(type, items))
    first = min((kinds.index(kind) for kind in types - _NUMBER_OR_STR), default=len(items))
    if str in types:
        at = list(compress(count(), map(is_, kinds, repeat(str))))  # where the strings are
        finite = list(map(NON_FINITE.__contains__, map(items.__getitem__, at)))
        if False in finite:
            first = min(first, at[finite.index(False)])
    return -1 if first == len(items) else first


def _ragged(depth: int, lengths: set[int]) -> ValueError:
    return ValueError(f"Tensor is not rectangular: lists at depth {depth} have lengths {sorted(lengths)[:5]}.")


def _mixed(depth: int) -> ValueError:
    return ValueError(f"Tensor mixes numbers and lists at depth {depth}.")


def parse_tensor(value: Any) -> TensorData:
    """Check a number or nested list is rectangular, level by level (no recursion: deep input is safe).

    Raises ValueError with a message for the client when it is not.
    """
    shape: list[int] = []
    level = [value]
    while True:
        types = set(map(type, level))
        if not types:  # an empty dimension: nothing below it
            return TensorData([], tuple(shape))
        if types <= _NUMBER_TYPES:
            return TensorData(level, tuple(shape))
        if types == {list}:
            lengths = set(map(len, level))
            if len(lengths) != 1:
                raise _ragged(len(shape) + 1, lengths)
            shape.append(lengths.pop())
            level = list(chain.from_iterable(level))
            continue
        if list in types:
            raise _mixed(len(shape) + 1)
        return TensorData(_as_numbers(level), tuple(shape))


def tensor_shape(value: Any) -> tuple[int, ...]:
    """parse_tensor(value).shape, or the ValueError it raises, without a copy of the numbers (only of the lists
    above them): a grader compares an answer's shape with the checked one before it builds anything that size."""
    shape: list[int] = []
    lists: list | None = None  # every list at depth len(shape), once the value is one
    types = {type(value)}
    while True:
        if types <= _NUMBER_TYPES:  # empty too: an empty dimension has nothing below it
            return tuple(shape)
        if types == {list}:
            lists = [value] if lists is None else list(chain.from_iterable(lists))
            lengths = set(map(len, lists))
            if len(lengths) != 1:
                raise _ragged(len(shape) + 1, lengths)
            shape.append(lengths.pop())
            types = set(map(type, chain.from_iterable(lists)))
            continue
        if list in types:
            raise _mixed(len(shape) + 1)
        if types <= _NUMBER_OR_STR:  # numbers stay themselves and non-finite strings become floats (C loops)
            items = [value] if lists is None else chain.from_iterable(lists)
            again = [value] if lists is None else chain.from_iterable(lists)
            if set(map(type, map(NON_FINITE.get, items, again))) <= _NUMBER_TYPES:
                return tuple(shape)
        items = [value] if lists is None else list(chain.from_iterable(lists))  # a copy on the way to a 400 only
        raise _not_a_number(items[_first_non_number(items, types)])


def sublists(lists: list, types: set[type]) -> list:
    """The lists among the items of `lists`, whose types are `types` (set(map(type, ...)) of those items): the next
    level of a walk that reads a level's types at once and never copies the numbers."""
    if types == {list}:
        return list(chain.from_iterable(lists))
    if list not in types:
        return []
    kinds = map(type, chain.from_iterable(lists))  # picked out by C loops: no Python step per number
    return list(compress(chain.from_iterable(lists), map(is_, kinds, repeat(list))))


def levels_past(values: list, free: int, most: int | None = None) -> int:
    """sum(max(0, levels - free)) over `values`, where a value's levels are how many levels of lists it has (0: not a
    list), ragged or not: every list at every level is read, as every later walk of an answer reads it (depth hidden
    in a non-first item counts). The values are walked together, a level of all of them at once (C loops over the
    level's items, sublists' way): a Python step a level, never one a value or a number (256 answers 8 deep, each
    walked on its own, cost ~2 ms a job). Only when some list is left past `free` levels, the walk is done again
    with each list's owner, to count the values still that deep at each level. `most`: stop once past it."""
    lists = [values]
    for _ in range(free + 1):  # down to the lists past `free` levels; the numbers are never copied
        types = set(map(type, chain.from_iterable(lists)))
        if list not in types:
            return 0
        lists = sublists(lists, types)
    is_list = list(map(is_, map(type, values), repeat(list)))
    owners, lists = list(compress(count(), is_list)), list(compress(values, is_list))
    depth = levels = 0
    while lists and (most is None or levels <= most):
        depth += 1
        if depth > free:
            levels += len(set(owners))  # the values with lists at this depth
        # the level's items walked twice, lazily (C loops), for their owners and their lists: never copied
        owned = chain.from_iterable(map(repeat, owners, map(len, lists)))
        owners = list(compress(owned, map(is_, map(type, chain.from_iterable(lists)), repeat(list))))
        lists = sublists(lists, set(map(type, chain.from_iterable(lists))))
    return levels


def outline(value: Any) -> tuple[int, ...]:
    """The shape `value` has if it is a rectangular nested list, read down its first items: O(depth). What does not
    fit by its outline does not fit, whatever the rest of it holds."""
    shape = []
    while type(value) is list:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


_LEAF_OR_LIST = {int, float, str, list}  # by type(): a bool is not an int here


def _last_index(items: list, types: set[type]) -> int:
    """The index of the last item of `items` (whose types are `types`) that is neither a number, a list nor a
    non-finite string, or -1: C loops over the items' types (a reversed copy searched with list.index per bad
    type), and a Python step per string only, never per number."""
    kinds = list(map(type, items))
    bad = types - _LEAF_OR_LIST
    backwards = kinds[::-1] if bad else []
    last = max((len(kinds) - 1 - backwards.index(kind) for kind in bad), default=-1)
    if str in types and not all(map(NON_FINITE.__contains__, compress(items, map(is_, kinds, repeat(str))))):
        at = list(compress(count(), map(is_, kinds, repeat(str))))  # where the strings are: one of them is not
        finite = list(map(NON_FINITE.__contains__, map(items.__getitem__, at)))
        last = max(last, at[len(at) - 1 - finite[::-1].index(False)])
    return last


def last_non_number(value: Any) -> type | None:
    """None when `value` is a number, "NaN"/"Infinity"/"-Infinity" or nested lists of those; else the type of its
    last item (row-major) that is none of these: the first item a walk from its end meets. Read a level's types at
    once, copying only the lists (millions of numbers cost C loops, not a Python step each); a level with such an
    item has it found by _last_index, and the latest of the levels' last ones wins: the deeper is lifted to its
    ancestor at the shallower's depth, where items are in row-major order."""
    levels: list[list] = []  # per depth, the lists whose items are at that depth
    found: list[tuple[int, int, type]] = []  # per depth that has one: (depth, index among the depth's items, type)
    lists = [[value]]
    while lists:
        types = set(map(type, chain.from_iterable(lists)))
        if str in types or not types <= _LEAF_OR_LIST:  # something to look at item by item, in C loops
            items = _items(lists)
            index = _last_index(items, types)
            if index >= 0:
                found.append((len(levels), index, type(items[index])))
        levels.append(lists)
        lists = sublists(lists, types)
    if not found:
        return None
    depth, index, last = found.pop()  # the deepest, lifted to each shallower one in turn
    while found:
        shallower, other, kind = found.pop()
        while depth > shallower:
            index = _parent_index(levels, depth, index)
            depth -= 1
        if other > index:  # `other` is a leaf and `index` the list holding `last`: never equal
            index, last = other, kind
    return last


def _items(lists: list) -> list:
    return lists[0] if len(lists) == 1 else list(chain.from_iterable(lists))


def _parent_index(levels: list[list], depth: int, index: int) -> int:
    """The index among the items at depth-1 of the list that holds item `index` of depth `depth` (C loops)."""
    k = bisect_right(list(accumulate(map(len, levels[depth]))), index)  # it is in the depth's k-th list
    above = _items(levels[depth - 1])
    return next(islice(compress(count(), map(isinstance, above, repeat(list))), k, None))
