"""Writes what topics.toml decides into template.yaml and README.md.

    python -m devkit.topics          # rewrite the marked regions (make topics)
    python -m devkit.topics --check  # exit 1, naming the files, when a region is out of date

layers/shared/cachesync/topics.toml is the one table of topics. The functions read it at run
time; CloudFormation cannot, so each place in the template that lists the topics (their
parameters, the functions' `TOPIC_<NAME>` variables, the mappings' Fn::ForEach collection,
the cache users' access strings) sits between `# topics.toml:<region>` and `# topics.toml:end`
markers, and this command writes it. The README's contract table works the same way.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cachesync.config import Settings, topic_entries
from devkit import acl
from devkit.sam import ROOT, TEMPLATE

README = ROOT / "README.md"

# the settings the stack-created cache gives the functions: a cluster client
TEMPLATE_SETTINGS = {"REDIS_CLUSTER": "true"}
CACHE_USERS = (
    ("Ingest", "ingest", acl.ingest_rule),
    ("Api", "api", acl.api_rule),
    ("Maintenance", "maintenance", acl.maintenance_rule),
)

KIND_WRITES = {
    "document": "`SET {prefix}:<{field}> <value as received>`; tombstone → `DEL`",
    "stock_ledger": (
        "sorted set `{prefix}:<{field}>`, member `sku:<sku>`: shipment `ZINCRBY +units`, purchase "
        "`ZINCRBY -units`, count `ZADD units` (a stock take), remove `ZREM`"
    ),
    "hash": "`DEL` + `HSET {prefix}:<{field}>` the value's non-null fields; tombstone → `DEL`",
    "hash merge": "`HSET {prefix}:<{field}>` the value's fields, `HDEL` its null ones; tombstone → `DEL`",
    "json": "`JSON.SET {prefix}:<{field}> $ <value>`; tombstone → `DEL`",
    "json merge": "`JSON.MERGE {prefix}:<{field}> $ <value>`; tombstone → `DEL`",
    "stream": "`XADD {prefix}:<{field}>{maxlen} *` the value's non-null fields, once per record",
}
DEBEZIUM_WRITES = (
    "Debezium change event: c, r, u write `after` as {writes}; d and the tombstone → `DEL`; t and other ops "
    "dead-lettered"
)


def kind_writes(entry: Mapping[str, Any]) -> str:
    """What an entry's records do in Redis, for the contract table."""
    kind = entry["kind"]
    if entry.get("on_update") == "merge":
        kind += " merge"
    maxlen = f" MAXLEN ~ {entry['max_length']}" if entry.get("max_length") else ""
    writes = KIND_WRITES[kind].format(prefix=entry["key_prefix"], field=entry["key_field"], maxlen=maxlen)
    if entry.get("envelope") == "debezium":
        writes = DEBEZIUM_WRITES.format(writes=writes.split(";")[0])
    if entry.get("ttl_header"):
        writes += f"; header `{entry['ttl_header']}` sets the TTL"
    return writes


def resource_name(entry: Mapping[str, Any]) -> str:
    """`orders` -> `Orders`: the entry's name in logical ids (OrdersTopic, OrdersMapping)."""
    name: str = entry["name"]
    return name[:1].upper() + name[1:]


def _parameter_group(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"          - {resource_name(e)}Topic" for e in entries]


def _parameters(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for e in entries:
        lines += [
            f"  {resource_name(e)}Topic:",
            "    Type: String",
            f"    Default: {e['topic']}",
            f"    Description: Kafka topic of the {e['name']} entry of topics.toml ({e['kind']}), projected to "
            f"{e['key_prefix']}:<{e['key_field']}>.",
        ]
    return lines


def _environment(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"        TOPIC_{e['name'].upper()}: !Ref {resource_name(e)}Topic" for e in entries]


def _collection(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"    - [{', '.join(resource_name(e) for e in entries)}]"]


def _mappings(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "  # Each topic's mapping, by the name its resources carry: the topics.toml entry.",
        "  Topics:",
    ]
    for e in entries:
        lines += [f"    {resource_name(e)}:", f"      Entry: {e['name']}"]
    lines += [
        "  # The stack-created cache's users (CacheAuthMode=iam): their ids' last part and the access",
        "  # strings of docs/security.md (devkit.acl for this template's settings: cluster client, dead",
        "  # letters in SQS).",
        "  CacheUsers:",
    ]
    settings = Settings.from_env(TEMPLATE_SETTINGS)
    for user, role, rule in CACHE_USERS:
        lines += [f"    {user}:", f"      Role: {role}", f'      AccessString: "{rule(settings).access_string()}"']
    return lines


def _contract(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| topic (`TOPIC_<NAME>`) | kind | record value: what it must have | Redis | Kafka record key |",
        "| --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        writes = kind_writes(e)
        contract = e.get("contract", f"a JSON object with `{e['key_field']}`")
        record_key = e.get("record_key", f"the {e['key_field']}")
        lines.append(f"| `{e['topic']}` | {e['kind']} | {contract} | {writes} | {record_key} |")
    return lines


Region = Callable[[Sequence[Mapping[str, Any]]], list[str]]
TEMPLATE_REGIONS: dict[str, Region] = {
    "parameter-group": _parameter_group,
    "parameters": _parameters,
    "environment": _environment,
    "mappings": _mappings,
    "collection": _collection,
}
README_REGIONS: dict[str, Region] = {"contract": _contract}


def render(text: str, regions: Mapping[str, Region], comment: tuple[str, str]) -> str:
    """`text` with each marked region rewritten from topics.toml; every region must be marked."""
    entries = topic_entries()
    opening, closing = (re.escape(c) for c in comment)
    for name, lines in regions.items():
        pattern = re.compile(
            rf"^(?P<indent>[ ]*){opening}topics\.toml:{re.escape(name)} .*?{closing}\n"
            rf"(?P<body>.*?)^[ ]*{opening}topics\.toml:end{closing}\n",
            re.MULTILINE | re.DOTALL,
        )
        found = pattern.search(text)
        if found is None:
            raise SystemExit(f"no `topics.toml:{name}` region in the file: restore its markers")
        body = "".join(line + "\n" for line in lines(entries))
        start, end = found.span("body")
        text = text[:start] + body + text[end:]
    return text


TARGETS: tuple[tuple[Path, dict[str, Region], tuple[str, str]], ...] = (
    (TEMPLATE, TEMPLATE_REGIONS, ("# ", "")),
    (README, README_REGIONS, ("<!-- ", " -->")),
)


def out_of_date() -> dict[Path, str]:
    """Each file whose regions differ from what topics.toml gives, with its text as it should be."""
    updates = {}
    for path, regions, comment in TARGETS:
        text = path.read_text()
        updated = render(text, regions, comment)
        if updated != text:
            updates[path] = updated
    return updates


def stale() -> list[Path]:
    """The files whose regions differ from what topics.toml gives."""
    return list(out_of_date())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write topics.toml into template.yaml and README.md.")
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    updates = out_of_date()
    if args.check:
        if updates:
            names = ", ".join(str(p.relative_to(ROOT)) for p in updates)
            sys.exit(f"out of date with topics.toml: {names}; run `make topics`")
        return
    for path, updated in updates.items():
        path.write_text(updated)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
