"""Log events are structured the same way in every package: a snake_case literal name, then snake_case fields.

Read from the source (an AST walk), so a sentence, an f-string or a %-format as an event name fails here before a
dashboard or an alert rule has to match it. Our code logs through structlog; stdlib ``logging`` is only configured.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plant", "edge_agent", "twin", "models", "factory_twin")
LEVELS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg", "log"})
LOGGERS = frozenset({"log", "logger", "_log", "_logger", "structlog", "logging"})
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def _root(node: ast.expr) -> str | None:
    """The logger a call chain starts from: ``log`` in ``log.bind(x=1).info``, ``self._log`` in ``self._log.info``."""
    while isinstance(node, ast.Attribute | ast.Call):
        if isinstance(node, ast.Attribute) and node.attr in LOGGERS:
            return node.attr  # self.log, self._logger
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _log_calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS:
            root = _root(node.func.value)
            if root in LOGGERS:
                yield node, root


def _problems(source: str, name: str) -> Iterator[str]:
    for call, root in _log_calls(ast.parse(source, name)):
        where = f"{name}:{call.lineno}"
        if root == "logging":
            yield f"{where}: stdlib logging call; log through structlog"
            continue
        first = call.args[0] if call.args else None
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            yield f"{where}: the event name is not a string literal"
        elif not SNAKE.match(first.value):
            yield f"{where}: event {first.value!r} is not snake_case"
        if len(call.args) > 1:
            yield f"{where}: positional arguments after the event (%-formatting); pass fields by name"
        for keyword in call.keywords:
            if keyword.arg is not None and not SNAKE.match(keyword.arg):
                yield f"{where}: field {keyword.arg!r} is not snake_case"


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if not p.name.endswith("_pb2.py"))


def test_every_log_event_is_a_snake_case_literal_with_snake_case_fields() -> None:
    found = [problem for p in _sources() for problem in _problems(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)


def test_the_scan_sees_our_log_calls() -> None:
    # guards the test above against passing because it matches nothing
    calls = sum(1 for path in _sources() for _ in _log_calls(ast.parse(path.read_text())))
    assert calls > 100


@pytest.mark.parametrize(
    ("source", "complaint"),
    [
        ('log.info("model failure reported", task=t)', "not snake_case"),
        ('log.info(f"model_{task}_loaded")', "not a string literal"),
        ('log.warning("model_loaded %s", task)', "not snake_case"),
        ('self._log.bind(node_id=n).error("Failed")', "not snake_case"),
        ('log.info("model_loaded", **{"Task": t}, taskName=t)', "field 'taskName'"),
        ('logging.getLogger(__name__).info("model_loaded")', "stdlib logging"),
        ('structlog.get_logger("x").info("model loaded")', "not snake_case"),
    ],
)
def test_the_scan_catches(source: str, complaint: str) -> None:
    found = list(_problems(source, "example.py"))
    assert any(complaint in p for p in found), found
