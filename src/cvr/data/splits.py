"""Split codes (0 train, 1 val, 2 test) of a build's rows: random by (file, line), or by time.

- `random`: each row's split comes from splitmix64(seed, file index, line number) -> uniform
  [0, 1): below `test` is test, then `val`, the rest train. It depends only on the file and line,
  never on the chunk size or on which other rows were skipped.
- `time`: rows ordered by `time_column` (stable: ties keep file order; numbers when every value
  parses as one, else strings; missing times first); the last `val` + `test` fractions become
  val and test.
- `files` and `by_file`: a file's role decides, except that train files without a val file give
  a random `val` fraction of their rows to val.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.arrow_numpy import to_numpy
from cvr.data.numbers import parse_numbers
from cvr.data.schema import SplitRule
from cvr.data.sources import Source
from cvr.data.store import SPLITS
from cvr.data.value_rules import mix64

TRAIN, VAL, TEST = 0, 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FILE_STRIDE = np.uint64(0xD1B54A32D192ED03)


def random_split_codes(
    lines: np.ndarray, seed: int, val: float, test: float, file_index: int = 0
) -> np.ndarray:
    """int8 split codes (0 train, 1 val, 2 test) from a seeded hash of each (file, line)."""
    state = np.uint64(int(seed) % (1 << 64)) + np.asarray(lines, dtype=np.uint64) * _GOLDEN
    if file_index:
        state = state + np.uint64((file_index * int(_FILE_STRIDE)) % (1 << 64))
    u = (mix64(state) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u < test, TEST, np.where(u < test + val, VAL, TRAIN)).astype(np.int8)


def time_split_codes(times: pa.Array, val: float, test: float) -> np.ndarray:
    """int8 split codes by rank of `times` (string column, null = earliest): last rows are test."""
    n = len(times)
    values, missing, bad = parse_numbers(times)
    if not bad.any():
        order = np.argsort(np.where(missing, -np.inf, values), kind="stable")
    else:
        order = to_numpy(pc.sort_indices(times, null_placement="at_start"))
    n_test = round(test * n)
    n_val = round(val * n)
    codes = np.full(n, TRAIN, dtype=np.int8)
    codes[order[n - n_test - n_val : n - n_test]] = VAL
    codes[order[n - n_test :]] = TEST
    return codes


def source_split_codes(
    rule: SplitRule, has_val_file: bool, src: Source, lines: np.ndarray
) -> np.ndarray | None:
    """Split codes of rows of `src` at these line numbers, or None for a time split (known only
    at the end)."""
    if rule.method == "time":
        return None
    if rule.method == "random":
        return random_split_codes(lines, rule.seed, rule.val, rule.test, src.index)
    if src.role == "train" and not has_val_file:
        return random_split_codes(lines, rule.seed, rule.val, 0.0, src.index)
    return np.full(len(lines), SPLITS.index(src.role), dtype=np.int8)
