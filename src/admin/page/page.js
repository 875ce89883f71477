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
    quotaRequests: $("quota-requests"),
    quotaPeriod: $("quota-period"),
    allowedIps: $("allowed-ips"),
    metadata: $("metadata"),
    metadataError: $("metadata-error"),
    editForm: $("edit-form"),
    editTitle: $("edit-title"),
    editPrefix: $("edit-prefix"),
    editAllowedIps: $("edit-allowed-ips"),
    editQuotaRequests: $("edit-quota-requests"),
    editQuotaPeriod: $("edit-quota-period"),
    editMetadata: $("edit-metadata"),
    editMetadataError: $("edit-metadata-error"),
    editCancel: $("edit-cancel"),
    rows: $("rows"),
    empty: $("empty"),
    usage: $("usage"),
    usageTitle: $("usage-title"),
    usagePrefix: $("usage-prefix"),
    usageHours: $("usage-hours"),
    usageDays: $("usage-days"),
    usageClose: $("usage-close"),
    usageChart: $("usage-chart"),
    usageTotal: $("usage-total"),
    usageRows: $("usage-rows"),
    activityList: $("activity-list"),
    activityStatus: $("activity-status"),
    activityOlder: $("activity-older"),
  };

  if (body.dataset.tokenInput === "hidden") {
    els.tokenField.hidden = true;
  }

  // The account whose keys are shown; set only by a successful "Show keys".
  let shown = null;

  // Counts "Show keys": a call that started before the latest one may not draw its list or
  // show a new key over the list that one asked for.
  let view = 0;

  // The key whose usage chart is open ({id, prefix}) and its granularity, or null: what to
  // ask the API for again when the toggle is pressed. The counts themselves are never kept.
  let charted = null;
  let granularity = "hour";
  // Counts usage requests: only the latest one draws.
  let chartCall = 0;

  // Counts activity requests: only the latest one draws. (Whose activity is listed, and its
  // oldest entry, are read off the list itself.)
  let activityCall = 0;

  // The key being edited: its id and prefix, and the fields' values as they were filled in
  // (what is unchanged is not sent), or null.
  let editing = null;

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

  const accountPath = (account) => "admin/accounts/" + encodeURIComponent(account);
  const keysPath = (account) => accountPath(account) + "/keys";
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

  function formatAllowedIps(allowed) {
    return Array.isArray(allowed) ? allowed.join(" ") : "Any";
  }

  // "12 / 1000 per day"; without a count (unreadable), the quota alone.
  function formatQuota(quota, used) {
    if (!quota) {
      return "—";
    }
    const cap = quota.requests + " per " + quota.period;
    return used == null ? "— / " + cap : used + " / " + cap;
  }

  // Addresses and blocks as typed, separated by commas or white space.
  function addressList(text) {
    return text.split(/[\s,]+/).filter(Boolean);
  }

  // The metadata typed in `field`: undefined when empty, the object when it is a JSON object;
  // otherwise says why next to the field (`errorEl`) and throws.
  class InvalidField extends Error {}
  function readMetadata(field, errorEl) {
    const text = field.value.trim();
    let problem = null;
    let value;
    if (text) {
      try {
        value = JSON.parse(text);
        if (value === null || typeof value !== "object" || Array.isArray(value)) {
          problem = "Metadata must be a JSON object, such as {\"plan\": \"pro\"}.";
        }
      } catch (err) {
        problem = "Metadata is not valid JSON (" + err.message + ").";
      }
    }
    if (problem) {
      errorEl.textContent = problem;
      errorEl.hidden = false;
      field.setAttribute("aria-invalid", "true");
      field.focus();
      throw new InvalidField(problem);
    }
    clearFieldError(field, errorEl);
    return text ? value : undefined;
  }

  function clearFieldError(field, errorEl) {
    errorEl.hidden = true;
    errorEl.textContent = "";
    field.removeAttribute("aria-invalid");
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
    const allowed = cell("Allowed addresses", formatAllowedIps(key.allowed_ips));
    allowed.className = "wrap";
    tr.append(allowed);
    tr.append(cell("Quota used", formatQuota(key.quota, key.quota_used)));
    tr.append(cell("Created", formatTime(key.created_at)));
    tr.append(cell("Last used", formatTime(key.last_used_at)));
    // null: the server couldn't read the counts.
    tr.append(cell("Requests (24 h)", key.requests_24h == null ? "—" : String(key.requests_24h)));
    tr.append(cell("Expires", formatTime(key.expires_at)));

    const actions = document.createElement("div");
    actions.className = "actions";
    const usage = button("Usage", "secondary", () => openUsage(key));
    usage.setAttribute("aria-label", "Usage of " + key.prefix);
    usage.setAttribute("aria-controls", "usage");
    actions.append(usage);
    const edit = button("Edit", "secondary", () => openEdit(key));
    edit.setAttribute("aria-label", "Edit " + key.prefix);
    edit.setAttribute("aria-controls", "edit-form");
    actions.append(edit);
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
    // A chart of a key no longer listed (deleted, another account) goes.
    if (charted && !keys.some((key) => key.id === charted.id)) {
      closeUsage(false);
    }
    if (editing && !keys.some((key) => key.id === editing.id)) {
      closeEdit(false);
    }
    // Every list drawn (shown, or after a change) brings the newest activity with it.
    loadActivity(account, null);
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
    closeUsage(false);
    closeEdit(false);
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
    const quota = els.quotaRequests.value.trim();
    if (quota) {
      payload.quota = { requests: Number(quota), period: els.quotaPeriod.value };
    }
    const allowedIps = addressList(els.allowedIps.value);
    if (allowedIps.length > 0) {
      payload.allowed_ips = allowedIps;
    }
    // Not a JSON object: said next to the field, and nothing is sent.
    let metadata;
    try {
      metadata = readMetadata(els.metadata, els.metadataError);
    } catch (err) {
      if (err instanceof InvalidField) {
        return;
      }
      throw err;
    }
    if (metadata !== undefined) {
      payload.metadata = metadata;
    }
    const account = shown;
    const since = view;
    attempt(async () => {
      const created = await call("POST", keysPath(account), payload);
      els.createForm.reset();
      clearFieldError(els.metadata, els.metadataError);
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

  // ===== editing a key's allowlist, quota and metadata =====

  function openEdit(key) {
    if (!shown) {
      return;
    }
    const values = {
      allowedIps: Array.isArray(key.allowed_ips) ? key.allowed_ips.join(", ") : "",
      quotaRequests: key.quota ? String(key.quota.requests) : "",
      quotaPeriod: key.quota ? key.quota.period : "day",
      metadata: key.metadata ? JSON.stringify(key.metadata, null, 2) : "",
    };
    editing = { id: key.id, prefix: key.prefix, values };
    els.editPrefix.textContent = key.prefix;
    els.editAllowedIps.value = values.allowedIps;
    els.editQuotaRequests.value = values.quotaRequests;
    els.editQuotaPeriod.value = values.quotaPeriod;
    els.editMetadata.value = values.metadata;
    clearFieldError(els.editMetadata, els.editMetadataError);
    els.editForm.hidden = false;
    els.editTitle.focus();
  }

  function closeEdit(moveFocus) {
    const hadFocus = els.editForm.contains(document.activeElement);
    editing = null;
    els.editForm.hidden = true;
    els.editForm.reset();
    clearFieldError(els.editMetadata, els.editMetadataError);
    if (moveFocus || hadFocus) {
      els.keysTitle.focus();
    }
  }

  els.editForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!editing || !shown) {
      return;
    }
    const before = editing.values;
    // Only what changed is sent (a tenant may narrow a key's allowlist and quota, but never
    // send metadata); an emptied field is sent as null, which removes it from the key.
    const payload = {};
    if (els.editAllowedIps.value.trim() !== before.allowedIps) {
      const allowed = addressList(els.editAllowedIps.value);
      payload.allowed_ips = allowed.length > 0 ? allowed : null;
    }
    const requests = els.editQuotaRequests.value.trim();
    if (requests !== before.quotaRequests || (requests && els.editQuotaPeriod.value !== before.quotaPeriod)) {
      payload.quota = requests ? { requests: Number(requests), period: els.editQuotaPeriod.value } : null;
    }
    if (els.editMetadata.value.trim() !== before.metadata.trim()) {
      let metadata;
      try {
        metadata = readMetadata(els.editMetadata, els.editMetadataError);
      } catch (err) {
        if (err instanceof InvalidField) {
          return;
        }
        throw err;
      }
      payload.metadata = metadata === undefined ? null : metadata;
    } else {
      clearFieldError(els.editMetadata, els.editMetadataError);
    }
    const account = shown;
    const since = view;
    const id = editing.id;
    attempt(async () => {
      if (Object.keys(payload).length > 0) {
        await call("PATCH", keyPath(account, id), payload);
      }
      if (await reload(account, since) && editing && editing.id === id) {
        closeEdit(true);
      }
    });
  });

  els.editCancel.addEventListener("click", () => closeEdit(true));

  // ===== usage chart =====

  const SVG = "http://www.w3.org/2000/svg";
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function svg(name, attributes, text) {
    const el = document.createElementNS(SVG, name);
    for (const [attribute, value] of Object.entries(attributes)) {
      el.setAttribute(attribute, String(value));
    }
    if (text !== undefined) {
      el.textContent = text;
    }
    return el;
  }

  // The top of the value axis: a round number at or above `max`, in steps of 1, 2 or 5 times
  // a power of ten, about four steps high. An empty chart's axis goes to 1.
  function axisTop(max) {
    if (max <= 0) {
      return { top: 1, step: 1 };
    }
    let mantissa = 1;
    let decade = 1;
    while (mantissa * decade * 4 < max) {
      if (mantissa === 1) {
        mantissa = 2;
      } else if (mantissa === 2) {
        mantissa = 5;
      } else {
        mantissa = 1;
        decade *= 10;
      }
    }
    const step = mantissa * decade;
    return { top: Math.ceil(max / step) * step, step };
  }

  const pad = (n) => String(n).padStart(2, "0");
  const dayLabel = (date) => MONTHS[date.getUTCMonth()] + " " + date.getUTCDate();
  function bucketLabel(date, hourly) {
    const day = date.getUTCFullYear() + "-" + pad(date.getUTCMonth() + 1) + "-" + pad(date.getUTCDate());
    return hourly ? day + " " + pad(date.getUTCHours()) + ":00 UTC" : day + " (UTC)";
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  // Draws `usage` (the API's answer) as stacked bars, accepted below, refused and rate
  // limited above, with a summary for screen readers and the totals in text.
  function drawUsage(usage) {
    const hourly = usage.granularity === "hour";
    const buckets = usage.buckets.map((bucket) => ({
      start: new Date(bucket.start),
      accepted: bucket.accepted,
      refused: bucket.refused + bucket.rate_limited,
      limited: bucket.rate_limited,
    }));
    const total = { accepted: 0, refused: 0, limited: 0 };
    let busiest = null;
    for (const bucket of buckets) {
      total.accepted += bucket.accepted;
      total.refused += bucket.refused;
      total.limited += bucket.limited;
      const sum = bucket.accepted + bucket.refused;
      if (sum > 0 && (!busiest || sum > busiest.accepted + busiest.refused)) {
        busiest = bucket;
      }
    }
    const max = Math.max(0, ...buckets.map((bucket) => bucket.accepted + bucket.refused));
    const { top, step } = axisTop(max);

    const width = Math.max(280, Math.floor(els.usageChart.clientWidth || 640));
    const height = 220;
    const margin = { left: 44, right: 8, top: 10, bottom: 40 };
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const base = margin.top + plotHeight;
    const scale = (value) => (value / top) * plotHeight;

    const what = hourly ? "hour" : "day";
    const span = hourly ? plural(buckets.length, "hour") : plural(buckets.length, "day");
    const first = buckets[0];
    const last = buckets[buckets.length - 1];
    let summary = "Requests per " + what + " over " + span;
    if (first && last) {
      summary += ", from " + bucketLabel(first.start, hourly) + " to " + bucketLabel(last.start, hourly);
    }
    summary += ": " + plural(total.accepted + total.refused, "request") + ", " + total.accepted +
      " accepted and " + total.refused + " refused (" + total.limited + " of them rate limited).";
    if (busiest) {
      summary += " Busiest " + what + ": " + bucketLabel(busiest.start, hourly) + ", with " +
        plural(busiest.accepted + busiest.refused, "request") + ".";
    }

    const chart = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      role: "img",
      "aria-label": summary,
      "data-axis-max": top,
      "data-plot-height": plotHeight,
    });
    chart.append(svg("title", {}, summary));

    // The value axis: gridline ticks and their numbers, and its name.
    for (let value = 0; value <= top; value += step) {
      const y = (base - scale(value)).toFixed(2);
      chart.append(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: y, y2: y }));
      chart.append(svg("text", { x: margin.left - 6, y, "text-anchor": "end", "dominant-baseline": "middle" }, String(value)));
    }
    chart.append(svg("text", {
      x: 0, y: 0, transform: "translate(12 " + (margin.top + plotHeight / 2) + ") rotate(-90)",
      "text-anchor": "middle",
    }, "Requests"));

    // The bars, and a date or hour under some of them.
    const slot = plotWidth / Math.max(1, buckets.length);
    const barWidth = Math.max(1, slot * 0.7);
    let lastLabel = -Infinity;
    buckets.forEach((bucket, i) => {
      const x = margin.left + i * slot;
      const group = svg("g", {
        class: "bar",
        "data-start": bucket.start.toISOString(),
        "data-accepted": bucket.accepted,
        "data-refused": bucket.refused,
      });
      const accepted = scale(bucket.accepted);
      const refused = scale(bucket.refused);
      const left = (x + (slot - barWidth) / 2).toFixed(2);
      group.append(svg("rect", {
        class: "bar-accepted", x: left, width: barWidth.toFixed(2),
        y: (base - accepted).toFixed(2), height: accepted.toFixed(2),
      }));
      group.append(svg("rect", {
        class: "bar-refused", x: left, width: barWidth.toFixed(2),
        y: (base - accepted - refused).toFixed(2), height: refused.toFixed(2),
      }));
      group.append(svg("title", {}, bucketLabel(bucket.start, hourly) + ": " + bucket.accepted +
        " accepted, " + bucket.refused + " refused (" + bucket.limited + " rate limited)"));
      chart.append(group);

      const hour = bucket.start.getUTCHours();
      const candidate = hourly ? hour % 6 === 0 : true;
      const middle = x + slot / 2;
      if (candidate && middle - lastLabel >= 56 && middle >= margin.left + 16 && middle <= width - 16) {
        lastLabel = middle;
        const label = hourly && hour !== 0 ? pad(hour) + ":00" : dayLabel(bucket.start);
        chart.append(svg("line", { class: "axis", x1: middle, x2: middle, y1: base, y2: base + 4 }));
        chart.append(svg("text", { x: middle, y: base + 16, "text-anchor": "middle" }, label));
      }
    });
    chart.append(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: base, y2: base }));
    chart.append(svg("text", { x: margin.left + plotWidth / 2, y: height - 4, "text-anchor": "middle" },
      hourly ? "Hour (UTC)" : "Day (UTC)"));

    els.usageChart.replaceChildren(chart);
    // The same numbers as a table, for whoever can't hover a bar: one row per bar.
    els.usageRows.replaceChildren(...buckets.map((bucket) => {
      const tr = document.createElement("tr");
      tr.append(
        cell("From (UTC)", bucketLabel(bucket.start, hourly)),
        cell("Accepted", String(bucket.accepted)),
        cell("Refused", String(bucket.refused - bucket.limited)),
        cell("Rate limited", String(bucket.limited)),
      );
      return tr;
    }));
    els.usageTotal.textContent = "Total over " + span + ": " +
      plural(total.accepted + total.refused, "request") + ", " + total.accepted + " accepted, " +
      total.refused + " refused (" + total.limited + " rate limited).";
  }

  // Asks for the charted key's usage at the chosen granularity, and draws it unless a newer
  // request or another list came meanwhile.
  function loadUsage(account, key) {
    chartCall += 1;
    const ticket = chartCall;
    const since = view;
    return attempt(async () => {
      const usage = await call("GET", keyPath(account, key.id) + "/usage?granularity=" + granularity);
      if (ticket !== chartCall || since !== view || !charted || charted.id !== key.id) {
        return;
      }
      drawUsage(usage);
    });
  }

  function setGranularity(value) {
    granularity = value;
    els.usageHours.setAttribute("aria-pressed", String(value === "hour"));
    els.usageDays.setAttribute("aria-pressed", String(value === "day"));
  }

  async function openUsage(key) {
    if (!shown) {
      return;
    }
    charted = { id: key.id, prefix: key.prefix };
    setGranularity("hour");
    els.usagePrefix.textContent = key.prefix;
    els.usageChart.replaceChildren();
    els.usageRows.replaceChildren();
    els.usageTotal.textContent = "Loading…";
    els.usage.hidden = false;
    els.usageTitle.focus();
    await loadUsage(shown, key);
  }

  function closeUsage(moveFocus) {
    const hadFocus = els.usage.contains(document.activeElement);
    charted = null;
    chartCall += 1;
    els.usage.hidden = true;
    els.usageChart.replaceChildren();
    els.usageRows.replaceChildren();
    els.usageTotal.textContent = "";
    if (moveFocus || hadFocus) {
      els.keysTitle.focus();
    }
  }

  for (const [toggle, value] of [[els.usageHours, "hour"], [els.usageDays, "day"]]) {
    toggle.addEventListener("click", () => {
      if (!charted || !shown) {
        return;
      }
      setGranularity(value);
      loadUsage(shown, charted);
    });
  }
  els.usageClose.addEventListener("click", () => closeUsage(true));

  // ===== activity =====

  const ACTIVITY_PAGE = 20;
  const ACTION_NAMES = {
    create: "Created",
    update: "Updated",
    rotate: "Rotated",
    revoke: "Revoked",
    reactivate: "Reactivated",
    delete: "Deleted",
  };

  // One entry: when, who, what (to which key), refused or not, and the fields it set.
  function activityItem(event) {
    const item = document.createElement("li");
    item.dataset.id = String(event.id);
    item.dataset.action = event.action;
    item.dataset.outcome = event.outcome;
    const refused = event.outcome === "refused";
    item.classList.toggle("refused", refused);
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = formatTime(event.at) + " · ";
    const what = document.createElement("span");
    what.className = "what";
    const name = ACTION_NAMES[event.action] || event.action;
    what.append((refused ? "Refused: " : "") + name + " ");
    if (event.prefix) {
      const prefix = document.createElement("code");
      prefix.textContent = event.prefix;
      what.append(prefix, " ");
    }
    what.append("by " + event.actor);
    item.append(when, what);
    const fields = Object.entries(event.changes || {});
    if (fields.length > 0) {
      const changes = document.createElement("span");
      changes.className = "changes";
      changes.textContent = fields.map(([field, value]) => field + ": " + JSON.stringify(value)).join(", ");
      item.append(changes);
    }
    return item;
  }

  // Loads a page of `account`'s activity: the newest (`before` null, replacing what is shown)
  // or the one before entry `before` (appended). A failure is said in the section itself: the
  // action that led here may well have succeeded.
  async function loadActivity(account, before) {
    activityCall += 1;
    const ticket = activityCall;
    const since = view;
    let query = "?limit=" + ACTIVITY_PAGE;
    if (before !== null) {
      query += "&before=" + encodeURIComponent(String(before));
    }
    if (before === null) {
      // Another account's entries never stay under this account's name, not even while its
      // own load (or fail).
      if (els.activityList.dataset.account !== account) {
        els.activityList.replaceChildren();
        els.activityList.dataset.account = account;
        els.activityOlder.hidden = true;
      }
      els.activityStatus.textContent = "Loading…";
    }
    els.activityOlder.disabled = true;
    let data;
    try {
      data = await call("GET", accountPath(account) + "/events" + query);
    } catch (err) {
      if (ticket === activityCall && since === view) {
        els.activityStatus.textContent = "Activity could not be loaded: " + (err instanceof ApiError ? err.message : String(err));
        els.activityOlder.disabled = false;
      }
      return;
    }
    if (ticket !== activityCall || since !== view || shown !== account) {
      return;
    }
    const events = Array.isArray(data.events) ? data.events : [];
    const items = events.map(activityItem);
    if (before === null) {
      els.activityList.replaceChildren(...items);
    } else {
      els.activityList.append(...items);
    }
    els.activityStatus.textContent = els.activityList.children.length === 0 ? "No activity yet." : "";
    els.activityOlder.hidden = events.length < ACTIVITY_PAGE;
    els.activityOlder.disabled = false;
  }

  els.activityOlder.addEventListener("click", () => {
    const oldest = els.activityList.lastElementChild;
    if (shown && els.activityList.dataset.account === shown && oldest) {
      loadActivity(shown, Number(oldest.dataset.id));
    }
  });

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
