"""The final dataset as training files: JSONL in Alpaca form and in chat-messages form.

    export/alpaca/*.jsonl     {"instruction", "input": "", "output"}
    export/messages/*.jsonl   {"messages": [{"role": "system", ...}?, {"role": "user", ...},
                                            {"role": "assistant", ...}]}

The output is the polished answer where the polish stage ran, else the original text
(Humpback).  Humpback tags augmented pairs apart from seed data with a system prompt
("Answer with knowledge from web search."); `final.system_prompt: null` leaves it out.
"""

from __future__ import annotations

import pyarrow as pa

ALPACA_SCHEMA = pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.large_string())])


def answers(batch: pa.Table) -> pa.ChunkedArray:
    return batch["answer"] if "answer" in batch.column_names else batch["text"]


def alpaca_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table(
        [batch["instruction"], pa.array([""] * n, pa.string()), answers(batch).cast(pa.large_string())],
        schema=ALPACA_SCHEMA,
    )


def messages_rows(batch: pa.Table, system_prompt: str | None) -> pa.Table:
    conversations = []
    for instruction, output in zip(batch["instruction"].to_pylist(), answers(batch).to_pylist()):
        turns = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        conversations.append(
            [*turns, {"role": "user", "content": instruction}, {"role": "assistant", "content": output}]
        )
    kind = pa.list_(pa.struct([("role", pa.string()), ("content", pa.large_string())]))
    return pa.table({"messages": pa.array(conversations, kind)})
