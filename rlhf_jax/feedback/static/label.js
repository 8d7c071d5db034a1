// The labeling page: fetches a task from the JSON API, shows it, and posts the judgement.
// Model text is untrusted: it reaches the page only through textContent, never innerHTML, and the
// Content-Security-Policy forbids inline script, so even a slip here could not run injected code.
"use strict";

(() => {
  const PAIR_KEYS = {a: "a", arrowleft: "a", b: "b", arrowright: "b",
                     t: "tie", arrowdown: "tie", s: "skip", arrowup: "skip"};
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  // scores: the rubric scores typed so far for the task shown (null: not yet), one per criterion;
  // focus: the criterion the digit keys score.
  const state = {config: null, labeler: "", task: null, busy: false, scores: [], focus: 0};
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
    for (const id of ["pair", "rating", "rubric", "done"]) $(id).hidden = id !== sectionId;
    $("prompt-box").hidden = sectionId === "done" || sectionId === null;
  }

  function render(task, progress) {
    state.task = task.done ? null : task;
    const p = progress;
    $("progress").textContent = `${p.labeled} labeled / ${p.queued} queued`;
    // Rubric progress counts samples scored and has no judgement count.
    const judgements = p.everyone.judgements === undefined ? "" :
        `, ${p.everyone.judgements} judgements`;
    $("progress-all").textContent =
        `all labelers: ${p.everyone.labeled} labeled / ${p.everyone.queued} queued${judgements}`;
    if (task.done) {
      showOnly("done");
      return;
    }
    $("prompt").textContent = task.prompt;
    if (task.kind === "pair") {
      $("left").textContent = task.samples[0].text;
      $("right").textContent = task.samples[1].text;
      showOnly("pair");
    } else if (task.kind === "rubric") {
      $("answer").textContent = task.sample.text;
      // A new task, or the same one back after an undo or a refusal, starts with no scores.
      state.scores = state.config.criteria.map(() => null);
      state.focus = 0;
      showScores(false);
      showOnly("rubric");
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

  // --- rubric: a score per criterion, typed top to bottom ---------------------------------------

  function showScores(scroll) {
    const rows = $("criteria").children;
    for (let i = 0; i < rows.length; i++) {
      const focused = i === state.focus;
      rows[i].classList.toggle("focused", focused);
      if (focused) rows[i].setAttribute("aria-current", "step");
      else rows[i].removeAttribute("aria-current");
      for (const button of rows[i].querySelectorAll("button")) {
        button.setAttribute("aria-pressed", String(Number(button.dataset.value) === state.scores[i]));
      }
    }
    // Only when the labeler moves: a new task keeps the question at the top in view.
    if (scroll && rows[state.focus]) rows[state.focus].scrollIntoView({block: "nearest"});
  }

  function moveFocus(index) {
    state.focus = Math.max(0, Math.min(index, state.config.criteria.length - 1));
    showScores(true);
  }

  function submitScores() {
    const task = state.task;
    if (!task || task.kind !== "rubric" || state.busy) return;
    const criteria = state.config.criteria;
    const unset = state.scores.indexOf(null);
    if (unset !== -1) {
      moveFocus(unset);
      showStatus(`score ${criteria[unset].name} first`);
      return;
    }
    // fromEntries makes own properties whatever a criterion is called ("__proto__" too).
    const scores = Object.fromEntries(criteria.map((c, i) => [c.name, state.scores[i]]));
    act(() => api("POST", "/api/judge", {sample: task.sample.id, scores}));
  }

  // Scores criterion `index` and moves on; the last criterion's score submits the judgement once
  // every criterion has one (else focus goes to the first still unscored).
  function setScore(index, value) {
    const task = state.task;
    const criteria = state.config.criteria;
    if (!task || task.kind !== "rubric" || state.busy || !(value <= criteria[index].scale)) return;
    state.scores[index] = value;
    showStatus("");
    const unset = state.scores.indexOf(null);
    if (index < criteria.length - 1) {
      moveFocus(index + 1);
    } else if (unset !== -1) {
      moveFocus(unset);
    } else {
      showScores(false);
      submitScores();
    }
  }

  function onRubricKey(event, key) {
    if (/^[0-9]$/.test(key)) {
      setScore(state.focus, key === "0" ? 10 : Number(key));
    } else if (key === "backspace" || key === "arrowleft") {
      event.preventDefault();
      moveFocus(state.focus - 1);
    } else if (key === "arrowright") {
      event.preventDefault();
      moveFocus(state.focus + 1);
    } else if (key === "enter") {
      event.preventDefault();  // else a button clicked before would be pressed as well
      submitScores();
    }
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
    } else if (state.config.kind === "rubric") {
      onRubricKey(event, key);
    }
  }

  function valueButton(value, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.value = String(value);
    button.textContent = `${value} `;
    if (value <= 10) {
      const kbd = document.createElement("kbd");
      kbd.textContent = String(value % 10);
      button.append(kbd);
    }
    button.addEventListener("click", onClick);
    return button;
  }

  function buildRatingButtons(scale) {
    for (let value = 1; value <= scale; value++) {
      $("values").append(valueButton(value, () => rate(value)));
    }
  }

  // One row per criterion: its name and scale, its guidance, and a button per score.
  function buildCriteria(criteria) {
    criteria.forEach((criterion, index) => {
      const row = document.createElement("div");
      row.className = "criterion";
      row.setAttribute("role", "group");
      const title = document.createElement("h3");
      title.textContent = `${criterion.name} (1..${criterion.scale})`;
      row.append(title);
      if (criterion.guidance) {
        const guidance = document.createElement("p");
        guidance.className = "guidance";
        guidance.textContent = criterion.guidance;
        row.append(guidance);
      }
      const values = document.createElement("div");
      values.className = "actions";
      for (let value = 1; value <= criterion.scale; value++) {
        values.append(valueButton(value, () => setScore(index, value)));
      }
      row.append(values);
      row.addEventListener("click", (event) => {
        if (!event.target.closest("button")) moveFocus(index);  // a button moves focus itself
      });
      $("criteria").append(row);
    });
  }

  function keysHelp(config) {
    if (config.kind === "rubric") {
      const top = Math.min(Math.max(...config.criteria.map((c) => c.scale)), 10);
      return `Keys: 1..${top === 10 ? "0 (=10)" : top} = score of the outlined criterion, ` +
             "then on to the next (the last one submits) · Backspace or ← = back a criterion · " +
             "→ = next criterion · Enter = submit when all are scored · " +
             "u = undo the last judgement";
    }
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
    if (state.config.kind === "rubric") {
      $("prompt-title").textContent = "Question";
      buildCriteria(state.config.criteria);
      $("submit-scores").addEventListener("click", submitScores);
    }
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
