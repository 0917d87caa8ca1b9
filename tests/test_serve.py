"""tune.serve for real: a server started as a user starts it, on a checkpoint trained here, asked over HTTP
and through its page in headless Chromium."""
import base64
import contextlib
import http.client
import io
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, draw, make_imagefolder, run_main
from dogs import checkpoint
from dogs.classifier import Predictor
from dogs.submission import ensemble_probs
from tune import serve

MAX_UPLOAD_MB = 0.25   # the server's upload limit in these tests
START_TIMEOUT_S = 180  # Ray and Serve start in ~15 s alone; this machine may be loaded


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six classes (three shapes, in colour and in grey) and photos to ask about, in every awkward form a user's
    photo can have: EXIF-rotated JPEG, RGBA PNG, 16-bit grey PNG, CMYK JPEG, palette GIF, a large JPEG."""
    root = make_imagefolder(tmp_path_factory.mktemp("serve") / "data", n_train=16, n_val=4, n_test=0, awkward=False)
    for split in ("Train", "Validation"):
        for kind in CLASSES:
            grey = root / split / f"{kind}_grey"
            grey.mkdir()
            for f in (root / split / kind).iterdir():
                Image.open(f).convert("L").convert("RGB").save(grey / f.name)
    rng = np.random.default_rng(1)
    asked = root.parent / "asked"
    asked.mkdir()
    rotated = draw("triangle", rng, (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6   # shown rotated by 90 degrees
    rotated.save(asked / "rotated.jpg", exif=exif.tobytes())
    rgba = draw("circle", rng).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(asked / "rgba.png")
    grey16 = np.asarray(draw("square", rng).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(asked / "grey16.png")
    assert Image.open(asked / "grey16.png").mode.startswith("I")
    draw("circle", rng).convert("CMYK").save(asked / "cmyk.jpg")
    draw("square", rng).convert("P").save(asked / "palette.gif")
    draw("triangle", rng, (400, 300)).save(asked / "large.jpg", quality=95)
    for kind in CLASSES:
        shutil.copy(next((root / "Validation" / kind).glob("*.jpg")), asked / f"{kind}.jpg")
    return {"root": root, "files": sorted(asked.iterdir())}


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    """A CNN checkpoint trained on the six classes at 32 px, and the probabilities tune.best --predict's predictor
    gives the photos (equal to the submission path's)."""
    from dogs.train import run

    out = tmp_path_factory.mktemp("serve-run")
    config = {"data": str(photos["root"]), "model": "cnn", "image_size": 32, "batch_size": 16, "epochs": 2,
              "lr": 3e-3, "seed": 0, "weights": "none"}
    run(config, out, log=lambda *a: None)
    predictor = Predictor.load(out / "best.pt", device=torch.device("cpu"))
    probs = predictor.probs([predictor.decode(f) for f in photos["files"]])
    # the submission path: the images decoded into the cache by load_rgb, scored as Validation is
    model, ckpt = checkpoint.load(out / "best.pt")
    submitted, ok = ensemble_probs([(model, ckpt["config"])], photos["files"], torch.device("cpu"))
    assert ok.all() and np.allclose(probs, submitted, atol=1e-6)
    return {"checkpoint": out / "best.pt", "classes": predictor.classes,
            "probs": {f.name: p for f, p in zip(photos["files"], probs)}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    """`python -m tune.serve --checkpoint best.pt` on a free port, as a user runs it; its URL once it answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "tune.serve", "--checkpoint", str(trained["checkpoint"]), "--port", str(port),
           "--max-upload-mb", str(MAX_UPLOAD_MB)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + START_TIMEOUT_S
    while not any(line.startswith("Serving ") for line in seen):
        try:
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            proc.kill()
            pytest.fail(f"tune.serve did not print 'Serving ...' within {START_TIMEOUT_S} s:\n{''.join(seen)[-3000:]}")
        if proc.poll() is not None and lines.empty():
            pytest.fail(f"tune.serve exited with {proc.returncode}:\n{''.join(seen)[-3000:]}")
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "output": seen, "lines": lines}
    # SIGTERM (a service manager's stop): it ends as Ctrl-C does, with its Ray, leaving no process behind
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
        left = leftover(proc.pid, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, f"tune.serve exited with {proc.returncode} on SIGTERM"
    assert not left, "processes of the server still running 30 s after it ended"


def leftover(group, timeout):
    """Whether processes of the process group `group` are still running after `timeout` s (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.5)
    return True


def post(url, body, headers=None):
    """(status, JSON answer) of a POST."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def expected_top(trained, name, k):
    """[(class, probability)] of the k most probable classes the predictor gives the photo `name`."""
    probs = trained["probs"][name]
    return [(trained["classes"][i], float(probs[i])) for i in np.argsort(-probs, kind="stable")[:k]]


def assert_same_top(answer, expected):
    got = [(p["class"], p["probability"]) for p in answer["predictions"]]
    assert [name for name, _ in got] == [name for name, _ in expected]
    assert np.allclose([p for _, p in got], [p for _, p in expected], atol=1e-5), (got, expected)


@pytest.mark.slow
def test_top5_of_photos_are_the_predictors(server, photos, trained):
    for f in photos["files"]:
        status, answer = post(f"{server['url']}/predict?top_k=5", f.read_bytes())
        assert status == 200, answer
        assert_same_top(answer, expected_top(trained, f.name, 5))
        assert [p["index"] for p in answer["predictions"]] == [trained["classes"].index(p["class"])
                                                               for p in answer["predictions"]]
    # without top_k: 5; top_k=6: every class, their probabilities summing to 1
    status, answer = post(f"{server['url']}/predict", photos["files"][0].read_bytes())
    assert status == 200 and len(answer["predictions"]) == 5
    status, answer = post(f"{server['url']}/predict?top_k=6", photos["files"][0].read_bytes())
    assert sorted(p["class"] for p in answer["predictions"]) == sorted(trained["classes"])
    assert abs(sum(p["probability"] for p in answer["predictions"]) - 1) < 1e-5


@pytest.mark.slow
def test_what_cannot_be_answered_is_one_line_with_its_status(server, photos):
    jpeg = (photos["root"] / "Validation" / "circle" / "1.jpg").read_bytes()
    cases = [
        (b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(200), "", 400, "not an image"),
        (jpeg[: len(jpeg) // 2], "", 400, "not an image"),                       # truncated
        (b"plain text, not an image\n", "", 400, "not an image"),
        (b"", "", 400, "empty"),
        (jpeg, "?top_k=0", 400, "top_k=0"),
        (jpeg, "?top_k=7", 400, "from 1 to 6"),
        (jpeg, "?top_k=five", 400, "top_k=five"),
    ]
    for body, query, status, reason in cases:
        got, answer = post(f"{server['url']}/predict{query}", body)
        assert (got, reason in answer["error"]) == (status, True), (query, body[:20], answer)
        assert "\n" not in answer["error"]
    # a form upload (curl -F) is refused, saying what to send instead
    form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.jpg\"\r\n\r\n" + jpeg +
            b"\r\n--XyZ--\r\n")
    got, answer = post(f"{server['url']}/predict", form, {"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert got == 400 and "--data-binary" in answer["error"]
    got, answer = post(f"{server['url']}/nowhere", jpeg)
    assert got == 404 and "POST /predict" in answer["error"]


@pytest.mark.slow
def test_an_upload_over_the_limit_is_refused_with_413(server):
    big = bytes(int(MAX_UPLOAD_MB * 2**20) + 1)
    status, answer = post(f"{server['url']}/predict", big)   # Content-Length says so
    assert status == 413 and "--max-upload-mb" in answer["error"], answer
    # chunked: no Content-Length, counted as it streams in
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    connection.request("POST", "/predict", body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413, response.read()
    assert "--max-upload-mb" in json.loads(response.read())["error"]
    connection.close()


@pytest.mark.slow
def test_a_client_that_disconnects_mid_upload_is_one_line_in_the_console(server, photos):
    """(was: two 30-line tracebacks in tune.serve's console) and the server keeps answering."""
    while not server["lines"].empty():   # what the server said before
        server["lines"].get_nowait()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as gone:
        gone.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + bytes(1000))
        time.sleep(1)   # the upload has begun
    said, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline and not any("disconnected" in line for line in said):
        with contextlib.suppress(queue.Empty):
            said.append(server["lines"].get(timeout=0.5))
    time.sleep(2)   # anything Serve says after our line
    while not server["lines"].empty():
        said.append(server["lines"].get_nowait())
    # one line: ours when the replica was reading the upload, or Serve's own when its proxy saw the client go first
    # ("Client for request ... disconnected, cancelling request"): which one depends on timing
    assert [line for line in said if "disconnected" in line and ("upload" in line or "cancelling" in line)], \
        "".join(said)
    assert not any("Traceback" in line for line in said), "".join(said)
    status, answer = post(f"{server['url']}/predict", photos["files"][0].read_bytes())
    assert status == 200, answer


@pytest.mark.slow
def test_concurrent_requests_are_all_answered_and_batched(server, photos, trained):
    files = photos["files"] * 3
    start, answers = threading.Barrier(len(files)), [None] * len(files)

    def ask(i):
        start.wait(timeout=60)
        answers[i] = post(f"{server['url']}/predict?top_k=3", files[i].read_bytes())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(a is not None and a[0] == 200 for a in answers), answers
    for f, (_, answer) in zip(files, answers):
        assert_same_top(answer, expected_top(trained, f.name, 3))
    assert max(answer["batch"] for _, answer in answers) > 1, "no two concurrent requests were predicted together"


def outside_address():
    """This machine's address on its default route (a UDP connect sends nothing), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_the_server_listens_on_loopback_only_by_default(server):
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address other than loopback")
    with pytest.raises(OSError):
        socket.create_connection((address, server["port"]), timeout=5).close()
    socket.create_connection(("127.0.0.1", server["port"]), timeout=5).close()


def test_mistakes_are_one_line_before_ray_starts(trained, tmp_path):
    cases = [
        (["--checkpoint", str(tmp_path / "nope.pt")], "no checkpoint at"),
        (["--checkpoint", str(trained["checkpoint"]), "--gpus-per-replica", "-1"], "argument --gpus-per-replica: -1 is out of range"),
        (["--checkpoint", str(trained["checkpoint"]), "--replicas", "0"], "argument --replicas: 0 is out of range"),
        (["--checkpoint", str(trained["checkpoint"]), "--max-upload-mb", "0"], "argument --max-upload-mb: 0 is out of range"),
        (["--checkpoint", str(trained["checkpoint"]), "--max-batch-size", "0"], "argument --max-batch-size: 0 is out of range"),
        (["--checkpoint", str(trained["checkpoint"]), "--ensemble", "2"], "not with --checkpoint"),
        (["--ensemble", "0"], "argument --ensemble: 0 is out of range"),
        (["--experiment", "nothing-here", "--storage", str(tmp_path)], "--experiment nothing-here"),
    ]
    with socket.socket() as taken:   # a port another server listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases.append((["--checkpoint", str(trained["checkpoint"]), "--port", port], f"--port {port}: cannot listen"))
        for argv, reason in cases:
            code, out, err = run_main(serve, argv)
            assert code == 2 and reason in err and err.count("\n") == 1, (argv, err)
            assert err.startswith("dogs-serve: error: ")


def test_an_export_folder_serves_the_checkpoints_model(trained, photos, tmp_path):
    from dogs.export import export_model

    model, ckpt = checkpoint.load(trained["checkpoint"])
    export_model(model, ckpt, tmp_path / "model", source={"checkpoint": str(trained["checkpoint"])},
                 log_fn=lambda *a: None)
    [(served, meta)], source = serve.load_model(serve.get_args_parser().parse_args(["--export",
                                                                                   str(tmp_path / "model")]))
    assert meta["classes"] == trained["classes"] and source == {"export": str(tmp_path / "model")}
    predictor = Predictor([(served, meta)], device=torch.device("cpu"))
    probs = predictor.probs([predictor.decode(f) for f in photos["files"]])
    assert np.allclose(probs, [trained["probs"][f.name] for f in photos["files"]], atol=1e-6)
    # a folder that is not an export, or whose weights file is damaged: one line
    (tmp_path / "other").mkdir()
    code, out, err = run_main(serve, ["--export", str(tmp_path / "other")])
    assert code == 2 and "not a folder written by tune.best --export" in err and err.count("\n") == 1, err
    (tmp_path / "model" / "model.safetensors").write_bytes(b"not safetensors")
    code, out, err = run_main(serve, ["--export", str(tmp_path / "model")])
    assert code == 2 and "model.safetensors cannot be loaded" in err and err.count("\n") == 1, err


def test_the_console_names_where_the_model_came_from():
    assert serve.describe({"experiment": "runs/b", "trial": "3f2a_00001", "checkpoint": "runs/b/t/checkpoint.pt",
                           "metric": "val_acc", "mode": "max", "ensemble": []}) == "trial 3f2a_00001 of runs/b"
    assert serve.describe({"checkpoint": "/x/best.pt"}) == "/x/best.pt"
    assert serve.describe({"export": "/x/model"}) == "/x/model"


def test_a_host_other_than_loopback_is_warned_about():
    assert serve.get_args_parser().parse_args([]).host == "127.0.0.1"
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert serve.host_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert f"--host {host}" in serve.host_warning(host)


def test_replicas_as_the_gpus_allow():
    parser = serve.get_args_parser()
    assert serve.replica_count(parser.parse_args([]), {"CPU": 2}) == 1
    assert serve.replica_count(parser.parse_args(["--gpus-per-replica", "0.25"]), {"GPU": 2}) == 8
    assert serve.replica_count(parser.parse_args(["--gpus-per-replica", "1"]), {"GPU": 3}) == 3
    one = parser.parse_args(["--gpus-per-replica", "0.5", "--replicas", "1"])
    assert serve.replica_count(one, {"CPU": 8, "GPU": 2}) == 1
    with pytest.raises(serve.UserError, match="has 0 GPU"):
        serve.replica_count(parser.parse_args(["--gpus-per-replica", "0.5"]), {"CPU": 2})
    # replicas that cannot all start: refused on this machine, left to a cluster's autoscaler
    with pytest.raises(serve.UserError, match="need 4 CPUs"):
        serve.replica_count(parser.parse_args(["--replicas", "4"]), {"CPU": 2})
    with pytest.raises(serve.UserError, match="need 1.5 GPUs"):
        serve.replica_count(parser.parse_args(["--replicas", "3", "--gpus-per-replica", "0.5"]), {"CPU": 8, "GPU": 1})
    assert serve.replica_count(parser.parse_args(["--replicas", "4"]), {"CPU": 2}, fixed=False) == 4


# ---------------------------------------------------------------------------------------------------------------
# the page, in headless Chromium driven through the DevTools protocol

def chromium():
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


class DevTools:
    """The smallest DevTools protocol client: send a command to a page, wait for its answer."""

    def __init__(self, page):
        self.socket, self.next_id = page, 0

    def __call__(self, method, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:   # events come in between: skip them
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression):
        return self("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression, what, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page did not show {what} within {timeout} s")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium's first page, through the DevTools protocol."""
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium; .ci/run installs it)")
    proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                             f"--user-data-dir={tmp_path / 'chromium'}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        said, deadline = [], time.monotonic() + 60
        while not any("DevTools listening on" in line for line in said):
            line = proc.stderr.readline()
            if not line and (proc.poll() is not None or time.monotonic() > deadline):
                pytest.fail(f"chromium did not start:\n{''.join(said)[-2000:]}")
            said.append(line)
        port = next(line for line in said if "DevTools listening on" in line).split("127.0.0.1:")[1].split("/")[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        from websockets.sync.client import connect

        with connect(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"], max_size=None,
                     open_timeout=30) as page:
            yield DevTools(page)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_the_page_shows_the_top5_of_a_chosen_or_dropped_photo(server, browser, photos, trained, tmp_path):
    photo = next(f for f in photos["files"] if f.name == "large.jpg")
    browser("Page.enable")
    browser("Emulation.setDeviceMetricsOverride", width=800, height=760, deviceScaleFactor=1, mobile=False)
    browser("Page.navigate", url=server["url"] + "/")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('file')", "the file chooser")
    # choose the photo in the file input, as a user does
    root = browser("DOM.getDocument")["root"]["nodeId"]
    chooser = browser("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser("DOM.setFileInputFiles", nodeId=chooser, files=[str(photo)])
    rows = json.loads(browser.wait_for(
        "document.querySelectorAll('.prediction').length === 5 && JSON.stringify([...document.querySelectorAll("
        "'.prediction')].map(r => [r.querySelector('.name').textContent, r.querySelector('.prob').textContent, "
        "r.querySelector('.bar').style.width]))", "5 predictions"))
    shot = tmp_path / "serve_page.png"
    shot.write_bytes(base64.b64decode(browser("Page.captureScreenshot", format="png")["data"]))
    print(f"\nscreenshot of the page: {shot}")
    # the names, percentages and bar widths of the predictor's top 5
    expected = expected_top(trained, photo.name, 5)
    assert [name for name, _, _ in rows] == [name for name, _ in expected]
    assert [prob for _, prob, _ in rows] == [f"{100 * p:.1f}%" for _, p in expected]
    assert [width for _, _, width in rows] == [f"{100 * p:.1f}%" for _, p in expected]
    assert "Top 5 for large.jpg" in browser.evaluate("document.getElementById('status').textContent")
    assert Image.open(io.BytesIO(shot.read_bytes())).size == (800, 760)
    # drop another photo on the drop zone, as a user drags one from a file manager
    dropped = next(f for f in photos["files"] if f.name == "rgba.png")
    box = browser.evaluate("JSON.stringify(document.getElementById('drop').getBoundingClientRect())")
    x, y = json.loads(box)["x"] + 20, json.loads(box)["y"] + 20
    for kind in ("dragEnter", "dragOver", "drop"):
        browser("Input.dispatchDragEvent", type=kind, x=x, y=y,
                data={"items": [], "files": [str(dropped)], "dragOperationsMask": 1})
    browser.wait_for("document.getElementById('status').textContent.includes('rgba.png') && "
                     "document.querySelectorAll('.prediction').length === 5", "the dropped photo's predictions")
    names = browser.evaluate("[...document.querySelectorAll('.prediction .name')].map(n => n.textContent)")
    assert names == [name for name, _ in expected_top(trained, dropped.name, 5)]


# ---------------------------------------------------------------------------------------------------------------
# the deployment's class alone, in this process (no Ray): what --tta changes

def ask(classifier, body, query=""):
    """The JSON answer of the deployment's class to POST /predict?query with `body`, through Starlette's Request."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": query.encode(),
             "headers": [(b"content-length", str(len(body)).encode())]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def call():
        return await classifier(Request(scope, receive))

    import asyncio

    response = asyncio.run(call())
    return response.status_code, json.loads(response.body)


def test_a_client_gone_mid_upload_is_one_log_line_and_no_exception(tiny_config):
    from starlette.requests import Request

    from dogs.config import resolve
    from dogs.models import build_model
    from tune.serve_app import CLIENT_GONE, Classifier

    config = resolve({**tiny_config, "weights": "none"})
    classifier = Classifier.func_or_class([(build_model(config, 3).state_dict(), config)], ["a", "b", "c"], {}, 1,
                                          0.01, 1 << 20, False)
    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"content-length", b"100000")]}
    messages = iter([{"type": "http.request", "body": bytes(1000), "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    import asyncio

    said, handler = [], logging.Handler(logging.WARNING)   # Ray's logger does not propagate: listen on it
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("ray.serve").addHandler(handler)
    try:
        response = asyncio.run(classifier(Request(scope, receive)))
    finally:
        logging.getLogger("ray.serve").removeHandler(handler)
    assert response.status_code == CLIENT_GONE
    assert said == ["POST /predict: the client disconnected after 1000 byte(s) of its upload; nothing to answer"]


def test_tta_serves_the_mirror_averaged_predictions_of_predict_tta(trained, photos):
    from tune.serve_app import Classifier

    model, ckpt = checkpoint.load(trained["checkpoint"])
    served = {}
    for tta in (False, True):
        classifier = Classifier.func_or_class([(model.state_dict(), ckpt["config"])], ckpt["classes"], {}, 1, 0.01,
                                              1 << 20, tta)
        predictor = Predictor([(model, ckpt)], tta=tta, device=torch.device("cpu"))
        for f in photos["files"]:
            status, answer = ask(classifier, f.read_bytes(), "top_k=6")
            assert status == 200, answer
            top, _ = predictor.predict([f], 6)[0]
            assert [(p["class"], p["index"]) for p in answer["predictions"]] == [(n, i) for n, i, _ in top]
            assert np.allclose([p["probability"] for p in answer["predictions"]], [p for _, _, p in top], atol=1e-6)
            served[tta, f.name] = {p["class"]: p["probability"] for p in answer["predictions"]}
    # the mirror changes what the model sees: some photo's probabilities move
    assert any(abs(served[True, f.name][c] - served[False, f.name][c]) > 1e-4
               for f in photos["files"] for c in trained["classes"])
    status, answer = ask(classifier, b"not an image")
    assert status == 400 and "not an image" in answer["error"]


@pytest.mark.slow
def test_ensemble_serves_the_k_best_trials_as_predict_ensemble(photos, tmp_path):
    from conftest import TWO_TRIAL_SPACE
    from tune import search
    from tune.serve_app import Classifier
    from tune.best import predictor

    (tmp_path / "space.yaml").write_text(TWO_TRIAL_SPACE)
    runs = str(tmp_path / "runs")
    code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(photos["root"]),
                                       "--storage", runs, "--name", "e"])
    assert code == 0, out[-3000:] + err[-3000:]
    # the experiment's two best trials, as tune.best --predict --ensemble 2 picks them
    members, source = serve.load_model(serve.get_args_parser().parse_args(
        ["--experiment", "e", "--storage", runs, "--ensemble", "2"]))
    assert len(members) == 2 and len(source["ensemble"]) == 1
    assert serve.describe(source) == f"trial {source['trial']} of {source['experiment']}"
    classifier = Classifier.func_or_class([(m.state_dict(), c["config"]) for m, c in members], members[0][1]["classes"],
                                          source, 1, 0.01, 1 << 20, False)
    expected, _ = predictor("e", runs, ensemble=2, device=torch.device("cpu"), log_fn=lambda *a: None)
    for f in photos["files"]:
        status, answer = ask(classifier, f.read_bytes(), "top_k=6")
        top, _ = expected.predict([f], 6)[0]
        assert status == 200 and [p["class"] for p in answer["predictions"]] == [n for n, _, _ in top]
        assert np.allclose([p["probability"] for p in answer["predictions"]], [p for _, _, p in top], atol=1e-6)
