"""Retake the screenshots in docs/: the search's console, TensorBoard's HParams tab, optuna-dashboard.

    .venv/bin/python docs/screenshots.py [--out docs] [--experiment runs/X]

Runs a tiny demo search (`--smoke-test`, seconds per trial on a CPU) into a temporary folder unless --experiment
names a finished one (then there is no console capture), serves it on 127.0.0.1 with `tensorboard` and
`optuna-dashboard`, and photographs each page with headless Chromium (`chromium` on PATH).
"""
import argparse
import html
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
WINDOW = "--window-size=1600,1000"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot(chromium, url, png, budget_ms=15000):
    """One page as a PNG, after `budget_ms` of the page's own time (its scripts load the data)."""
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}", WINDOW,
                    f"--virtual-time-budget={budget_ms}", url], check=True, capture_output=True, timeout=180)
    print(f"wrote {png}")


def serve(command, url, log):
    """Start a server and wait (at most 90 s) until `url` answers."""
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.terminate()
                raise SystemExit(f"{command[0]} did not answer at {url}; see {log.name}")
            time.sleep(0.5)


def console_page(text, path):
    """The captured console as a dark terminal-like HTML page."""
    path.write_text("<html><body style='background:#1e1e1e;margin:0'><pre style='color:#d4d4d4;font:14px/1.35 "
                    "DejaVu Sans Mono,monospace;padding:16px;white-space:pre-wrap'>"
                    f"{html.escape(text)}</pre></body></html>")
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent), help="where the PNGs go (default: docs/)")
    p.add_argument("--experiment", help="a finished experiment folder (default: run a tiny demo search)")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("chromium is not installed: the screenshots need a headless browser")
    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="dogs-screenshots-"))
    exp_dir = Path(args.experiment) if args.experiment else work / "runs" / "demo"

    # the console of a tiny demo search, as a page
    if not args.experiment:
        command = [str(BIN / "python"), "-m", "tune.search", "--space", "cnn_scratch.yaml", "--smoke-test",
                   "--storage", str(work / "runs"), "--name", "demo"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if run.returncode != 0:
            raise SystemExit(f"the demo search failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
        text = "$ python -m tune.search --space cnn_scratch.yaml --smoke-test\n" + run.stdout + run.stderr
        shoot(chromium, console_page(text, work / "console.html").as_uri(), out / "console.png", budget_ms=1000)

    # TensorBoard's HParams tab, optuna-dashboard's study page
    with open(work / "servers.log", "w") as log:
        port = free_port()
        tb = serve([str(BIN / "tensorboard"), "--logdir", str(exp_dir), "--host", "127.0.0.1", "--port", str(port),
                    "--load_fast", "false"], f"http://127.0.0.1:{port}/", log)
        try:
            time.sleep(5)   # the event files load in the background after it answers
            shoot(chromium, f"http://127.0.0.1:{port}/#hparams", out / "hparams.png")
        finally:
            tb.terminate()
        port = free_port()
        dash = serve([str(BIN / "optuna-dashboard"), f"sqlite:///{exp_dir / 'study.db'}", "--host", "127.0.0.1",
                      "--port", str(port)], f"http://127.0.0.1:{port}/api/studies", log)
        try:
            shoot(chromium, f"http://127.0.0.1:{port}/dashboard/studies/1", out / "optuna-dashboard.png")
        finally:
            dash.terminate()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
