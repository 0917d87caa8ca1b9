"""Every address a search is given is checked before Ray starts: --optuna-storage is opened and pinged, --mlflow-uri
pinged or validated; a bad scheme, a dead port, a server that never answers, a wrong password: one line within
seconds. A tracker that stops answering mid-search costs one bounded wait and a warning, never the search.
No real server is needed: a dead port is a port nobody listens on, a silent server a socket that accepts and never
answers, a wrong password a few bytes of PostgreSQL's protocol saying so."""
import contextlib
import importlib.util
import socket
import struct
import threading
import time

import pytest

from conftest import run_main
from tune import search, study, trackers

SEARCH = ["--space", "cnn_scratch.yaml", "--smoke-test"]


def dead_port():
    """A port on 127.0.0.1 that nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(answer=None):
    """A TCP server on 127.0.0.1: `answer(conn)` for each connection, or (None) accept and never say a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            if answer:
                with contextlib.suppress(OSError):
                    answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()
        thread.join(timeout=5)


def refuse_password(conn):
    """PostgreSQL's answer to a login with a wrong password: no SSL/GSS, then FATAL 28P01 (the wire protocol)."""
    while True:
        length, code = struct.unpack("!ii", conn.recv(8))
        if code in (80877103, 80877104):   # SSLRequest, GSSENCRequest: not here
            conn.sendall(b"N")
            continue
        conn.recv(length - 8)   # the rest of the startup message
        fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"dogs\"\0\0"
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
        return


def one_line_before_ray(code, out, err, *words):
    import ray

    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dogs-search: error: "), out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err and not ray.is_initialized()
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_optuna_storage_bad_scheme_url_or_driver_is_one_line(tmp_path):
    code, out, err = run_main(search, [*SEARCH, "--optuna-storage", "foo://host/db"])
    one_line_before_ray(code, out, err, "unknown database scheme 'foo'", "postgresql")
    code, out, err = run_main(search, [*SEARCH, "--optuna-storage", "not a url"])
    one_line_before_ray(code, out, err, "is not a database URL")
    if importlib.util.find_spec("MySQLdb") is None:
        code, out, err = run_main(search, [*SEARCH, "--optuna-storage", "mysql://u@127.0.0.1/db"])
        one_line_before_ray(code, out, err, "driver is not installed (MySQLdb)", "pymysql")


def test_documented_postgresql_url_has_its_driver():
    """postgresql:// (docs/search.md, docs/cluster.md) is psycopg 3 in SQLAlchemy 2.1: the postgres extra brings it."""
    import sqlalchemy

    assert sqlalchemy.create_engine("postgresql://u@127.0.0.1/db").dialect.driver == "psycopg"
    assert importlib.util.find_spec("psycopg") is not None


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2"])
def test_optuna_storage_dead_port_wrong_password_silent_server_within_seconds(scheme, monkeypatch):
    pytest.importorskip("psycopg2" if scheme.endswith("psycopg2") else "psycopg")
    monkeypatch.setattr(study, "CONNECT_TIMEOUT_S", 2)
    start = time.monotonic()
    code, out, err = run_main(search, [*SEARCH, "--optuna-storage", f"{scheme}://dogs:secret@127.0.0.1:{dead_port()}/db"])
    line = one_line_before_ray(code, out, err, "cannot open the database", "refused")
    assert "secret" not in line and time.monotonic() - start < 30
    with server(refuse_password) as port:
        code, out, err = run_main(search, [*SEARCH, "--optuna-storage", f"{scheme}://dogs:wrong@127.0.0.1:{port}/db"])
    line = one_line_before_ray(code, out, err, "password authentication failed")
    assert "wrong" not in line
    with server() as port:   # accepts, never answers: the connect timeout ends it
        start = time.monotonic()
        code, out, err = run_main(search, [*SEARCH, "--optuna-storage", f"{scheme}://dogs@127.0.0.1:{port}/db"])
        took = time.monotonic() - start
    one_line_before_ray(code, out, err, "cannot open the database", "connect timeout 2 s")
    assert took < 30, took


def test_optuna_storage_sqlite_that_opens_passes_and_resume_refuses_another(tmp_path):
    assert study.storage_problem(f"sqlite:///{tmp_path / 'db' / 'study.db'}") is None
    assert not (tmp_path / "db").exists()   # checked, not created: a search refused later leaves nothing
    (tmp_path / "file").write_text("")
    assert "is not a folder" in study.storage_problem(f"sqlite:///{tmp_path / 'file' / 'study.db'}")
    code, out, err = run_main(search, ["--resume", "--storage", str(tmp_path), "--optuna-storage", "sqlite:///x.db"])
    one_line_before_ray(code, out, err, "--optuna-storage with --resume")   # was: silently ignored


def test_mlflow_uri_dead_port_silent_server_bad_scheme_file_store_are_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[mlflow]')")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    log = [*SEARCH, "--log", "mlflow", "--mlflow-uri"]
    start = time.monotonic()
    code, out, err = run_main(search, [*log, f"http://127.0.0.1:{dead_port()}/"])
    one_line_before_ray(code, out, err, "the tracking server does not answer", "Connection refused")
    assert time.monotonic() - start < 30
    with server() as port:   # was: a one-trial search still running after 240 s, no message
        start = time.monotonic()
        code, out, err = run_main(search, [*log, f"http://127.0.0.1:{port}/"])
        took = time.monotonic() - start
    one_line_before_ray(code, out, err, "the tracking server does not answer", "timed out")
    assert took < 30, took
    for uri, words in [("ftp://host/x", ["unknown scheme 'ftp'"]), ("http://", ["no host"]),
                       (str(tmp_path / "mlruns"), ["refuses its file store", "sqlite:///"]),
                       (f"sqlite:///{tmp_path}/missing/mlflow.db", ["does not exist"]),
                       (f"postgresql://u@127.0.0.1:{dead_port()}/db", ["cannot open the database"])]:
        code, out, err = run_main(search, [*log, uri])
        one_line_before_ray(code, out, err, f"--mlflow-uri {uri}", *words)
    code, out, err = run_main(search, [*SEARCH, "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    one_line_before_ray(code, out, err, "--mlflow-uri without --log mlflow")
    assert trackers.mlflow_problem(f"sqlite:///{tmp_path}/mlflow.db") is None


def test_tracker_that_stops_answering_costs_one_bounded_wait_and_a_warning(monkeypatch, capsys):
    """The logger callback against a server that accepts and never answers: the first call waits MLflow's bounded
    timeout and warns once; every later call returns at once; nothing raises into Tune."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[mlflow]')")
    from tune.callbacks import GuardedMLflowCallback

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with server() as port:
        callback = GuardedMLflowCallback(tracking_uri=f"http://127.0.0.1:{port}/", experiment_name="gone")
        start = time.monotonic()
        callback.setup()
        first = time.monotonic() - start
        trial = type("Trial", (), {"config": {"lr": 0.1}, "__str__": lambda self: "t1"})()
        start = time.monotonic()
        callback.log_trial_start(trial)
        callback.log_trial_result(1, trial, {"training_iteration": 1, "val_acc": 0.5})
        callback.log_trial_end(trial)
        later = time.monotonic() - start
    warned = [line for line in capsys.readouterr().err.splitlines() if "stopped answering" in line]
    assert len(warned) == 1 and "the search goes on" in warned[0] and callback.broken
    assert first < 30 and later < 1, (first, later)


def test_search_bounds_mlflow_http_waits(monkeypatch):
    for key in trackers.MLFLOW_HTTP_BOUNDS:
        monkeypatch.delenv(key, raising=False)
    trackers.check_mlflow([], None)
    import os

    assert all(os.environ[key] == value for key, value in trackers.MLFLOW_HTTP_BOUNDS.items())
