"""PostgreSQL's keyword postings and statistics (``cairn.server.storage.postgres_bm25``): after
any folds they equal a count from scratch, and migrating an older server's database counts them."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cairn.model import Filters
from cairn.search.hybrid import query_terms
from cairn.server.storage import postgres_schema
from cairn.server.storage.index import HostedIndex
from cairn.server.storage.postgres import PostgresStorage

from .test_hosted_ranking import NOW, Folder, indexed

Postgres = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)

COUNTED = """
    SELECT (SELECT json_object_agg(term, docs ORDER BY term) FROM hosted_terms
            WHERE workspace_id = 'w1'),
           (SELECT array[docs, tokens] FROM hosted_index WHERE workspace_id = 'w1'),
           (SELECT array_agg(array[id, term, tf::text, length::text] ORDER BY id, term)
            FROM hosted_postings WHERE workspace_id = 'w1')"""
RECOUNTED = """
    SELECT (SELECT json_object_agg(lexeme, n ORDER BY lexeme) FROM
                (SELECT u.lexeme, count(*) AS n FROM hosted_memories m,
                 unnest(m.words) u WHERE m.workspace_id = 'w1' GROUP BY u.lexeme) t),
           (SELECT array[count(*) FILTER (WHERE NOT deleted), sum(length)]
            FROM hosted_memories WHERE workspace_id = 'w1'),
           (SELECT array_agg(array[m.id, u.lexeme, cardinality(u.positions)::text,
                                   m.length::text] ORDER BY m.id, u.lexeme)
            FROM hosted_memories m, unnest(m.words) u WHERE m.workspace_id = 'w1')"""


def statistics(url: str) -> tuple[Any, Any]:
    """The statistics the folds kept, and the same counted from the rows now."""
    with psycopg.connect(url) as conn:
        conn.execute("SELECT set_config('cairn.workspace_id', '*', false)")
        kept = conn.execute(COUNTED).fetchone()
        counted = conn.execute(RECOUNTED).fetchone()
    return kept, counted


def test_statistics_equal_a_count_from_scratch_after_any_folds(postgres: Postgres) -> None:
    url = postgres.new_database()
    storage = PostgresStorage(url)
    storage.create_workspace("w1", "hosted", NOW)
    folder = Folder(storage)
    folder.fold(*(indexed(f"m{n}", f"the cache failed {n} times after deploy") for n in range(9)))
    folder.fold(indexed("m1", "cache cache warmed"), indexed("m2", "", deleted=True))
    folder.fold(indexed("m1", "cache cache warmed"), indexed("m3", "a fresh text entirely"))
    folder.fold(indexed("m2", "back from the dead"), indexed("m4", "", deleted=True))
    kept, counted = statistics(url)
    assert kept == counted
    assert kept[1] == [8, counted[1][1]] and kept[0]["cach"] == 6
    storage.close()


def test_migrating_an_older_database_counts_what_it_had_folded(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.new_database()
    # The server before BM25: four migrations, and folds that kept no statistics.
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS[:4])
    monkeypatch.setattr(PostgresStorage, "_count_terms", HostedIndex._count_terms)
    older = PostgresStorage(url)
    # Today's fold also writes the index's generation (migration 7): a column for this fold
    # only, dropped again so the database is as the older server left it.
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("ALTER TABLE hosted_index ADD COLUMN generation TEXT")
    older.create_workspace("w1", "hosted", NOW)
    common = [indexed(f"c{n}", f"deploy deploy step {n}") for n in range(20)]
    Folder(older).fold(*common, indexed("rare", "flamegraph deploy"))
    older.close()
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("ALTER TABLE hosted_index DROP COLUMN generation")
    monkeypatch.undo()
    storage = PostgresStorage(url)
    kept, counted = statistics(url)
    assert kept == counted and kept[1][0] == 21
    ranked = storage.keyword("w1", query_terms("deploy flamegraph"), Filters(), 50)
    assert ranked[0][0] == "rare" and len(ranked) == 21
    storage.close()
