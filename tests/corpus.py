"""Builds a small corpus in every format, good and bad records mixed, and what must become of each.

`expected` maps each (source, doc_id) to None (a document) or the reject reason it must get,
so tests compare a run's whole outcome, record by record, with what the files hold.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from backports import zstd

ZH = [
    "番茄喜欢充足的阳光和排水良好的土壤，幼苗长出四到六片真叶后即可移栽。",
    "长江是中国第一长河，全长约六千三百公里，最后注入东海。",
    "成年人每天通常需要七到九个小时的睡眠，长期睡眠不足会影响注意力。",
    "春节是中国最重要的传统节日，除夕夜全家人团聚在一起吃年夜饭。",
    "光合作用是绿色植物利用光能把二氧化碳和水转化为有机物的过程。",
    "冲泡绿茶时水温不宜过高，一般以八十度左右为宜。",
    "复利是指把利息计入本金再计算下一期利息的方式，俗称利滚利。",
    "预防感冒最有效的方法是勤洗手，尤其是在饭前和外出回家后。",
    "唐诗是中国古典诗歌的高峰，题材广泛，风格多样。",
    "生活垃圾一般分为可回收物、有害垃圾、厨余垃圾和其他垃圾四类。",
    "刚开始跑步的人不要急于求成，可以从快走和慢跑交替开始。",
    "阳光穿过大气层时会被空气分子散射，所以天空呈现蓝色。",
]


@dataclass
class Corpus:
    root: Path
    expected: dict[tuple[str, str], str | None] = field(default_factory=dict)
    texts: dict[tuple[str, str], str] = field(default_factory=dict)

    def sources(self, base: str | None = None) -> list[dict]:
        """The sources section of a config over this corpus, at `base` (default: its local root)."""
        b = base or str(self.root)
        return [
            {"name": "wudao", "format": "wudao", "paths": [f"{b}/wudao/part-*.json"]},
            {"name": "wanjuan", "format": "wanjuan", "paths": [f"{b}/wanjuan/*.jsonl.gz"]},
            {
                "name": "skypile",
                "format": "skypile",
                "paths": [f"{b}/skypile/data/*.jsonl", f"{b}/skypile/data/*.jsonl.zst"],
            },
            {
                "name": "web",
                "format": "jsonl",
                "paths": [f"{b}/web/"],
                "text_field": "body",
                "id_field": "url",
                "title_field": "headline",
            },
            {"name": "table", "format": "parquet", "paths": [f"{b}/table/*.parquet"], "text_field": "text"},
        ]

    def good(self, source: str, doc_id: str, text: str) -> None:
        self.expected[(source, doc_id)] = None
        self.texts[(source, doc_id)] = text

    def bad(self, source: str, doc_id: str, reason: str) -> None:
        self.expected[(source, doc_id)] = reason


def jsonl(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n" for r in rows)


def build_corpus(root: Path) -> Corpus:
    c = Corpus(root)
    for d in ("wudao", "wanjuan", "skypile/data", "web/2024", "table"):
        (root / d).mkdir(parents=True, exist_ok=True)

    # WuDao: a bare array, a RECORDS wrapper, and a truncated file.
    records = [
        {
            "id": i,
            "uniqueKey": f"wd-{i}",
            "titleUkey": f"t{i}",
            "dataType": "博客",
            "title": f"标题{i}",
            "content": ZH[i],
        }
        for i in range(3)
    ]
    for r in records:
        c.good("wudao", r["uniqueKey"], r["content"])
    records.append({"id": 3, "uniqueKey": "wd-3", "title": "无正文"})
    c.bad("wudao", "part-001.json:4", "missing_text")
    records.append({"id": 4, "uniqueKey": "wd-4", "content": "  \n "})
    c.bad("wudao", "wd-4", "empty_text")
    records.append({"id": 5, "uniqueKey": "wd-5", "content": {"nested": "object"}})
    c.bad("wudao", "wd-5", "malformed_record")
    (root / "wudao/part-001.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    wrapped = [{"id": 7, "uniqueKey": "wd-7", "dataType": "百科", "title": "", "content": ZH[3]}]
    c.good("wudao", "wd-7", ZH[3])
    (root / "wudao/part-002.json").write_text(json.dumps({"RECORDS": wrapped}, ensure_ascii=False), encoding="utf-8")
    truncated = json.dumps(
        [{"uniqueKey": "wd-8", "content": ZH[4]}, {"uniqueKey": "wd-9", "content": ZH[5]}], ensure_ascii=False
    )
    (root / "wudao/part-003.json").write_text(truncated[: len(truncated) - 20], encoding="utf-8")
    c.good("wudao", "wd-8", ZH[4])
    c.bad("wudao", "part-003.json", "unreadable_file")

    # WanJuan: gzip JSONL; extra fields go to meta; id and content required.
    lines: list = [
        {"id": "wj-1", "content": ZH[6], "title": "复利", "language": "zh", "date": "2023-05-01"},
        b"",
        b'{"id": "wj-2", "content": "unterminated',
        {"content": ZH[7], "language": "zh"},
        {"id": "wj-4", "title": "no content"},
        {"id": "wj-5", "content": ZH[7]},
    ]
    (root / "wanjuan/part-000.jsonl.gz").write_bytes(gzip.compress(jsonl(lines)))
    c.good("wanjuan", "wj-1", ZH[6])
    c.bad("wanjuan", "part-000.jsonl.gz:3", "malformed_json")
    c.bad("wanjuan", "part-000.jsonl.gz:4", "missing_id")
    c.bad("wanjuan", "part-000.jsonl.gz:5", "missing_text")
    c.good("wanjuan", "wj-5", ZH[7])
    # A gzip file cut short: the lines before the cut are read, the file gets one reject.
    full = gzip.compress(jsonl([{"id": f"wj-cut-{i}", "content": ZH[i % len(ZH)] * 40} for i in range(200)]))
    (root / "wanjuan/part-001.jsonl.gz").write_bytes(full[: len(full) // 2])
    c.bad("wanjuan", "part-001.jsonl.gz", "unreadable_file")
    with gzip.open(io.BytesIO(full[: len(full) // 2])) as f:
        readable = []
        try:
            for line in f:
                readable.append(line)
        except EOFError:
            pass
    for line in readable:
        if line.endswith(b"\n"):
            r = json.loads(line)
            c.good("wanjuan", r["id"], r["content"])

    # SkyPile: plain and zstd JSONL; doc ids from path and line.
    sky = [
        {"text": ZH[8]},
        b'{"text": "\xff\xfe bad bytes"}',
        b"   ",
        {"text": ""},
        b'["a", "list"]',
        {"text": None},
        {"text": ZH[9]},
        b"\x00\x01garbage",
    ]
    (root / "skypile/data/2020-40_zh_head_0000.jsonl").write_bytes(jsonl(sky))
    name = "2020-40_zh_head_0000.jsonl"
    c.good("skypile", f"{name}:1", ZH[8])
    c.bad("skypile", f"{name}:2", "invalid_utf8")
    c.bad("skypile", f"{name}:4", "empty_text")
    c.bad("skypile", f"{name}:5", "malformed_record")
    c.bad("skypile", f"{name}:6", "missing_text")
    c.good("skypile", f"{name}:7", ZH[9])
    c.bad("skypile", f"{name}:8", "malformed_json")
    (root / "skypile/data/2020-40_zh_tail_0001.jsonl.zst").write_bytes(zstd.compress(jsonl([{"text": ZH[10]}])))
    c.good("skypile", "2020-40_zh_tail_0001.jsonl.zst:1", ZH[10])

    # Generic JSONL in a folder, with configured field names.
    (root / "web/2024/a.jsonl").write_bytes(
        jsonl(
            [
                {"url": "https://example.cn/1", "headline": "天空", "body": ZH[11], "lang": "zh"},
                {"headline": "no url", "body": ZH[0]},
            ]
        )
    )
    (root / "web/_SUCCESS").write_bytes(b"")
    c.good("web", "https://example.cn/1", ZH[11])
    c.bad("web", "2024/a.jsonl:2", "missing_id")

    # Parquet.
    pq.write_table(pa.table({"text": [ZH[1], "", ZH[2]], "lang": ["zh", "zh", "zh"]}), root / "table/t.parquet")
    c.good("table", "t.parquet:1", ZH[1])
    c.bad("table", "t.parquet:2", "empty_text")
    c.good("table", "t.parquet:3", ZH[2])
    (root / "table/broken.parquet").write_bytes(b"PAR1 this is not parquet")
    c.bad("table", "broken.parquet", "unreadable_file")
    return c
