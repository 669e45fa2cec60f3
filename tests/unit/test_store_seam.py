"""The database stack stays behind the store's seam: SQLAlchemy, Alembic and the drivers are
imported by supervisor/store/ only, so everything above it sees the store's types and
errors (supervisor/errors.py), never a driver's."""

from __future__ import annotations

import ast
from pathlib import Path

import supervisor

PACKAGE = Path(supervisor.__file__).parent
DATABASE_STACK = ("sqlalchemy", "alembic", "psycopg", "psycopg2", "pymysql", "sqlite3")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_store_imports_sqlalchemy_alembic_and_the_drivers() -> None:
    outside = [path for path in PACKAGE.rglob("*.py") if "store" not in path.relative_to(
        PACKAGE).parts]
    assert len(outside) > 10  # the package was found
    offenders = {str(path.relative_to(PACKAGE)): sorted(imported(path) & set(DATABASE_STACK))
                 for path in outside}
    assert {name: found for name, found in offenders.items() if found} == {}
