// The labeling page: fetches a task from the JSON API, shows it, and posts the judgement.
// Model text is untrusted: it reaches the page only through textContent, never innerHTML, and the
// Content-Security-Policy forbids inline script, so even a slip here could not run injected code.
"use strict";

(() => {
  const PAIR_KEYS = {a: "a", arrowleft: "a", b: "b", arrowright: "b",
                     t: "tie", arrowdown: "tie", s: "skip", arrowup: "skip"};
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  const state = {config: null, labeler: "", task: null, busy: false};
  const $ = (id) => document.getElementById(id);

  async function api(method, path, body) {
    const init = {method, headers: {"X-Label-Token": token}, cache: "no-store"};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      throw new Error((data && data.error) || `HTTP ${response.status} from ${path}`);
    }
    return data;
  }

  function showStatus(message) {
    $("status").textContent = message;
    $("status").hidden = !message;
  }

  function showOnly(sectionId) {
    for (const id of ["pair", "rating", "done"]) $(id).hidden = id !== sectionId;
    $("prompt-box").hidden = sectionId === "done" || sectionId === null;
  }

  function render(task, progress) {
    state.task = task.done ? null : task;
    const p = progress;
    $("progress").textContent = `${p.labeled} labeled / ${p.queued} queued`;
    $("progress-all").textContent =
        `all labelers: ${p.everyone.labeled} labeled / ${p.everyone.queued} queued, ` +
        `${p.everyone.judgements} judgements`;
    if (task.done) {
      showOnly("done");
      return;
    }
    $("prompt").textContent = task.prompt;
    if (task.kind === "pair") {
      $("left").textContent = task.samples[0].text;
      $("right").textContent = task.samples[1].text;
      showOnly("pair");
    } else {
      $("sample").textContent = task.sample.text;
      showOnly("rating");
    }
  }

  // The server knows the labeler from the token: no request names one.
  async function refresh() {
    const [task, progress] = await Promise.all([api("GET", "/api/task"),
                                                api("GET", "/api/progress")]);
    render(task, progress);
  }

  // One request at a time: a key held down or pressed twice must not judge the next task unseen.
  async function act(action) {
    if (state.busy) return;
    state.busy = true;
    document.body.classList.add("busy");
    for (const button of document.querySelectorAll("main button")) button.disabled = true;
    let problem = "";
    try {
      if (action) await action();
    } catch (e) {
      problem = e.message;
    }
    try {
      // Also after a refused judgement (409: the lease ran out and another labeler holds the
      // task now), so the page moves on instead of offering the same task again.
      await refresh();
      showStatus(problem);
    } catch (e) {
      showStatus(problem || e.message);
    } finally {
      state.busy = false;
      document.body.classList.remove("busy");
      for (const button of document.querySelectorAll("main button")) button.disabled = false;
    }
  }

  function judgePair(outcome) {
    const task = state.task;
    if (!task || task.kind !== "pair") return;
    // The ids go back in the order shown: "a" always means the left text.
    act(() => api("POST", "/api/judge", {a: task.samples[0].id, b: task.samples[1].id,
                                         outcome}));
  }

  function rate(value) {
    const task = state.task;
    if (!task || task.kind !== "rating") return;
    act(() => api("POST", "/api/judge", {sample: task.sample.id, value}));
  }

  function undo() {
    act(async () => {
      const result = await api("POST", "/api/undo", {});
      if (!result.undone) throw new Error("nothing to undo");
    });
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const key = event.key.toLowerCase();
    if (key === "u") {
      undo();
    } else if (state.config.kind === "pair" && key in PAIR_KEYS) {
      event.preventDefault();  // the arrows would scroll
      judgePair(PAIR_KEYS[key]);
    } else if (state.config.kind === "rating" && /^[0-9]$/.test(key)) {
      const value = key === "0" ? 10 : Number(key);
      if (value <= state.config.scale) rate(value);
    }
  }

  function buildRatingButtons(scale) {
    for (let value = 1; value <= scale; value++) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${value} `;
      if (value <= 10) {
        const kbd = document.createElement("kbd");
        kbd.textContent = String(value % 10);
        button.append(kbd);
      }
      button.addEventListener("click", () => rate(value));
      $("values").append(button);
    }
  }

  function keysHelp(config) {
    if (config.kind === "pair") {
      return "Keys: a or ← = A is better · b or → = B is better · t or ↓ = tie · " +
             "s or ↑ = skip · u = undo the last judgement";
    }
    const top = Math.min(config.scale, 10) === 10 ? "0 (=10)" : String(config.scale);
    return `Keys: 1..${top} = rating (1 worst, ${config.scale} best) · ` +
           "u = undo the last judgement";
  }

  async function start() {
    if (!token) {
      showStatus("this URL has no token: open the URL that `rlhf-jax label` printed " +
                 "(it ends in ?token=...)");
      return;
    }
    try {
      state.config = await api("GET", "/api/config");
    } catch (e) {
      showStatus(e.message);
      return;
    }
    $("keys").textContent = keysHelp(state.config);
    if (state.config.kind === "rating") buildRatingButtons(state.config.scale);
    for (const button of document.querySelectorAll("[data-outcome]")) {
      button.addEventListener("click", () => judgePair(button.dataset.outcome));
    }
    $("undo").addEventListener("click", undo);
    document.addEventListener("keydown", onKey);
    // Shown, not chosen: the token in this URL is this labeler's, and the server stores every
    // judgement from it under this name.
    state.labeler = state.config.labeler;
    $("labeler").textContent = state.labeler;
    act(null);
  }

  start();
})();
