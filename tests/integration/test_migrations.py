"""Migrations: fresh database, idempotent re-run, concurrent migrators, checksum drift."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from daemon.errors import MigrationError
from daemon.infra import migrate
from daemon.infra.database import create_pool


async def test_fresh_database_gets_every_migration_and_the_expected_tables(
    empty_database_url: str,
) -> None:
    pool = await create_pool(empty_database_url)
    try:
        applied = await migrate.apply(pool)
        assert [m.version for m in applied] == [m.version for m in migrate.load_migrations()]
        tables = {
            row["tablename"]
            for row in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"schema_migrations", "api_tokens", "campaigns", "runs", "run_recipients",
                "profiles", "audiences", "audience_members"} <= tables
        ledger = await pool.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
        assert [(r["version"], r["checksum"]) for r in ledger] == [
            (m.version, m.checksum) for m in migrate.load_migrations()
        ]
    finally:
        await pool.close()


async def test_second_run_applies_nothing(empty_database_url: str) -> None:
    pool = await create_pool(empty_database_url)
    try:
        await migrate.apply(pool)
        assert await migrate.apply(pool) == []
    finally:
        await pool.close()


async def test_concurrent_migrators_apply_each_migration_once(empty_database_url: str) -> None:
    pools = [await create_pool(empty_database_url, max_size=2) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate.apply(p) for p in pools))
        applied = [m.version for result in results for m in result]
        assert sorted(applied) == [m.version for m in migrate.load_migrations()]
        count = await pools[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(migrate.load_migrations())
    finally:
        for p in pools:
            await p.close()


async def test_an_edited_applied_migration_is_refused(
    empty_database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), folder)
    pool = await create_pool(empty_database_url)
    try:
        await migrate.apply(pool, folder)
        first = sorted(folder.glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="edited after it was applied"):
            await migrate.apply(pool, folder)
    finally:
        await pool.close()


async def test_pending_lists_what_is_not_applied(empty_database_url: str) -> None:
    pool = await create_pool(empty_database_url)
    try:
        async with pool.acquire() as connection:
            assert len(await migrate.pending(connection)) == len(migrate.load_migrations())
        await migrate.apply(pool)
        async with pool.acquire() as connection:
            assert await migrate.pending(connection) == []
    finally:
        await pool.close()


def test_versions_may_have_gaps_but_not_doubles(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "0003_third.sql").write_text("SELECT 3;")
    assert [m.version for m in migrate.load_migrations(tmp_path)] == [1, 3]
    (tmp_path / "0003_again.sql").write_text("SELECT 3;")
    with pytest.raises(MigrationError, match=r"used twice: \[3\]"):
        migrate.load_migrations(tmp_path)
