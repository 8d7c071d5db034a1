"""The labeling page in a real headless Chromium: keys, undo, reload, escaping, CSP, identity.

Needs Debian's Chromium (`apt-get install -y chromium`, as .ci/run does) and Playwright for Python
as the driver only: the browser is never downloaded (`playwright install` is not used).
"""

import contextlib
import os
import re
import socket
import threading
import time

import pytest

from rlhf_jax.feedback import server
from rlhf_jax.feedback.store import FeedbackStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
TOKEN = "browser-test-token"
SCRIPT = '<script>alert("xss")</script><img src=x onerror="alert(2)">'


@contextlib.contextmanager
def running_server(app):
  """uvicorn on a socket bound here first, so the port is ours before the thread starts."""
  import uvicorn

  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind(("127.0.0.1", 0))
  uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
  thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 10
  while not uv.started:
    if time.monotonic() > deadline or not thread.is_alive():
      raise RuntimeError("uvicorn did not start within 10 s")
    time.sleep(0.02)
  try:
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
  finally:
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


requires_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: `apt-get install -y chromium` (CI "
    "does) to run the labeling page in a real browser")


@contextlib.contextmanager
def browser_page(tmp_path, problems):
  """A fresh Chromium profile and page; console errors and page errors go to `problems`."""
  from playwright.sync_api import sync_playwright

  with sync_playwright() as pw:
    context = pw.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
      page = context.pages[0] if context.pages else context.new_page()
      page.set_default_timeout(10_000)
      page.on("pageerror", lambda e: problems.append(str(e)))
      page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
      yield page
    finally:
      context.close()


@requires_chromium
def test_label_pairs_with_keys_undo_and_reload(tmp_path):
  from playwright.sync_api import expect

  path = tmp_path / "f.db"
  with FeedbackStore(path) as store:
    ids = store.add_samples([{"prompt": "Say hi", "response": r, "model": "m"}
                             for r in ("hello there", "hey", SCRIPT)])
  text_of = dict(zip(("hello there", "hey", SCRIPT), ids))
  dialogs, problems = [], []

  with (running_server(server.create_app(path, token=TOKEN, labeler="alice")) as base,
        browser_page(tmp_path, problems) as page):
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    progress = page.locator("#progress")

    # The URL holds alice's token; the page shows whose it is and asks for no name.
    page.goto(f"{base}/?token={TOKEN}")
    expect(page.locator("#labeler")).to_have_text("alice")
    expect(progress).to_have_text("0 labeled / 3 queued")
    assert page.locator("input").count() == 0

    seen_texts, shown = set(), []

    def judge(key, expected_progress):
      left, right = page.inner_text("#left"), page.inner_text("#right")
      seen_texts.update((left, right))
      shown.append((text_of[left], text_of[right]))
      page.keyboard.press(key)
      expect(progress).to_have_text(expected_progress)

    judge("a", "1 labeled / 2 queued")
    judge("ArrowRight", "2 labeled / 1 queued")
    page.keyboard.press("u")  # the second pair comes back
    expect(progress).to_have_text("1 labeled / 2 queued")
    assert {text_of[page.inner_text("#left")], text_of[page.inner_text("#right")]} == set(shown[1])
    judge("t", "2 labeled / 1 queued")

    page.reload()
    expect(progress).to_have_text("2 labeled / 1 queued")
    expect(page.locator("#keys")).to_contain_text("a or ← = A is better")
    judge("s", "3 labeled / 0 queued")
    expect(page.locator("#done")).to_be_visible()

    # The sample with markup was shown in two of the pairs, as text.
    assert SCRIPT in seen_texts
    page.keyboard.press("u")
    expect(progress).to_have_text("2 labeled / 1 queued")
    assert SCRIPT in page.inner_text("main")
    assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0

  assert dialogs == [], "model text ran as script"
  assert problems == [], "console errors (a CSP violation would show here)"
  with FeedbackStore(path) as store:
    live = store.judgements(kind="comparison")
    everything = store.judgements(kind="comparison", include_retracted=True)
  # Exact outcomes, by alice, with the ids in the order the page showed them.
  assert [(c.sample_a, c.sample_b, c.outcome, c.labeler) for c in live] == [
      (*shown[0], "a", "alice"), (*shown[2], "tie", "alice")]
  retracted = [(c.sample_a, c.sample_b, c.outcome) for c in everything if c.retracted_at]
  assert retracted == [(*shown[1], "b"), (*shown[3], "skip")]


@requires_chromium
def test_rate_with_number_keys(tmp_path):
  from playwright.sync_api import expect

  path = tmp_path / "f.db"
  with FeedbackStore(path) as store:
    ids = store.add_samples([{"prompt": "Q", "response": r, "model": "m"} for r in ("x", "y")])
  problems = []
  app = server.create_app(path, tokens={TOKEN: "bob", "carols-token": "carol"}, rate_scale=3)
  with running_server(app) as base, browser_page(tmp_path, problems) as page:
    page.goto(f"{base}/?token={TOKEN}&labeler=carol")  # a name in the URL changes nothing
    expect(page.locator("#labeler")).to_have_text("bob")
    progress = page.locator("#progress")
    expect(progress).to_have_text("0 labeled / 2 queued")
    expect(page.locator("#values button")).to_have_count(3)
    expect(page.locator("#keys")).to_contain_text("1..3 = rating")
    first = page.inner_text("#sample")
    page.keyboard.press("9")  # out of range: ignored
    page.keyboard.press("3")
    expect(progress).to_have_text("1 labeled / 1 queued")
    page.keyboard.press("u")
    expect(progress).to_have_text("0 labeled / 2 queued")
    expect(page.locator("#sample")).to_have_text(first)
    page.keyboard.press("2")
    expect(progress).to_have_text("1 labeled / 1 queued")
    page.locator("#values button", has_text="1").click()
    expect(progress).to_have_text("2 labeled / 0 queued")
  assert problems == []
  with FeedbackStore(path) as store:
    live = store.judgements(kind="rating")
  sample_of = dict(zip(("x", "y"), ids))
  assert [(r.sample_id, r.value, r.scale, r.labeler) for r in live] == [
      (sample_of[first], 2, 3, "bob"), (sample_of[({"x", "y"} - {first}).pop()], 1, 3, "bob")]


@requires_chromium
def test_score_a_rubric_with_keys_undo_and_enter(tmp_path):
  from playwright.sync_api import expect

  from rlhf_jax.feedback.rubric import Criterion, Rubric

  path = tmp_path / "f.db"
  with FeedbackStore(path) as store:
    ids = store.add_samples([{"prompt": "What is a dog?", "response": r, "model": "m"}
                             for r in (SCRIPT, "a canine")])
  rubric = Rubric((Criterion("accuracy", 5, "Is the answer right?"), Criterion("tone", 3)))
  dialogs, problems, posted = [], [], []
  app = server.create_app(path, token=TOKEN, labeler="cy", rubric=rubric)
  with running_server(app) as base, browser_page(tmp_path, problems) as page:
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: posted.append(r.post_data_json)
            if r.url.endswith("/api/judge") else None)
    page.goto(f"{base}/?token={TOKEN}")
    progress, answer = page.locator("#progress"), page.locator("#answer")
    rows = page.locator("#criteria .criterion")
    focused = re.compile(r"\bfocused\b")
    expect(progress).to_have_text("0 labeled / 2 queued")
    expect(page.locator("#prompt-title")).to_have_text("Question")
    expect(page.locator("#prompt")).to_have_text("What is a dog?")
    expect(answer).to_have_text(SCRIPT)  # as text
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Is the answer right?")
    expect(rows.nth(0)).to_have_class(focused)

    page.keyboard.press("9")  # beyond accuracy's 1..5: ignored
    page.keyboard.press("4")  # accuracy 4, on to tone
    expect(rows.nth(1)).to_have_class(focused)
    page.keyboard.press("Backspace")  # back to accuracy, to change it
    expect(rows.nth(0)).to_have_class(focused)
    page.keyboard.press("5")
    page.keyboard.press("3")  # tone, the last criterion: submits
    expect(progress).to_have_text("1 labeled / 1 queued")
    expect(answer).to_have_text("a canine")
    page.keyboard.press("u")  # the scored sample comes back, with no scores
    expect(progress).to_have_text("0 labeled / 2 queued")
    expect(answer).to_have_text(SCRIPT)
    expect(page.locator("#criteria button[aria-pressed=true]")).to_have_count(0)
    page.keyboard.press("2")
    page.keyboard.press("1")
    expect(progress).to_have_text("1 labeled / 1 queued")

    # Tone first: the last criterion goes back to the unscored one; Enter submits once both are.
    page.keyboard.press("ArrowRight")
    page.keyboard.press("2")
    expect(rows.nth(0)).to_have_class(focused)
    page.keyboard.press("4")
    expect(rows.nth(1)).to_have_class(focused)
    assert len(posted) == 2  # not submitted yet: accuracy was not the last criterion
    page.keyboard.press("Enter")
    expect(progress).to_have_text("2 labeled / 0 queued")
    assert posted[-1] == {"sample": ids[1], "scores": {"accuracy": 4, "tone": 2}}
    expect(page.locator("#done")).to_be_visible()
    assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0
  assert dialogs == [] and problems == []
  with FeedbackStore(path) as store:
    assert [(r["sample_id"], r["scores"], r["labeler"]) for r in store.export_scores()] == [
        (ids[0], {"accuracy": 2, "tone": 1}, "cy"), (ids[1], {"accuracy": 4, "tone": 2}, "cy")]


@requires_chromium
def test_a_pair_taken_over_by_another_labeler_is_refused_and_the_page_moves_on(tmp_path):
  from playwright.sync_api import expect

  path = tmp_path / "f.db"
  with FeedbackStore(path) as store:
    store.add_samples([{"prompt": "Q", "response": r, "model": "m"} for r in ("x", "y")])
  problems = []
  app = server.create_app(path, tokens={TOKEN: "alice", "bobs-token": "bob"})
  with running_server(app) as base, browser_page(tmp_path, problems) as page:
    page.goto(f"{base}/?token={TOKEN}")
    expect(page.locator("#progress")).to_have_text("0 labeled / 1 queued")
    # Alice's lease runs out while the page is open (a store whose clock is 20 minutes ahead
    # sees it expired) and bob takes the pair.
    with FeedbackStore(path, clock=lambda: time.time() + 1200) as ahead:
      assert ahead.next_pair("bob") is not None
    page.keyboard.press("a")
    expect(page.locator("#status")).to_contain_text("leased to labeler 'bob'")
    expect(page.locator("#done")).to_be_visible()  # refreshed: nothing left that alice may judge
  problems = [p for p in problems if "409" not in p]  # the refused POST, logged by Chromium
  assert problems == []
  with FeedbackStore(path) as store:
    assert store.judgements(include_retracted=True) == []
