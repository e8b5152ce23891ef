"""The README's picture of the assistant: asks one question of a finished run on `raftune serve`'s web page, in
headless Chromium as a user does, and saves the page (assets/serve.png) and what it shows (assets/serve.json: recipe,
run, base, GGUF, question, answer, final answer, sources, raftune commit, date and the PNG's sha256).

    .venv/bin/python assets/screenshot.py [--config configs/demo-gemma.yaml] [--runs-dir runs] [--question TEXT]

Needs the run's export stage (its GGUF that passed the fidelity report) and Debian's chromium (apt-get install
chromium; Playwright drives it, no browser download). tests/test_serve.py drives the page with the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # the HTTP client the pinned openai package brings

from raftune.answer import final_answer
from raftune.config import load_config
from raftune.data.testset import load_testset
from raftune.manifest import sha256_file
from raftune.serve.assistant import choose_gguf

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# headless, and nothing that reaches out of the machine
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def raftune_serve(args: list[str]):
    """`raftune serve ARGS` as a user starts it, on a free local port: yields its URL once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "raftune", "serve", *args, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1500):  # the real models load in tens of seconds on a busy machine
            try:
                httpx.get(f"{url}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    raise RuntimeError(f"raftune serve exited: {process.stdout.read()}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def ask_page(url: str, question: str, screenshot: Path | None = None, timeout_s: float = 60) -> dict:
    """Type `question` into the web page at `url`, wait for the final answer and open the first quoted passage: what
    the page then shows (answer, final answer, the sources' headings, the first passage); the page saved as PNG to
    `screenshot` if given."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(url)
            page.fill("#question", question)
            page.press("#question", "Enter")
            page.wait_for_selector("#final", state="visible", timeout=timeout_s * 1000)
            page.click("details.source >> nth=0")
            shown = {"model": page.inner_text("#model").removeprefix("Modell: "),
                     "answer": page.inner_text("#answer").strip(), "final_answer": page.inner_text("#final-text"),
                     "sources": page.locator("details.source summary").all_inner_texts(),
                     "first_source_text": page.locator("details.source >> nth=0").locator("blockquote").inner_text()}
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
            return shown
        finally:
            browser.close()


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo-gemma.yaml", help="the run's recipe (default: make demo's)")
    parser.add_argument("--runs-dir", default="runs", help="where the run's stages are (default runs)")
    parser.add_argument("--question", help="the question (default: the first of the recipe's test set)")
    parser.add_argument("--out", default=str(ROOT / "assets" / "serve.png"),
                        help="the PNG to write; its .json goes beside it (default assets/serve.png)")
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        sys.exit(f"screenshot: {CHROMIUM} is missing (apt-get install chromium)")

    overrides = [f"runs_dir={args.runs_dir}"]
    config = load_config(args.config, overrides)
    gguf = choose_gguf(config)  # the GGUF `raftune serve` answers with by default, named so the record is certain
    question = args.question or load_testset(config.evaluate.testset)[0].question
    out = Path(args.out)
    with raftune_serve(["--config", args.config, *overrides, "--gguf", str(gguf)]) as url:
        shown = ask_page(url, question, screenshot=out, timeout_s=900)
    if not shown["final_answer"] or shown["final_answer"] != final_answer(shown["answer"]):
        sys.exit(f"screenshot: the page's final answer {shown['final_answer']!r} is not the answer's "
                 f"{final_answer(shown['answer'])!r}")

    record = {"recipe": args.config, "run": config.run, "base": config.base, "gguf": gguf.name, "question": question,
              **shown, "raftune_commit": git_commit(), "date": datetime.date.today().isoformat(),
              "png_sha256": sha256_file(out)}
    out.with_suffix(".json").write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"screenshot: {out} and {out.with_suffix('.json')}: {shown['final_answer']}")


if __name__ == "__main__":
    main()
