// The Integration page: lists an account's API keys and drives their lifecycle through the
// admin JSON API. No framework, no build step; everything it needs is in this file.
"use strict";

(() => {
  const body = document.body;
  const apiRoot = body.dataset.apiRoot || "/";
  const limit = Number(body.dataset.limit || "3");
  const $ = (id) => document.getElementById(id);

  const els = {
    accountForm: $("account-form"),
    token: $("token"),
    tokenField: $("token-field"),
    account: $("account"),
    error: $("error"),
    keys: $("keys"),
    keysTitle: $("keys-title"),
    accountName: $("account-name"),
    count: $("count"),
    newKey: $("new-key"),
    newKeyValue: $("new-key-value"),
    copy: $("copy"),
    copied: $("copied"),
    done: $("done"),
    createForm: $("create-form"),
    create: $("create"),
    name: $("name"),
    expires: $("expires"),
    scopes: $("scopes"),
    rateRequests: $("rate-requests"),
    rateSeconds: $("rate-seconds"),
    rows: $("rows"),
    empty: $("empty"),
  };

  if (body.dataset.tokenInput === "hidden") {
    els.tokenField.hidden = true;
  }

  // The account whose keys are shown; set only by a successful "Show keys".
  let shown = null;

  // Counts "Show keys": a call that started before the latest one may not draw its list or
  // show a new key over the list that one asked for.
  let view = 0;

  // ===== talking to the API =====

  class ApiError extends Error {}

  async function call(method, path, payload) {
    const headers = { Accept: "application/json" };
    const token = els.token.value.trim();
    if (token && !els.tokenField.hidden) {
      headers.Authorization = "Bearer " + token;
    }
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(apiRoot + path, init);
    } catch (err) {
      throw new ApiError("the server could not be reached (" + err.message + ")");
    }
    if (response.status === 204) {
      return null;
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : response.statusText;
      throw new ApiError(message + " (HTTP " + response.status + ")");
    }
    return data;
  }

  const keysPath = (account) => "admin/accounts/" + encodeURIComponent(account) + "/keys";
  const keyPath = (account, id) => keysPath(account) + "/" + encodeURIComponent(id);

  // ===== showing things =====

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
    els.error.textContent = "";
  }

  function showNewKey(key) {
    els.newKeyValue.textContent = key;
    els.copied.textContent = "";
    els.newKey.hidden = false;
    els.newKey.focus();
  }

  // Takes a new key off the page: its text out of the DOM (not just hidden), out of any
  // selection, with the copy's note. Focus in the panel moves to the keys' heading.
  function forgetNewKey() {
    const hadFocus = els.newKey.contains(document.activeElement);
    const selection = window.getSelection();
    if (selection && selection.rangeCount > 0 && selection.containsNode(els.newKey, true)) {
      selection.removeAllRanges();
    }
    els.newKeyValue.replaceChildren();
    els.copied.textContent = "";
    els.newKey.hidden = true;
    if (hadFocus) {
      els.keysTitle.focus();
    }
  }

  function formatTime(text) {
    if (!text) {
      return "Never";
    }
    const date = new Date(text);
    if (Number.isNaN(date.getTime())) {
      return text;
    }
    return date.toISOString().replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC");
  }

  function formatRateLimit(limit) {
    return limit ? limit.requests + " / " + limit.per_seconds + " s" : "—";
  }

  function statusOf(key, now) {
    const parts = [key.status === "active" ? "Active" : "Inactive"];
    if (key.expires_at && new Date(key.expires_at) <= now) {
      parts.push("Expired");
    }
    return parts.join(", ");
  }

  function cell(label, content) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (content instanceof Node) {
      td.append(content);
    } else {
      td.textContent = content;
    }
    return td;
  }

  function button(label, className, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (className) {
      b.className = className;
    }
    b.addEventListener("click", onClick);
    return b;
  }

  function row(key, now) {
    const tr = document.createElement("tr");
    tr.dataset.keyId = key.id;

    const prefix = document.createElement("code");
    prefix.textContent = key.prefix;
    tr.append(cell("Prefix", prefix));
    tr.append(cell("Name", key.name || "—"));

    const status = document.createElement("span");
    status.className = "status";
    status.textContent = statusOf(key, now);
    if (key.previous_prefix) {
      const grace = document.createElement("small");
      grace.textContent =
        "Grace: old key " + key.previous_prefix + " works until " + formatTime(key.previous_expires_at);
      status.append(grace);
    }
    tr.append(cell("Status", status));
    tr.append(cell("Scopes", Array.isArray(key.scopes) ? (key.scopes.join(" ") || "none") : "All"));
    tr.append(cell("Rate limit", formatRateLimit(key.rate_limit)));
    tr.append(cell("Created", formatTime(key.created_at)));
    tr.append(cell("Last used", formatTime(key.last_used_at)));
    tr.append(cell("Expires", formatTime(key.expires_at)));

    const actions = document.createElement("div");
    actions.className = "actions";
    const grace = document.createElement("select");
    grace.setAttribute("aria-label", "Grace period for " + key.prefix);
    for (const [seconds, label] of [[0, "No grace"], [3600, "1 hour grace"], [86400, "1 day grace"], [604800, "7 days grace"]]) {
      const option = document.createElement("option");
      option.value = String(seconds);
      option.textContent = label;
      grace.append(option);
    }
    actions.append(grace);
    actions.append(button("Rotate", "secondary", () => rotate(key, Number(grace.value))));
    if (key.status === "active") {
      actions.append(button("Revoke", "secondary", () => change(key, "revoke")));
    } else {
      actions.append(button("Reactivate", "secondary", () => change(key, "reactivate")));
    }
    actions.append(button("Delete", "danger", () => remove(key)));
    const td = cell("Actions", actions);
    td.className = "actions-cell";
    tr.append(td);
    return tr;
  }

  function render(account, keys) {
    const now = new Date();
    shown = account;
    els.accountName.textContent = account;
    els.rows.replaceChildren(...keys.map((key) => row(key, now)));
    els.empty.hidden = keys.length > 0;
    els.count.textContent = keys.length + " of " + limit + " keys";
    const full = keys.length >= limit;
    els.create.disabled = full;
    els.create.title = full ? "This account holds its limit of keys: delete one first." : "";
    els.keys.hidden = false;
  }

  // Redraws `account`'s list after an action begun when `view` was `since`, and says whether
  // it did: not when "Show keys" was pressed meanwhile. A list that fails to load takes a new
  // key with it.
  async function reload(account, since) {
    let data;
    try {
      data = await call("GET", keysPath(account));
    } catch (err) {
      if (since === view) {
        forgetNewKey();
      }
      throw err;
    }
    if (since !== view) {
      return false;
    }
    render(account, data.keys);
    return true;
  }

  // Runs an action; on failure shows why and changes nothing else (but a list that fails to
  // load takes a new key with it: see `reload`).
  async function attempt(action) {
    clearError();
    try {
      await action();
    } catch (err) {
      showError(err instanceof ApiError ? err.message : String(err));
    }
  }

  // ===== actions =====

  els.accountForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const account = els.account.value.trim();
    // A new key lives only as long as the list it was shown with: whether this list (of this
    // account or another) loads or not, the key goes now.
    view += 1;
    const since = view;
    forgetNewKey();
    attempt(async () => {
      const data = await call("GET", keysPath(account));
      if (since === view) {
        render(account, data.keys);
      }
    });
  });

  els.createForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!shown) {
      return;
    }
    const payload = {};
    const name = els.name.value.trim();
    if (name) {
      payload.name = name;
    }
    const days = els.expires.value.trim();
    if (days) {
      payload.expires_in_seconds = Math.round(Number(days) * 86400);
    }
    const scopes = els.scopes.value.trim();
    if (scopes) {
      payload.scopes = scopes.split(/[\s,]+/).filter(Boolean);
    }
    // Both or neither: with one of them empty, the API says what is missing.
    const requests = els.rateRequests.value.trim();
    const perSeconds = els.rateSeconds.value.trim();
    if (requests || perSeconds) {
      payload.rate_limit = {};
      if (requests) {
        payload.rate_limit.requests = Number(requests);
      }
      if (perSeconds) {
        payload.rate_limit.per_seconds = Number(perSeconds);
      }
    }
    const account = shown;
    const since = view;
    attempt(async () => {
      const created = await call("POST", keysPath(account), payload);
      els.createForm.reset();
      if (await reload(account, since)) {
        showNewKey(created.key);
      }
    });
  });

  function rotate(key, graceSeconds) {
    const question = graceSeconds > 0
      ? "Rotate key " + key.prefix + "? The old key keeps working for the grace period."
      : "Rotate key " + key.prefix + "? The old key stops working at once.";
    if (!window.confirm(question)) {
      return;
    }
    const account = shown;
    const since = view;
    attempt(async () => {
      const payload = graceSeconds > 0 ? { grace_seconds: graceSeconds } : undefined;
      const rotated = await call("POST", keyPath(account, key.id) + "/rotate", payload);
      if (await reload(account, since)) {
        showNewKey(rotated.key);
      }
    });
  }

  function change(key, action) {
    const account = shown;
    const since = view;
    attempt(async () => {
      await call("POST", keyPath(account, key.id) + "/" + action);
      await reload(account, since);
    });
  }

  function remove(key) {
    if (!window.confirm("Delete key " + key.prefix + " for good? This can't be undone.")) {
      return;
    }
    const account = shown;
    const since = view;
    attempt(async () => {
      await call("DELETE", keyPath(account, key.id));
      await reload(account, since);
    });
  }

  els.copy.addEventListener("click", async () => {
    const text = els.newKeyValue.textContent;
    // The clipboard answers later: by then the key may be gone ("Done", another list).
    const stillShown = () => !els.newKey.hidden && els.newKeyValue.textContent === text;
    try {
      await navigator.clipboard.writeText(text);
      if (stillShown()) {
        els.copied.textContent = "Copied.";
      }
    } catch (_) {
      if (!stillShown()) {
        return;
      }
      const range = document.createRange();
      range.selectNodeContents(els.newKeyValue);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      els.copied.textContent = "Selected: press Ctrl+C to copy.";
    }
  });

  els.done.addEventListener("click", forgetNewKey);

  // Leaving the page (which a back-forward cache may keep) doesn't keep the key either.
  window.addEventListener("pagehide", forgetNewKey);
})();
