"""Applies `migrations/NNNN_name.sql` in order, each in a transaction, under an advisory lock.

The ledger (`schema_migrations`, created by the first migration) records each
applied file with its checksum; an applied file that was edited afterwards is
refused, since the database no longer matches what the file says.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import MigrationError
from daemon.infra.logs import get_logger
from daemon.store import Connection, Pool

log = get_logger(__name__)

# pg_advisory_lock key: any constant unique to campaignd's migrator.
MIGRATION_LOCK_KEY = 0x63616D7061696D64  # "campaimd"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The folder of SQL files: packaged in the wheel, or at the top of a source checkout."""
    packaged = Path(__file__).parents[1] / "_migrations"
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "migrations"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text("utf-8")))
    versions = [m.version for m in found]
    # Gaps are allowed (numbers reserved by parallel branches land in any order); a number
    # used twice is not: the ledger keys on it.
    doubled = sorted({v for v in versions if versions.count(v) > 1})
    if doubled:
        raise MigrationError(f"migration versions used twice: {doubled}")
    return found


async def _applied(connection: Connection) -> dict[int, str]:
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await connection.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


def _check_drift(migrations: list[Migration], applied: dict[int, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name}.sql was edited after it "
                "was applied (checksum differs); write a new migration instead"
            )
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        raise MigrationError(
            f"the database has migrations this campaignd does not know: {unknown} "
            "(is this an older version?)"
        )


async def pending(connection: Connection, folder: Path | None = None) -> list[Migration]:
    """The migrations not yet applied (raises on drift)."""
    migrations = load_migrations(folder)
    applied = await _applied(connection)
    _check_drift(migrations, applied)
    return [m for m in migrations if m.version not in applied]


async def apply(pool: Pool, folder: Path | None = None) -> list[Migration]:
    """Apply every pending migration; returns those applied. Safe to run concurrently."""
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            todo = await pending(connection, folder)
            for migration in todo:
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version, migration.name, migration.checksum,
                    )
                log.info("migration.applied", version=migration.version, name=migration.name)
            return todo
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
