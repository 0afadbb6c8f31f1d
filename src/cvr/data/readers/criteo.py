"""`criteo_tsv`: the Kaggle DAC layout, tab-separated label, I1..I13, C1..C26 without a header.

Lines whose trailing empty columns were stripped are padded back to 40 columns, as long as they
keep at least `min_columns` (default 14: the label and the 13 integer columns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvr.data.readers.delimited import DelimitedReader
from cvr.data.schema import Schema, SchemaError

CRITEO_COLUMNS = ("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27)))


class CriteoTsvReader(DelimitedReader):
    """`criteo_tsv`: Kaggle DAC train.txt, label I1..I13 C1..C26 tab-separated, no header.

    The label column is `label`; it feeds the schema's single label (by default `click`).
    """

    format = "criteo_tsv"

    def __init__(
        self, path: str | Path, schema: Schema, *, min_columns: int = 14, **kwargs: Any
    ) -> None:
        if len(schema.labels) != 1:
            raise SchemaError(f"data.schema.labels: criteo_tsv has one label, got {schema.labels}")
        kwargs.setdefault("label_columns", {schema.labels[0]: "label"})
        for key in ("delimiter", "header", "columns", "quote_char"):
            if key in kwargs:
                raise SchemaError(f"data.{key}: fixed by format criteo_tsv")
        super().__init__(
            path,
            schema,
            delimiter="\t",
            header=False,
            columns=list(CRITEO_COLUMNS),
            quote_char=None,
            min_columns=min_columns,
            **kwargs,
        )
