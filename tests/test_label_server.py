"""The labeling web server through Starlette's test client: API, token, limits, escaping, CSP."""

import json
import re
import time

import pytest
from starlette.testclient import TestClient

from rlhf_jax import cli
from rlhf_jax.feedback import server
from rlhf_jax.feedback.rubric import Criterion, Rubric
from rlhf_jax.feedback.store import FeedbackError, FeedbackStore

TOKEN = "test-token"  # alice's, in the one-labeler apps
AUTH = {"X-Label-Token": TOKEN}
# Requests go to 127.0.0.1:8765, a name and port the server answers to (the Host check).
BASE = "http://127.0.0.1:8765"
SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'


def make_store(path, responses=("hello", "hey", "yo")):
  with FeedbackStore(path) as store:
    store.add_samples([{"prompt": "Say hi", "response": r, "model": "m"} for r in responses])
  return path


@pytest.fixture
def store_path(tmp_path):
  return make_store(tmp_path / "f.db")


def token_of(labeler):
  return f"token-of-{labeler}"


def team_app(path, *labelers, **kwargs):
  """One server for several labelers, each with their own token (as `rlhf-jax label` makes)."""
  return server.create_app(path, tokens={token_of(name): name for name in labelers}, **kwargs)


@pytest.fixture
def client(store_path):
  with TestClient(server.create_app(store_path, token=TOKEN, labeler="alice", seed=0),
                  base_url=BASE) as c:
    yield c


@pytest.fixture
def team(store_path):
  with TestClient(team_app(store_path, "alice", "bob", "carol", seed=0), base_url=BASE) as c:
    yield c


@pytest.fixture
def rating_client(store_path):
  with TestClient(server.create_app(store_path, token=TOKEN, labeler="bob", rate_scale=3),
                  base_url=BASE) as c:
    yield c


def get(client, path, labeler=None):
  """GET as `labeler` (their token, in a team app), else with the one-labeler app's token."""
  headers = AUTH if labeler is None else {"X-Label-Token": token_of(labeler)}
  response = client.get(path, headers=headers)
  assert response.status_code == 200, response.text
  return response.json()


def post(client, path, body, status=200, labeler=None):
  headers = AUTH if labeler is None else {"X-Label-Token": token_of(labeler)}
  response = client.post(path, json=body, headers=headers)
  assert response.status_code == status, response.text
  return response.json()


def stored(store_path, **kwargs):
  with FeedbackStore(store_path) as store:
    return store.judgements(include_retracted=True, **kwargs)


def test_task_judge_progress(team, store_path):
  assert get(team, "/api/progress", "alice") == {
      "kind": "pair", "labeled": 0, "queued": 3,
      "everyone": {"labeled": 0, "queued": 3, "judgements": 0}}
  task = get(team, "/api/task", "alice")
  assert task["kind"] == "pair" and not task["done"] and task["prompt"] == "Say hi"
  left, right = task["samples"]
  assert post(team, "/api/judge", {"a": left["id"], "b": right["id"], "outcome": "b"},
              labeler="alice")["kind"] == "comparison"
  progress = get(team, "/api/progress", "alice")
  assert (progress["labeled"], progress["queued"]) == (1, 2)
  (comparison,) = stored(store_path)
  # The ids are stored in the order the page showed them: "b" means the right-hand text won.
  assert (comparison.sample_a, comparison.sample_b, comparison.outcome, comparison.labeler) == (
      left["id"], right["id"], "b", "alice")
  assert get(team, "/api/progress", "bob")["labeled"] == 0  # per labeler; "everyone" counts all
  assert get(team, "/api/progress", "bob")["everyone"]["labeled"] == 1


def test_pairs_until_done_and_order_is_randomised(client, store_path):
  shown_first_is_lower = set()
  for outcome in ("a", "tie", "skip"):
    left, right = get(client, "/api/task")["samples"]
    shown_first_is_lower.add(left["id"] < right["id"])
    post(client, "/api/judge", {"labeler": "alice", "a": left["id"], "b": right["id"],
                                "outcome": outcome})
  assert get(client, "/api/task") == {"kind": "pair", "done": True}
  assert [c.outcome for c in stored(store_path)] == ["a", "tie", "skip"]
  assert shown_first_is_lower == {True, False}  # seed 0 shows both orders within three pairs


def test_undo_brings_the_pair_back(client, store_path):
  task = get(client, "/api/task")
  ids = [s["id"] for s in task["samples"]]
  post(client, "/api/judge", {"labeler": "alice", "a": ids[0], "b": ids[1], "outcome": "a"})
  assert sorted(s["id"] for s in get(client, "/api/task")["samples"]) != sorted(ids)
  undone = post(client, "/api/undo", {"labeler": "alice"})["undone"]
  assert undone["kind"] == "comparison"
  assert sorted(s["id"] for s in get(client, "/api/task")["samples"]) == sorted(ids)
  assert get(client, "/api/progress")["labeled"] == 0
  assert post(client, "/api/undo", {"labeler": "alice"}) == {"undone": None}
  (comparison,) = stored(store_path)
  assert comparison.retracted_at is not None  # retracted, not deleted


@pytest.mark.parametrize("headers, status", [({}, 401), ({"X-Label-Token": "guess"}, 403),
                                             ({"X-Label-Token": ""}, 401)])
def test_every_api_call_needs_the_token(client, store_path, headers, status):
  body = {"labeler": "alice", "a": 1, "b": 2, "outcome": "a"}
  responses = [
      client.get("/api/task", params={"labeler": "alice"}, headers=headers),
      client.get("/api/progress", params={"labeler": "alice"}, headers=headers),
      client.get("/api/config", headers=headers),
      client.post("/api/judge", json=body, headers=headers),
      client.post("/api/undo", json={"labeler": "alice"}, headers=headers),
      client.get("/api/task", params={"labeler": "alice", "token": TOKEN}, headers=headers),
  ]
  for response in responses:
    assert response.status_code == status, response.text
    assert "X-Label-Token" in response.json()["error"]
  assert stored(store_path) == []
  with FeedbackStore(store_path) as store:
    assert store.progress().pairs_claimed == 0  # a refused read leased nothing either


def test_oversized_body_is_413_and_stores_nothing(client, store_path):
  body = {"labeler": "alice" * 1000, "a": 1, "b": 2, "outcome": "a"}
  response = client.post("/api/judge", json=body, headers=AUTH)
  assert response.status_code == 413 and "limit is 4096" in response.json()["error"]
  # Chunked, without a Content-Length: counted while reading.
  chunks = iter([b'{"labeler": "', b"x" * 3000, b"x" * 3000, b'"}'])
  response = client.post("/api/undo", content=chunks,
                         headers={**AUTH, "Content-Type": "application/json"})
  assert response.status_code == 413 and "over 4096 bytes" in response.json()["error"]
  assert stored(store_path) == []


@pytest.mark.parametrize("body, message", [
    ({"labeler": "alice", "a": 1, "b": 2, "outcome": "best"}, "outcome: expected one of"),
    ({"labeler": "alice", "a": "1", "b": 2, "outcome": "a"}, "a: expected a sample id"),
    ({"labeler": "alice", "a": 1, "b": True, "outcome": "a"}, "b: expected a sample id"),
    ({"labeler": "alice", "a": 1, "b": 2.0, "outcome": "a"}, "b: expected a sample id"),
    ({"labeler": "alice", "a": 1, "b": 2}, "missing ['outcome']"),
    ({"labeler": "alice", "a": 1, "b": 2, "outcome": "a", "winner": "a"}, "unknown ['winner']"),
    ({"labeler": " ", "a": 1, "b": 2, "outcome": "a"}, "labeler: expected a non-empty name"),
    ({"labeler": "alice", "a": 1, "b": 1, "outcome": "a"}, "two different samples"),
    ({"labeler": "alice", "a": 1, "b": 99, "outcome": "a"}, "no sample with id 99"),
    ({"labeler": "alice", "a": 1, "b": 2 ** 63, "outcome": "a"}, "b: expected a sample id (a positive 64-bit"),
    ({"labeler": "alice", "sample": 1, "value": 2}, "start `rlhf-jax label` with --rate N"),
    ({"sample": 1, "scores": {"accuracy": 2}}, "not rubric scores; start `rlhf-jax label` with --rubric"),
    ([1, 2], "expected a JSON object"),
])
def test_invalid_judgements_are_400_with_the_field(client, store_path, body, message):
  assert message in post(client, "/api/judge", body, status=400)["error"]
  assert stored(store_path) == []


def test_not_json_is_400_and_wrong_content_type_415(client):
  response = client.post("/api/judge", content=b"{not json",
                         headers={**AUTH, "Content-Type": "application/json"})
  assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
  response = client.post("/api/judge", content=b"labeler=alice",
                         headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
  assert response.status_code == 415
  # Not a 500: JSON nested past the parser's recursion limit, within the 4 KiB body limit.
  response = client.post("/api/judge", content=b"[" * 2000 + b"]" * 2000,
                         headers={**AUTH, "Content-Type": "application/json"})
  assert response.status_code == 400 and "nested too deeply" in response.json()["error"]


def test_ratings(rating_client, store_path):
  config = rating_client.get("/api/config", headers=AUTH).json()
  assert config["kind"] == "rating" and config["scale"] == 3
  task = get(rating_client, "/api/task")
  assert task["kind"] == "rating" and task["scale"] == 3
  sample = task["sample"]["id"]
  for value in (0, 4, 2.5, "2", True):
    error = post(rating_client, "/api/judge", {"labeler": "bob", "sample": sample, "value": value},
                 status=400)["error"]
    assert "value: expected an int in 1..3" in error
  assert "--rate" in post(rating_client, "/api/judge", {"labeler": "bob", "a": 1, "b": 2,
                                                        "outcome": "a"}, status=400)["error"]
  post(rating_client, "/api/judge", {"labeler": "bob", "sample": sample, "value": 3})
  again = {"labeler": "bob", "sample": sample, "value": 1}
  assert "already rated" in post(rating_client, "/api/judge", again, status=400)["error"]
  assert get(rating_client, "/api/progress")["labeled"] == 1
  (rating,) = stored(store_path)
  assert (rating.sample_id, rating.value, rating.scale, rating.labeler) == (sample, 3, 3, "bob")


def test_two_labelers_get_different_pairs(team):
  alice = {s["id"] for s in get(team, "/api/task", "alice")["samples"]}
  bob = {s["id"] for s in get(team, "/api/task", "bob")["samples"]}
  carol = {s["id"] for s in get(team, "/api/task", "carol")["samples"]}
  assert len({frozenset(alice), frozenset(bob), frozenset(carol)}) == 3
  # A reload keeps the leased pair instead of skipping it.
  assert {s["id"] for s in get(team, "/api/task", "alice")["samples"]} == alice


def test_untrusted_text_is_never_markup(tmp_path):
  path = make_store(tmp_path / "x.db", responses=(SCRIPT, IMG, "plain"))
  with TestClient(team_app(path, "a1", "a2", "a3"), base_url=BASE) as client:
    seen = set()
    for labeler in ("a1", "a2", "a3"):
      response = client.get("/api/task", headers={"X-Label-Token": token_of(labeler)})
      assert response.headers["content-type"] == "application/json"
      assert "<" not in response.text and ">" not in response.text  # escaped as \u003c, \u003e
      seen |= {s["text"] for s in json.loads(response.text)["samples"]}
    assert {SCRIPT, IMG} <= seen  # the same text, exactly, once parsed
    page = client.get("/")
  # The page is the file on disk byte for byte: nothing is interpolated into HTML.
  assert page.content == (server.STATIC_DIR / "label.html").read_bytes()
  assert "alert(" not in page.text and "{{" not in page.text and "{%" not in page.text
  scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, flags=re.S)
  assert scripts == [(' src="/static/label.js" defer', "")]  # no inline script
  assert not re.search(r"\son[a-z]+\s*=", page.text)  # no inline event handlers
  script = (server.STATIC_DIR / "label.js").read_text()
  for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
    assert sink not in script.replace("never innerHTML", "")


ESCAPES = {  # model text as stored -> as the page receives it
    "fine\x1b[2K\x1b[1Agone": "fine<U+001B>[2K<U+001B>[1Agone",  # erase line, cursor up
    "copy \x1b]52;c;cm0gLXJmIH4=\x07": "copy <U+001B>]52;c;cm0gLXJmIH4=<U+0007>",  # OSC 52
    "photo\u202egnp.exe a\x7fb\x9bc": "photo<U+202E>gnp.exe a<U+007F>b<U+009B>c",  # RLO, DEL, C1
    "café 日本\n\tnext line": "café 日本\n\tnext line",  # letters, newline and tab as is
}


@pytest.mark.parametrize("rate_scale", [None, 3])
def test_control_and_bidi_characters_arrive_written_out(tmp_path, rate_scale):
  path = tmp_path / "f.db"
  with FeedbackStore(path) as store:
    ids = store.add_samples([{"prompt": "Say \u2066hi\u2069\x1b]0;t\x07", "response": r,
                              "model": "m"} for r in ESCAPES])
  original = dict(zip(ids, ESCAPES))
  app = team_app(path, "a1", "a2", "a3", "a4", rate_scale=rate_scale, seed=0)
  shown = set()
  with TestClient(app, base_url=BASE) as client:
    for labeler in ("a1", "a2", "a3", "a4"):  # a pair (or sample) each
      task = get(client, "/api/task", labeler)
      assert task["prompt"] == "Say <U+2066>hi<U+2069><U+001B>]0;t<U+0007>"
      for sample in task["samples"] if rate_scale is None else [task["sample"]]:
        assert sample["text"] == ESCAPES[original[sample["id"]]]
        shown.add(sample["id"])
      # Judged by the ids shown; the store keeps the text as the model wrote it (checked below).
      if rate_scale is None:
        left, right = task["samples"]
        post(client, "/api/judge", {"labeler": labeler, "a": left["id"], "b": right["id"],
                                    "outcome": "a"}, labeler=labeler)
        (comparison,) = stored(path, labeler=labeler)
        assert (comparison.sample_a, comparison.sample_b) == (left["id"], right["id"])
      else:
        sample = task["sample"]["id"]
        post(client, "/api/judge", {"labeler": labeler, "sample": sample, "value": 2},
             labeler=labeler)
        (rating,) = stored(path, labeler=labeler)
        assert rating.sample_id == sample
  assert shown == set(ids)
  with FeedbackStore(path) as store:
    assert {i: store.sample(i).text for i in ids} == original


def test_host_header_must_name_this_server(client, store_path):
  body = {"labeler": "alice", "a": 1, "b": 2, "outcome": "a"}
  for host in ("evil.example:8765", "evil.example", "127.0.0.1:9999", "127.0.0.1",
               "127.0.0.1.evil.example:8765", "localhost.:8765"):
    headers = {**AUTH, "Host": host}
    responses = [
        client.get("/", headers=headers), client.get("/static/label.js", headers=headers),
        client.get("/api/task", params={"labeler": "alice"}, headers=headers),
        client.post("/api/judge", json=body, headers=headers),
        client.request("DELETE", "/api/undo", headers=headers),
        client.get("/missing", headers=headers),
    ]
    for response in responses:
      assert response.status_code == 421, (host, response.request.url, response.text)
      assert response.headers["content-type"].startswith("text/plain")
      assert f"Host {host!r} is not this server" in response.text
      assert "default-src 'self'" in response.headers["content-security-policy"]
  assert stored(store_path) == []
  with FeedbackStore(store_path) as store:
    assert store.progress().pairs_claimed == 0  # refused before the handler leased anything
  for host in ("127.0.0.1:8765", "localhost:8765", "LocalHost:8765", "[::1]:8765"):
    response = client.get("/api/task", params={"labeler": "alice"}, headers={**AUTH, "Host": host})
    assert response.status_code == 200, (host, response.text)
    assert client.get("/", headers={"Host": host}).status_code == 200


def test_host_check_allows_the_host_the_server_binds(store_path):
  app = server.create_app(store_path, token=TOKEN, labeler="alice", host="192.168.1.5")
  with TestClient(app, base_url="http://192.168.1.5:8765") as client:
    assert client.get("/api/config", headers=AUTH).status_code == 200
    assert client.get("/", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    assert client.get("/", headers={"Host": "192.168.1.6:8765"}).status_code == 421
  # Port 80 may be left out of the Host header, as browsers do.
  app = server.create_app(store_path, token=TOKEN, labeler="alice", host="::1")
  with TestClient(app, base_url="http://[::1]") as client:
    assert client.get("/api/config", headers=AUTH).status_code == 200
    assert client.get("/", headers={"Host": "localhost"}).status_code == 200


def test_security_headers_on_every_response(client):
  responses = [client.get("/"), client.get("/static/label.js"), client.get("/static/label.css"),
               client.get("/api/task", params={"labeler": "alice"}, headers=AUTH),
               client.get("/api/task", params={"labeler": "alice"}), client.get("/missing"),
               client.get("/static/../server.py")]
  for response in responses:
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, response.url
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
  assert responses[-2].status_code == 404 and "error" in responses[-2].json()
  assert responses[-1].status_code == 404  # no path traversal out of static/


def test_unexpected_errors_are_json_500(store_path):
  app = server.create_app(store_path, token=TOKEN, labeler="alice")

  def broken(labeler):
    raise RuntimeError("disk on fire")

  app.state.store.next_pair = broken
  with TestClient(app, base_url=BASE, raise_server_exceptions=False) as client:
    response = client.get("/api/task", params={"labeler": "alice"}, headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error in /api/task: RuntimeError: disk on fire"}
    assert "default-src 'self'" in response.headers["content-security-policy"]
    response = client.delete("/api/undo", headers=AUTH)
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_create_app_refuses_bad_arguments(tmp_path):
  with pytest.raises(FeedbackError, match="rate_scale"):
    server.create_app(tmp_path / "f.db", token=TOKEN, labeler="alice", rate_scale=1)
  with pytest.raises(FeedbackError, match="rubric, rate_scale: pass one"):
    server.create_app(tmp_path / "f.db", token=TOKEN, labeler="alice", rate_scale=3, rubric=RUBRIC)
  with pytest.raises(FeedbackError, match="rubric: expected a feedback.rubric.Rubric"):
    server.create_app(tmp_path / "f.db", token=TOKEN, labeler="alice", rubric="default")
  with pytest.raises(ValueError, match="token"):
    server.create_app(tmp_path / "f.db", token="")
  (tmp_path / "notes.txt").write_text("not a store")
  with pytest.raises(FeedbackError, match="not an SQLite file"):
    server.create_app(tmp_path / "notes.txt", token=TOKEN, labeler="alice")
  # A token is always some labeler's: there is no token that may judge as anyone.
  with pytest.raises(FeedbackError, match="labeler: a token needs the name"):
    server.create_app(tmp_path / "f.db", token=TOKEN)
  with pytest.raises(FeedbackError, match="'alice' given twice"):
    server.create_app(tmp_path / "f.db", tokens={"t1": "alice", "t2": "alice"})
  with pytest.raises(FeedbackError, match="not both"):
    server.create_app(tmp_path / "f.db", tokens={"t1": "alice"}, token="t2", labeler="bob")
  for tokens, message in (({}, "at least one"), ({"": "alice"}, "non-empty secret"),
                          ({"t1": " "}, "labeler: expected a non-empty name")):
    with pytest.raises(FeedbackError, match=message):
      server.create_app(tmp_path / "f.db", tokens=tokens)


def test_serve_prints_a_url_per_labeler_and_warns_off_loopback(store_path, monkeypatch, capsys):
  apps, ports = [], []

  def run(app, sock):
    apps.append(app)
    ports.append(sock.getsockname()[1])

  monkeypatch.setattr(server, "_run_uvicorn", run)
  server.serve(store_path, labelers=["alice", "bob"], port=0)
  out, err = capsys.readouterr()
  urls = dict(re.findall(r"^  (\w+) +(http://127\.0\.0\.1:\d+/\?token=[\w-]+)$", out, re.M))
  assert list(urls) == ["alice", "bob"] and err == ""
  tokens = {url.split("token=")[1]: name for name, url in urls.items()}
  assert len(tokens) == 2 and all(len(token) >= 40 for token in tokens)  # one fresh secret each
  assert all(f":{ports[-1]}/" in url for url in urls.values()) and ports[-1] > 0
  # Each printed URL's token judges as its own labeler, on the one server.
  with TestClient(apps[-1], base_url=f"http://127.0.0.1:{ports[-1]}") as client:
    for token, name in tokens.items():
      task = client.get("/api/task", headers={"X-Label-Token": token}).json()
      left, right = task["samples"]
      response = client.post("/api/judge", json={"a": left["id"], "b": right["id"],
                                                 "outcome": "a"}, headers={"X-Label-Token": token})
      assert response.status_code == 200, response.text
      assert client.get("/api/config", headers={"X-Label-Token": token}).json()["labeler"] == name
  assert sorted(c.labeler for c in stored(store_path)) == ["alice", "bob"]

  server.serve(store_path, host="0.0.0.0", port=0, tokens={"given": "carol"})
  out, err = capsys.readouterr()
  assert f"carol  http://0.0.0.0:{ports[-1]}/?token=given" in out
  assert "warning: serving on 0.0.0.0" in err
  with server.bind("127.0.0.1", 0) as busy:  # a port in use fails before any URL is printed
    with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
      server.serve(store_path, labelers=["alice"], port=busy.getsockname()[1])
  with pytest.raises(FeedbackError, match="at least one"):
    server.serve(store_path, labelers=[], port=0)
  assert capsys.readouterr().out == ""
  assert server.is_loopback("localhost") and server.is_loopback("::1")
  assert not server.is_loopback("192.168.1.5") and not server.is_loopback("example.org")
  assert server.page_url("::1", 80, "t") == "http://[::1]:80/?token=t"


# --- identity: the token says who judges -----------------------------------------------------


def test_config_says_who_the_token_belongs_to(team):
  for name in ("alice", "bob"):
    assert get(team, "/api/config", name)["labeler"] == name


@pytest.mark.parametrize("rate_scale", [None, 3])
def test_a_task_leased_to_bob_is_409_for_alice_until_the_lease_expires(tmp_path, rate_scale):
  path = make_store(tmp_path / "f.db", responses=("hello",) if rate_scale else ("hello", "hey"))
  with TestClient(team_app(path, "alice", "bob", rate_scale=rate_scale), base_url=BASE) as client:
    task = get(client, "/api/task", "bob")  # bob's page holds the only task
    assert get(client, "/api/task", "alice")["done"]
    body = ({"a": task["samples"][0]["id"], "b": task["samples"][1]["id"], "outcome": "a"}
            if rate_scale is None else {"sample": task["sample"]["id"], "value": 1})
    error = post(client, "/api/judge", body, status=409, labeler="alice")["error"]
    assert "leased to labeler 'bob'" in error and "after that lease expires" in error
    assert stored(path) == []
    # Bob's lease, renewed by a store whose clock runs an hour behind, has expired by now.
    with FeedbackStore(path, clock=lambda: time.time() - 3600) as behind:
      held = behind.next_pair("bob") if rate_scale is None else behind.next_sample_to_rate("bob")
    assert held.lease_until < time.time()
    post(client, "/api/judge", body, labeler="alice")
  (judgement,) = stored(path)
  assert judgement.labeler == "alice"


def test_alice_cannot_undo_bobs_judgement(team, store_path):
  left, right = get(team, "/api/task", "bob")["samples"]
  bobs = post(team, "/api/judge", {"a": left["id"], "b": right["id"], "outcome": "a"},
              labeler="bob")["id"]
  error = post(team, "/api/undo", {"labeler": "bob"}, status=403, labeler="alice")["error"]
  assert "belongs to labeler 'alice', not 'bob'" in error
  assert post(team, "/api/undo", {}, labeler="alice") == {"undone": None}  # alice has none
  (comparison,) = stored(store_path)
  assert (comparison.id, comparison.labeler, comparison.retracted_at) == (bobs, "bob", None)
  assert post(team, "/api/undo", {}, labeler="bob")["undone"]["id"] == bobs  # bob's own: yes


def test_naming_another_labeler_than_the_tokens_is_403(team, store_path):
  left, right = get(team, "/api/task", "alice")["samples"]
  body = {"labeler": "bob", "a": left["id"], "b": right["id"], "outcome": "a"}
  assert "not 'bob'" in post(team, "/api/judge", body, status=403, labeler="alice")["error"]
  for path in ("/api/task", "/api/progress", "/api/config"):
    response = team.get(path, params={"labeler": "bob"},
                        headers={"X-Label-Token": token_of("alice")})
    assert response.status_code == 403 and "not 'bob'" in response.json()["error"]
  assert stored(store_path) == []
  with FeedbackStore(store_path) as store:
    assert store.progress().pairs_claimed == 1  # alice's lease; none was taken for bob
  # Naming oneself is allowed (older pages sent it), and the token decides in any case.
  post(team, "/api/judge", {**body, "labeler": "alice"}, labeler="alice")
  assert [c.labeler for c in stored(store_path)] == ["alice"]


# --- rubric scores: one judgement scores a sample on every criterion ------------------------

RUBRIC = Rubric((Criterion("accuracy", 5, "Is it right?"), Criterion("tone", 3)))


def scored(store_path):
  """The live rubric judgements as (sample, {criterion: score}, labeler), read from the store."""
  with FeedbackStore(store_path) as store:
    return [(r["sample_id"], r["scores"], r["labeler"]) for r in store.export_scores()]


def test_rubric_config_task_judge_progress_and_undo(tmp_path):
  path = make_store(tmp_path / "f.db", responses=("hi\u202eyo", SCRIPT, "plain"))
  with TestClient(team_app(path, "alice", "bob", rubric=RUBRIC), base_url=BASE) as client:
    config = get(client, "/api/config", "alice")
    assert (config["kind"], config["labeler"], config["criteria"]) == ("rubric", "alice", [
        {"name": "accuracy", "scale": 5, "guidance": "Is it right?"},
        {"name": "tone", "scale": 3, "guidance": ""}])
    assert get(client, "/api/progress", "alice") == {
        "kind": "rubric", "labeled": 0, "queued": 3, "everyone": {"labeled": 0, "queued": 3}}
    response = client.get("/api/task", headers={"X-Label-Token": token_of("alice")})
    assert "<" not in response.text  # escaped as in the other modes
    task = response.json()
    assert (task["kind"], task["done"], task["prompt"]) == ("rubric", False, "Say hi")
    assert task["sample"]["text"] == "hi<U+202E>yo"  # through visible()
    sample = task["sample"]["id"]
    bobs = get(client, "/api/task", "bob")["sample"]["id"]
    assert bobs != sample  # leased apart; judging the other's is 409
    error = post(client, "/api/judge", {"sample": bobs, "scores": {"accuracy": 1, "tone": 1}},
                 status=409, labeler="alice")["error"]
    assert "leased to labeler 'bob'" in error

    # The body's order does not matter: the store keeps the rubric's.
    judged = post(client, "/api/judge", {"sample": sample, "scores": {"tone": 2, "accuracy": 5}},
                  labeler="alice")
    assert judged["kind"] == "scores"
    assert scored(path) == [(sample, {"accuracy": 5, "tone": 2}, "alice")]
    assert list(scored(path)[0][1]) == ["accuracy", "tone"]
    again = {"sample": sample, "scores": {"accuracy": 1, "tone": 1}}
    assert "already scored" in post(client, "/api/judge", again, status=400, labeler="alice")["error"]
    progress = get(client, "/api/progress", "alice")
    assert (progress["labeled"], progress["queued"], progress["everyone"]) == (
        1, 2, {"labeled": 1, "queued": 2})
    assert get(client, "/api/progress", "bob")["labeled"] == 0

    # Bob's token cannot undo alice's judgement; alice's undo retracts every criterion of it.
    assert "not 'alice'" in post(client, "/api/undo", {"labeler": "alice"}, status=403,
                                 labeler="bob")["error"]
    assert post(client, "/api/undo", {}, labeler="bob") == {"undone": None}
    assert scored(path) == [(sample, {"accuracy": 5, "tone": 2}, "alice")]
    assert post(client, "/api/undo", {}, labeler="alice")["undone"] == {
        "kind": "scores", "id": judged["id"]}
    assert scored(path) == []
    assert get(client, "/api/task", "alice")["sample"]["id"] == sample  # back to alice
    post(client, "/api/judge", again, labeler="alice")
    post(client, "/api/judge", {"sample": bobs, "scores": {"accuracy": 3, "tone": 3}},
         labeler="bob")
  assert sorted(scored(path)) == sorted([(sample, {"accuracy": 1, "tone": 1}, "alice"),
                                         (bobs, {"accuracy": 3, "tone": 3}, "bob")])


def test_invalid_rubric_judgements_are_400_with_the_field(store_path):
  ok = {"accuracy": 3, "tone": 2}
  cases = [
      ({"sample": 1, "scores": {"accuracy": 3}}, "scores: missing criterion 'tone'; expected a "
       "score for each of accuracy 1..5, tone 1..3"),
      ({"sample": 1, "scores": {**ok, "honesty": 1}}, "scores: unknown criterion 'honesty'"),
      ({"sample": 1, "scores": {**ok, "tone": 4}}, "scores['tone']: expected an int in 1..3, got 4"),
      ({"sample": 1, "scores": {**ok, "accuracy": 0}}, "scores['accuracy']: expected an int in 1..5"),
      ({"sample": 1, "scores": {**ok, "accuracy": True}}, "scores['accuracy']: expected an int in "
       "1..5, got True"),
      ({"sample": 1, "scores": {**ok, "tone": 2.0}}, "scores['tone']: expected an int"),
      ({"sample": 1, "scores": {**ok, "tone": "2"}}, "scores['tone']: expected an int"),
      ({"sample": 1, "scores": [3, 2]}, "scores: expected an object {criterion: score}"),
      ({"sample": 1}, "missing ['scores']"),
      ({"sample": 1, "scores": ok, "note": "x"}, "unknown ['note']"),
      ({"sample": True, "scores": ok}, "sample: expected a sample id"),
      ({"sample": 99, "scores": ok}, "no sample with id 99"),
      ({"a": 1, "b": 2, "outcome": "a"}, "collects rubric scores (accuracy, tone), not pair "
       "comparisons; start `rlhf-jax label` without --rubric"),
      ({"sample": 1, "value": 2}, "not single ratings; start `rlhf-jax label` with --rate N"),
  ]
  app = server.create_app(store_path, token=TOKEN, labeler="alice", rubric=RUBRIC)
  with TestClient(app, base_url=BASE) as client:
    for body, message in cases:
      assert message in post(client, "/api/judge", body, status=400)["error"], body
  with TestClient(server.create_app(store_path, token=TOKEN, labeler="bob", rate_scale=3),
                  base_url=BASE) as client:
    assert "collects ratings 1..3, not rubric scores" in post(
        client, "/api/judge", {"sample": 1, "scores": ok}, status=400)["error"]
  assert scored(store_path) == [] and stored(store_path) == []


def test_cli_label_serves_the_rubric_page_and_refuses_rubric_with_rate(store_path, monkeypatch,
                                                                        capsys):
  apps = []
  monkeypatch.setattr(server, "_run_uvicorn", lambda app, sock: apps.append(app))
  assert cli.main(["label", "--store", str(store_path), "--labeler", "alice", "--rubric",
                   "default", "--port", "0"]) == 0
  out = capsys.readouterr().out
  assert "answers to score on accuracy 1..5, fluency 1..5, satisfaction 1..5" in out
  token = re.search(r"token=([\w-]+)", out).group(1)
  with TestClient(apps[0], base_url=BASE) as client:
    criteria = client.get("/api/config", headers={"X-Label-Token": token}).json()["criteria"]
  assert [c["name"] for c in criteria] == ["accuracy", "fluency", "satisfaction"]
  for extra in (["--rate", "3"], ["--rate", "3", "--terminal"]):
    assert cli.main(["label", "--store", str(store_path), "--labeler", "alice", "--rubric",
                     "default", *extra]) == 2
    assert "--rubric and --rate: pass one" in capsys.readouterr().err
  assert len(apps) == 1
