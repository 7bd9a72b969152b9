"""The platform's teachers: the side of the cascade that re-checks a window the edge student was unsure about.

An agent whose student answers with a confidence under its threshold sends the window here
(``POST /api/v1/cascade``). The platform runs the teacher variant of the same registry version when it has one,
else of the newest version that has a teacher, looked up first among the uploaded versions (the database),
then in a registry directory (``TWIN_MODEL_DIR``, by default the package's committed models/registry). The
answer is stored as a diagnosis with source ``platform``, through the store exactly as an uplinked one (a
one-diagnosis batch), and the batch listeners given here (the live bus) hear of it.

Loaded teachers are kept per process, keyed by where they came from (and the archive's sha256), so only the
first window of a version pays for loading it.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

import models
from models import registry, runtime
from models.errors import InferenceError, ModelError, WindowRejected
from plant.platform_api import CascadeRequest
from plant.wire import Diagnosis, DiagnosisSource, UplinkBatch, now_us
from twin import model_registry
from twin.config import TwinSettings
from twin.errors import Conflict, InvalidRequest, NotFound, Unavailable
from twin.queries import diagnosis_of
from twin.store import ApplyResult, TwinStore
from twin.tables import DiagnosisRecord
from twin.validation import UNKNOWN_NODE

log = structlog.get_logger(__name__)

PACKAGE_REGISTRY = Path(models.__file__).resolve().parent / "registry"
TEACHER = "teacher"
CACHED_TEACHERS = 8

Listener = Callable[[UplinkBatch, ApplyResult], None]
_Source = tuple[str, str, str, str]  # ("db", task, version, sha256) or ("dir", task, version, path)


class Teachers:
    """Runs teachers on offloaded windows and stores their answers.

    Args:
        engine: the twin's database.
        settings: platform settings (``model_dir``: registry directory searched after the database).
        listeners: called with each stored one-diagnosis batch, as ingest listeners are.
    """

    def __init__(self, engine: Engine, settings: TwinSettings, listeners: Sequence[Listener] = ()) -> None:
        self.store = TwinStore(engine, settings)
        self.model_dir = settings.model_dir or PACKAGE_REGISTRY
        self.max_bytes = settings.model_max_bytes
        self.listeners = list(listeners)
        self._teachers: OrderedDict[_Source, runtime.LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # guards the two dicts; never held while a teacher loads
        self._loading: dict[_Source, threading.Lock] = {}  # one per teacher being loaded
        self._on_disk: dict[str, list[tuple[str, Path]]] = {}  # task → versions in model_dir with a teacher

    def diagnose(self, session: Session, ask: CascadeRequest, gateway: str) -> Diagnosis:
        """The teacher's diagnosis of one window, stored with source ``platform``."""
        teacher = self.teacher(session, ask.task, ask.version)
        try:
            prediction = teacher.predict(ask.window, ask.units or None)
        except WindowRejected as exc:
            raise InvalidRequest(f"the teacher refuses this window: {exc}") from None
        except InferenceError as exc:
            raise Unavailable(f"the teacher failed on this window: {exc}") from None
        diagnosis = Diagnosis(
            node=ask.node,
            task=ask.task,
            ts=ask.ts,
            model=str(teacher.manifest["name"]),
            version=str(teacher.manifest["version"]),
            source=DiagnosisSource.PLATFORM,
            **asdict(prediction),
        )
        return self._store(session, diagnosis, gateway)

    def _store(self, session: Session, diagnosis: Diagnosis, gateway: str) -> Diagnosis:
        """Store the teacher's diagnosis; what is stored for its window (the first answer stored wins)."""
        batch = UplinkBatch(gateway=gateway, batch=f"cascade-{uuid.uuid4().hex}", sent=now_us(), diagnoses=[diagnosis])
        result = self.store.apply(batch)
        if result.rejected:
            rejection = result.rejected[0]
            error = NotFound if rejection.reason == UNKNOWN_NODE else InvalidRequest
            raise error(f"diagnosis not stored: {rejection.detail or rejection.reason}")
        if not result.diagnoses:  # stored before: a retried request, or the agent's own answer (it stopped waiting)
            return self._stored(session, diagnosis)
        for listener in self.listeners:
            try:
                listener(batch, result)
            except Exception:  # a listener must not turn a stored diagnosis into an error for the agent
                log.exception("cascade_listener_failed", listener=repr(listener))
        return diagnosis

    @staticmethod
    def _stored(session: Session, diagnosis: Diagnosis) -> Diagnosis:
        d = DiagnosisRecord
        key = (d.node_id == diagnosis.node, d.task == diagnosis.task, d.ts == diagnosis.ts)
        row = session.scalars(select(d).where(*key)).one_or_none()
        if row is None:  # cannot be: the store called it a duplicate
            raise Conflict(f"a {diagnosis.task} diagnosis of {diagnosis.node} at {diagnosis.ts} was not stored")
        return diagnosis_of(row)

    def teacher(self, session: Session, task: str, version: str) -> runtime.LoadedModel:
        """The teacher for a student's ``task`` and ``version``; Unavailable when the platform has none."""
        source = self._find(session, task, version)
        cached = self._cached(source)
        if cached is not None:
            return cached
        with self._lock:
            loading = self._loading.setdefault(source, threading.Lock())
        # one load per teacher, however many requests arrive together; requests for loaded teachers go on
        with loading:
            cached = self._cached(source)
            if cached is not None:
                return cached
            try:
                loaded = self._load(session, source)
                with self._lock:
                    self._teachers[source] = loaded
                    while len(self._teachers) > CACHED_TEACHERS:
                        self._teachers.popitem(last=False)
            finally:
                with self._lock:
                    self._loading.pop(source, None)
        log.info("teacher_loaded", task=task, version=source[2], origin=source[0])
        return loaded

    def _cached(self, source: _Source) -> runtime.LoadedModel | None:
        with self._lock:
            cached = self._teachers.get(source)
            if cached is not None:
                self._teachers.move_to_end(source)
            return cached

    def _find(self, session: Session, task: str, version: str) -> _Source:
        stored = [("db", task, v, sha) for v, sha in model_registry.with_teacher(session, task)]
        on_disk = [("dir", task, v, str(path)) for v, path in self._directory_teachers(task)]
        for candidate in (*stored, *on_disk):
            if candidate[2] == version:
                return candidate
        candidates = stored + on_disk  # stored first: on equal versions an upload wins
        if not candidates:
            raise Unavailable(f"no {task} teacher on the platform: upload a model version that includes one")
        return max(candidates, key=lambda c: model_registry.version_key(c[2]))

    def _directory_teachers(self, task: str) -> list[tuple[str, Path]]:
        """Versions under the registry directory whose teacher file is present (large ones are not committed).

        Read once per task: the directory is the installation's, and every cascade request asks.
        """
        cached = self._on_disk.get(task)
        if cached is not None:
            return cached
        found = []
        for directory in sorted((self.model_dir / task).glob("*")):
            try:
                manifest = registry.read_manifest(directory)
            except ModelError:
                continue
            entry = manifest["variants"].get(TEACHER)
            if entry is not None and (directory / entry["file"]).is_file():
                found.append((str(manifest["version"]), directory))
        self._on_disk[task] = found
        return found

    def _load(self, session: Session, source: _Source) -> runtime.LoadedModel:
        origin, task, version, where = source
        try:
            if origin == "dir":
                return runtime.load(where, TEACHER)
            data, _sha = model_registry.archive(session, task, version)
            files = model_registry.unpack(data, self.max_bytes)
            with tempfile.TemporaryDirectory(prefix="ft-teacher-") as tmp:
                return runtime.load(model_registry.write_files(Path(tmp), files), TEACHER)
        except ModelError as exc:  # a committed teacher damaged on disk, say: the agent keeps its answer
            log.error("teacher_load_failed", task=task, version=version, origin=origin, error=str(exc))
            raise Unavailable(f"the {task} teacher {version} does not load: {exc}") from None
