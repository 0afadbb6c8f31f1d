"""numpy <-> Arrow through buffers: the same arrays as pyarrow's own conversions, no pandas."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cvr.data.arrow_numpy import from_numpy, from_strings, to_numpy

ROOT = Path(__file__).resolve().parents[2]
DTYPES = ["int8", "int32", "int64", "uint16", "uint64", "float32", "float64", "bool"]


def sample(dtype: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(n) < 0.5
    return (rng.random(n) * 100 - (0 if dtype.startswith("u") else 50)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
@pytest.mark.parametrize("with_mask", [False, True])
def test_from_numpy_equals_pa_array(dtype: str, n: int, with_mask: bool) -> None:
    values = sample(dtype, n)
    mask = (np.arange(n) % 3 == 1) if with_mask else None
    got = from_numpy(values, mask=mask)
    want = pa.array(values, mask=mask)
    assert got.type == want.type
    assert got.equals(want)
    assert got.null_count == want.null_count
    got.validate(full=True)


def test_from_numpy_copies_strided_views_and_checks_its_arguments() -> None:
    values = np.arange(20, dtype=np.int64)[::3]
    assert from_numpy(values).to_pylist() == values.tolist()
    with pytest.raises(TypeError, match="int64, not double"):
        from_numpy(values, type=pa.float64())
    with pytest.raises(ValueError, match="1-d"):
        from_numpy(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"expected \(7,\)"):
        from_numpy(values, mask=np.zeros(3, dtype=bool))


@pytest.mark.parametrize("items", [[], [""], ["a", "", "héllo", "1e+05"], ["x"] * 1000])
def test_from_strings_equals_pa_array(items: list[str]) -> None:
    got = from_strings(items)
    assert got.equals(pa.array(items, pa.string()))
    got.validate(full=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 3, 9])
@pytest.mark.parametrize("with_nulls", [False, True])
def test_to_numpy_equals_pyarrow_on_slices(dtype: str, offset: int, with_nulls: bool) -> None:
    n = 40
    values = sample(dtype, n, seed=1)
    mask = (np.arange(n) % 4 == 2) if with_nulls else None
    arr = pa.array(values, mask=mask).slice(offset, 25)
    got = to_numpy(arr)
    want = arr.to_numpy(zero_copy_only=False)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)  # NaN == NaN here, None == None for the rest


def test_to_numpy_of_chunked_and_empty_arrays() -> None:
    chunked = pa.chunked_array([pa.array([1, 2], pa.int32()), pa.array([3], pa.int32())])
    np.testing.assert_array_equal(to_numpy(chunked), np.array([1, 2, 3], dtype=np.int32))
    assert to_numpy(pa.array([], pa.float64())).dtype == np.float64
    assert to_numpy(pa.array([], pa.float64())).shape == (0,)
    strings = pa.array(["a", None])
    assert to_numpy(strings).tolist() == ["a", None]  # other types: pyarrow's own conversion


@pytest.mark.parametrize("numbers", ["integers", "decimals"])
def test_a_store_build_does_not_import_pandas(tmp_path, numbers) -> None:
    """pa.array(), pa.scalar() and Array.to_numpy() import pandas (~0.3 s) on first use; a build
    avoids them, on the integer fast path and on the checked path of decimals and "NA"."""
    data = tmp_path / "day.tsv"

    def number(i: int, j: int) -> str:
        if numbers == "decimals" and j == 0:
            return "NA" if i % 5 == 0 else f"{i * 0.25:.2f}"
        return str(i * j % 97)

    rows = [
        "\t".join(["1" if i % 4 == 0 else "0", *(number(i, j) for j in range(13))]
                  + [f"{(i * 7 + j) % 50:08x}" for j in range(26)])
        for i in range(300)
    ]  # fmt: skip
    data.write_text("\n".join(rows) + "\n")
    script = textwrap.dedent(
        f"""
        import sys, yaml
        from cvr.data.build import build_file_store
        cfg = yaml.safe_load(open({str(ROOT / "conf/data/criteo.yaml")!r}))
        store = build_file_store("t", "criteo_tsv", path={str(data)!r}, schema=cfg["schema"],
                                 preprocess=cfg["preprocess"], cache_root={str(tmp_path)!r})
        assert store.rows("train") > 0
        print("pandas" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
