"""Login and key guessing: failures counted per user name and per client address, 429 with Retry-After past
the limits, lock-outs that double, counted in the metrics; and the counters themselves."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from sqlalchemy import Engine

from tests.twin.conftest import PASSWORD, with_user
from twin.api import create_app
from twin.auth import Role, create_key, revoke_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.errors import BadCredentials, TooManyAttempts, Unauthenticated
from twin.throttle import Kind, Policy, Throttle


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    return with_user(sqlite_engine, "tess", "technician")


def _client(engine: Engine, tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(TwinSettings(data_dir=tmp_path, **settings), engine))


def _login(client: TestClient, name: str, password: str) -> int:
    return client.post("/api/v1/session", json={"username": name, "password": password}).status_code


def test_five_wrong_passwords_for_a_name_lock_it_out_with_retry_after(engine: Engine, tmp_path: Path) -> None:
    with _client(engine, tmp_path, auth_lockout_s=1.0) as client:
        assert [_login(client, "tess", f"guess {i}") for i in range(5)] == [401] * 5
        r = client.post("/api/v1/session", json={"username": "tess", "password": "guess 6"})
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert "try again" in r.json()["detail"]
        assert _login(client, "tess", PASSWORD) == 429  # locked: not even the right password is checked
        assert _login(client, "TESS", PASSWORD) == 429  # nor the name in other letters
        assert _login(client, "vic", "guess") == 401  # other names are not locked
        time.sleep(1.1)
        assert _login(client, "tess", PASSWORD) == 201  # the lock-out ended; success clears the record
        assert [_login(client, "tess", f"again {i}") for i in range(5)] == [401] * 5
        assert _login(client, "tess", "again") == 429
        metrics = generate_latest(client.app.state.metrics).decode()
    assert 'twin_auth_failures_total{kind="password"} 11.0' in metrics
    assert 'twin_auth_lockouts_total{scope="name"} 2.0' in metrics
    assert 'twin_auth_refused_total{scope="name"} 4.0' in metrics
    assert 'twin_auth_locked{scope="name"} 1.0' in metrics


def test_each_lock_out_of_a_name_doubles(engine: Engine, tmp_path: Path) -> None:
    with _client(engine, tmp_path, auth_lockout_s=0.6, auth_lockout_max_s=100) as client:
        for expected in (1, 2):
            for i in range(5):
                assert _login(client, "tess", f"guess {i}") == 401
            r = client.post("/api/v1/session", json={"username": "tess", "password": "x"})
            assert r.status_code == 429
            assert r.headers["Retry-After"] == str(expected)  # 0.6 s, then 1.2 s (rounded up)
            time.sleep(0.6 * expected + 0.1)


def test_twenty_failures_from_an_address_lock_it_out_whatever_the_names(engine: Engine, tmp_path: Path) -> None:
    with _client(engine, tmp_path) as client:
        assert [_login(client, f"user{i}", "guess") for i in range(20)] == [401] * 20
        r = client.post("/api/v1/session", json={"username": "tess", "password": PASSWORD})
        assert r.status_code == 429
        assert 50 <= int(r.headers["Retry-After"]) <= 60
        assert "address" in r.json()["detail"]


def test_unknown_keys_count_against_the_address(engine: Engine, tmp_path: Path) -> None:
    with make_sessionmaker(engine)() as s:
        viewer = create_key(s, Role.VIEWER, "v")
        revoked = create_key(s, Role.VIEWER, "old")
        revoke_key(s, revoked)
    with _client(engine, tmp_path, auth_address_failures=3) as client:
        # a revoked key is not a guess: it does not count
        for _ in range(5):
            assert client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {revoked}"}).status_code == 401
        assert client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
        for key in ("nonsense", "ftk_0123456789ab_secret", viewer[:-1]):
            assert client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        r = client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {viewer}"})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        # a key given to the login form counts the same
        assert client.post("/api/v1/session", json={"api_key": viewer}).status_code == 429
        metrics = generate_latest(client.app.state.metrics).decode()
    assert 'twin_auth_failures_total{kind="key"} 3.0' in metrics
    assert 'twin_auth_lockouts_total{scope="address"} 1.0' in metrics


# ---- the counters ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(throttle: Throttle, address: str = "a", name: str | None = "n") -> None:
    with pytest.raises(BadCredentials), throttle.attempt(Kind.PASSWORD, address, name):
        raise BadCredentials("wrong")


def test_lock_outs_double_up_to_the_longest_and_are_forgotten_when_quiet() -> None:
    clock = Clock()
    throttle = Throttle(Policy(name_failures=2, address_failures=1000, lockout_s=10, lockout_max_s=30), clock)
    waits = []
    for _round in range(4):
        _fail(throttle)
        _fail(throttle)
        with pytest.raises(TooManyAttempts) as refused, throttle.attempt(Kind.PASSWORD, "a", "n"):
            pass
        waits.append(refused.value.retry_after)
        clock.now += refused.value.retry_after
    assert waits == [10, 20, 30, 30]
    clock.now += 31  # quiet for the longest lock-out: a fresh start
    _fail(throttle)
    _fail(throttle)
    with pytest.raises(TooManyAttempts) as refused, throttle.attempt(Kind.PASSWORD, "a", "n"):
        pass
    assert refused.value.retry_after == 10


def test_a_success_clears_the_name_but_forgives_the_address_one_attempt_only() -> None:
    throttle = Throttle(Policy(name_failures=3, address_failures=3), Clock())
    _fail(throttle, name="n1")
    _fail(throttle, name="n1")
    with throttle.attempt(Kind.PASSWORD, "a", "n1"):
        pass  # success: n1 starts over, the address keeps its two failures
    _fail(throttle, name="n2")
    with pytest.raises(TooManyAttempts), throttle.attempt(Kind.PASSWORD, "a", "n3"):
        pass


def test_other_errors_are_not_guesses_unless_named() -> None:
    throttle = Throttle(Policy(name_failures=1, address_failures=1), Clock())
    for _ in range(3):
        with pytest.raises(Unauthenticated), throttle.attempt(Kind.KEY, "a"):
            raise Unauthenticated("revoked")
    with pytest.raises(Unauthenticated), throttle.attempt(Kind.PASSWORD, "a", "n", guesses=(Unauthenticated,)):
        raise Unauthenticated("wrong password")
    with pytest.raises(TooManyAttempts), throttle.attempt(Kind.KEY, "a"):
        pass


def test_a_burst_of_parallel_guesses_gets_no_more_than_the_limit_checked() -> None:
    throttle = Throttle(Policy(name_failures=5, address_failures=1000))
    checked, gate = [], threading.Barrier(40)

    def guess() -> None:
        gate.wait()
        try:
            with throttle.attempt(Kind.PASSWORD, "a", "tess"):
                checked.append(1)
                time.sleep(0.05)  # the password hash
                raise BadCredentials("wrong")
        except (BadCredentials, TooManyAttempts):
            pass

    threads = [threading.Thread(target=guess) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) == 5


def test_invented_names_cannot_grow_the_tables_without_bound() -> None:
    throttle = Throttle(Policy(max_entries=100), Clock())
    for i in range(1000):
        _fail(throttle, address=f"10.0.{i // 250}.{i % 250}", name=f"user{i}")
    assert all(len(table) <= 100 for table in throttle._tables.values())
