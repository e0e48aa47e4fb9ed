// The operations board: reads GET /v1/board, then applies the live stream's changes
// (GET /v1/board/stream, server-sent events read with fetch so the token travels in a
// header, never in a URL). Every request goes to this origin only.
import { drawMap } from "/dashboard/map.js";

const $ = (id) => document.getElementById(id);
const TOKENS = "doorstep.board.tokens";
const STAGES = ["assigned", "en_route", "arrived", "identity_confirmed", "in_service"];
const REMEDIES = ["apology", "refund", "coupon", "redo_visit", "coaching", "suspension"];

const state = {
  viewer: null, bookings: new Map(), alerts: new Map(), complaints: new Map(), fees: new Map(),
  unpaid: new Map(), cut: {}, loaded: {}, after: {}, fetching: {}, since: null, figures: null,
  map: null, stream: null,
};

// ------------------------------------------------------------------ helpers --
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const label = (s) => String(s || "").replaceAll("_", " ");
const isOps = () => state.viewer === "ops";
const myStore = () => (state.viewer || "").startsWith("store:") ? state.viewer.slice(6) : null;

function duration(seconds) {
  const s = Math.max(0, Math.round(Math.abs(seconds)));
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60), ss = s % 60;
  if (d) return `${d} d ${hh} h`;
  if (hh) return `${hh} h ${String(mm).padStart(2, "0")} min`;
  return `${mm}:${String(ss).padStart(2, "0")}`;
}
const clock = (iso) => iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
const when = (b) => b.timing === "window" && b.window_start
  ? `${clock(b.window_start)}–${clock(b.window_end)}` : label(b.timing || "");
function money(minor, currency) {
  try { return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(minor / 100); }
  catch { return `${(minor / 100).toFixed(2)} ${currency}`; }
}
function localMidnight() { const d = new Date(); d.setHours(0, 0, 0, 0); return d.toISOString(); }
function announce(text) { $("connection").dataset.last = text; }
function newer(map, key, row) {
  const old = map.get(key);
  if (!old || (row.rev ?? 0) >= (old.rev ?? 0)) map.set(key, row);
}

// --------------------------------------------------------------------- api --
function tokens() { try { return JSON.parse(sessionStorage.getItem(TOKENS)); } catch { return null; } }

async function api(path, options = {}, retried = false) {
  const t = tokens();
  const headers = { ...(options.headers || {}) };
  if (t) headers.Authorization = `Bearer ${t.access_token}`;
  if (options.body && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.body) };
  }
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401 && t && !retried && await refresh(t)) return api(path, options, true);
  if (res.status === 401) { signOut("Your session ended; sign in again."); throw new Error("signed out"); }
  return res;
}

async function refresh(t) {
  const res = await fetch("/v1/auth/refresh", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: t.refresh_token }),
  });
  if (!res.ok) return false;
  sessionStorage.setItem(TOKENS, JSON.stringify(await res.json()));
  return true;
}

async function problem(res) {
  try { const body = await res.json(); return body.error?.message || body.detail || res.statusText; }
  catch { return `${res.status} ${res.statusText}`; }
}

// ------------------------------------------------------------------ sign-in --
$("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  const res = await fetch("/v1/auth/ops", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: $("email").value, password: $("password").value }),
  });
  if (!res.ok) { $("signin-error").textContent = await problem(res); return; }
  sessionStorage.setItem(TOKENS, JSON.stringify(await res.json()));
  $("password").value = "";
  start();
});

$("signout").addEventListener("click", () => signOut("Signed out."));

function signOut(message) {
  const t = tokens();
  sessionStorage.removeItem(TOKENS);
  if (t) fetch("/v1/auth/logout", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: t.refresh_token }),
  }).catch(() => {});
  state.stream?.abort();
  $("board-view").hidden = true; $("signin-view").hidden = false;
  $("signout").hidden = true; $("viewer").hidden = true;
  $("connection").textContent = "Not signed in"; $("connection").className = "connection";
  $("signin-error").textContent = message || "";
}

// -------------------------------------------------------------- the board --
async function loadBoard() {
  const since = localMidnight();
  const res = await api(`/v1/board?since=${encodeURIComponent(since)}`);
  if (!res.ok) { $("connection").textContent = await problem(res); return; }
  const board = await res.json();
  // "Show more" pages continue this board's day, even past midnight, from where each list
  // was cut. (Rows already held stay: a change the stream brought meanwhile may be newer.)
  state.since = since;
  state.viewer = board.viewer;
  for (const b of board.bookings) newer(state.bookings, b.booking_id, b);
  for (const a of board.alerts) newer(state.alerts, a.alert_id, a);
  for (const c of board.complaints) newer(state.complaints, c.complaint_id, c);
  for (const f of board.fees) newer(state.fees, f.fee_id, f);
  for (const u of board.unpaid) newer(state.unpaid, u.receipt_id, u);
  state.figures = board.figures;
  state.cut = board.cut || {};
  for (const list of Object.keys(LISTS)) state.loaded[list] = board[list].length;
  state.after = board.more || {};
  noteCut();
  $("viewer").textContent = isOps() ? "Operations: every store" : `Store ${myStore()}`;
  $("viewer").hidden = false;
  render();
  loadMap();
  loadCalls();
  loadDisputes();
  loadSettlements();
  loadMargins();
}

// At most one figures request a second, however busy the city: within a second of a change.
let figuresDue = false;
function refreshFiguresSoon() {
  if (figuresDue) return;
  figuresDue = true;
  setTimeout(async () => {
    figuresDue = false;
    const res = await api(`/v1/board/figures?since=${encodeURIComponent(localMidnight())}`);
    if (res.ok) { state.figures = await res.json(); renderFigures(); }
  }, 1000);
}

// Each list holds its first rows only: say which lists are longer, by how much, and fetch
// the rest a page at a time (GET /v1/board/<list>, in the board's order).
const LISTS = {
  alerts: ["alerts", "alert_id"], bookings: ["bookings", "booking_id"],
  complaints: ["complaints", "complaint_id"], fees: ["fees owed or settled today", "fee_id"],
  unpaid: ["visits not paid or closed today", "receipt_id"],
};

function noteCut() {
  const note = $("cut-note");
  const cut = Object.entries(state.cut);
  note.replaceChildren();
  note.hidden = !cut.length;
  if (!cut.length) return;
  note.append("Some lists are longer than the board shows: ");
  cut.forEach(([list, total], i) => {
    const [name] = LISTS[list] || [list];
    note.append(`${i ? ", " : ""}${name} ${total} (the first ${state.loaded[list]} shown) `,
      h("button", { type: "button", class: "more", onclick: () => showMore(list) }, `Show more ${name}`));
  });
}

async function showMore(list) {
  if (!state.after[list]) return loadBoard();
  if (state.fetching[list]) return;  // a second click while the page is on its way
  state.fetching[list] = true;
  let res;
  try {
    const query = new URLSearchParams({ since: state.since, after: state.after[list] });
    res = await api(`/v1/board/${list}?${query}`);
  } finally {
    state.fetching[list] = false;
  }
  if (!res.ok) { $("cut-note").append(` Could not fetch more: ${await problem(res)}`); return; }
  const page = await res.json();
  for (const row of page.rows) newer(state[list], row[LISTS[list][1]], row);
  state.loaded[list] += page.rows.length;
  state.after[list] = page.next_after;
  if (page.next_after === null) delete state.cut[list];
  else state.cut[list] = page.total;
  noteCut();
  render();
}

async function loadMap() {
  const res = await api("/v1/board/map");
  if (res.ok) { state.map = await res.json(); renderMap(); }
}

// A change from the stream: keep the newer copy; a row that left this store's scope goes.
function apply(kind, row) {
  const store = myStore();
  const gone = store && row.store_id !== store;
  if (kind === "booking") {
    const before = state.bookings.get(row.booking_id);
    if (gone) state.bookings.delete(row.booking_id); else newer(state.bookings, row.booking_id, row);
    if (!gone && before?.status !== row.status) announce(`Booking ${row.booking_id}: ${label(row.status)}`);
  } else if (kind === "alert") {
    if (gone) state.alerts.delete(row.alert_id); else newer(state.alerts, row.alert_id, row);
  } else if (kind === "complaint") {
    if (gone) state.complaints.delete(row.complaint_id); else newer(state.complaints, row.complaint_id, row);
  } else if (kind === "fee") {
    newer(state.fees, row.fee_id, row);
  } else if (kind === "unpaid") {
    if (gone) state.unpaid.delete(row.receipt_id); else newer(state.unpaid, row.receipt_id, row);
  }
  scheduleRender();
  refreshFiguresSoon();
}

async function listen() {
  let delay = 500;
  for (;;) {
    const controller = new AbortController();
    state.stream = controller;
    try {
      const res = await api("/v1/board/stream", { headers: { Accept: "text/event-stream" }, signal: controller.signal });
      if (!res.ok) throw new Error(await problem(res));
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
          if (block.startsWith(": connected")) {
            // Watching before reading: nothing can fall between the board and the stream.
            $("connection").textContent = "Live"; $("connection").className = "connection live";
            delay = 500;
            await loadBoard();
            continue;
          }
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          // The token that opened the stream ran out: it ends, and opens again refreshed.
          if (kind === "credential_expired") continue;
          if (data) apply(kind, JSON.parse(data));
        }
      }
    } catch (err) {
      if (controller.signal.aborted || !tokens()) return;
    }
    if (!tokens()) return;
    $("connection").textContent = "Reconnecting…"; $("connection").className = "connection";
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// ---------------------------------------------------------------- rendering --
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function render() {
  renderAlerts(); renderFigures(); renderStates(); renderWaiting(); renderFailed();
  renderVisits(); renderComplaints(); renderFees(); renderRefunds(); renderProvider(); renderUnpaid(); renderMap(); tick();
}

function fill(tableId, rows, empty, columns) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colspan: columns }, empty))]));
}

function technicianText(t) { return t ? `${t.name} (badge ${t.badge_number})` : "—"; }

function renderAlerts() {
  const alerts = [...state.alerts.values()].sort((a, b) =>
    (a.acknowledged_at ? 1 : 0) - (b.acknowledged_at ? 1 : 0) || b.raised_at.localeCompare(a.raised_at));
  const list = $("alerts-list");
  const open = alerts.filter((a) => !a.acknowledged_at).length;
  $("alerts-title").textContent = open ? `Safety alerts: ${open} need action` : "Safety alerts";
  if (!alerts.length) { list.replaceChildren(h("p", { class: "empty" }, "No safety alerts.")); return; }
  list.replaceChildren(...alerts.map((a) => {
    const done = Boolean(a.acknowledged_at);
    const phones = [
      a.contacts?.customer_phone && h("span", {}, "Customer: ", h("a", { href: `tel:${a.contacts.customer_phone}` }, a.contacts.customer_phone)),
      a.contacts?.technician_phone && h("span", {}, " Technician: ", h("a", { href: `tel:${a.contacts.technician_phone}` }, a.contacts.technician_phone)),
    ];
    return h("article", {
      class: `alert ${a.severity}${done ? " done" : ""}`, "data-alert": a.alert_id,
      "aria-label": `${a.severity} safety alert ${label(a.kind)} on booking ${a.booking_id}`,
    },
      h("h3", {}, `${done ? "" : "⚠ "}${label(a.kind)} · ${a.severity}`),
      h("p", {}, a.detail),
      h("p", {}, `Booking ${a.booking_id} · technician ${technicianText(a.technician)}`,
        a.store_id ? ` · store ${a.store_id}` : "", a.customer_id ? ` · customer ${a.customer_id}` : ""),
      !done && h("p", {}, ...phones),
      h("p", {}, "Raised ", h("time", { datetime: a.raised_at, "data-since": a.raised_at }, ""), " ago"),
      done ? h("p", {}, `Acknowledged by ${a.acknowledged_by} at ${clock(a.acknowledged_at)}: ${a.note}`)
        : isOps() && h("button", { type: "button", class: "primary", onclick: () => acknowledge(a),
          "aria-label": `Acknowledge alert on booking ${a.booking_id}` }, "Acknowledge"),
      // An alert that stopped the visit stopped its technician's work too: operations put
      // them back once they have looked into it.
      done && isOps() && HALTING.includes(a.kind) && a.technician && h("button", { type: "button",
        onclick: () => reinstate(a), "aria-label": `Reinstate technician ${a.technician.technician_id}` }, "Reinstate technician…"),
    );
  }));
}

function renderFigures() {
  const f = state.figures;
  if (!f) return;
  const pct = (x) => x === null ? "—" : `${Math.round(x * 100)} %`;
  const secs = (x) => x === null ? "—" : duration(x);
  const revenue = Object.entries(f.revenue).map(([c, v]) => money(v, c)).join(" + ") || "—";
  const items = [
    ["Bookings", f.bookings], ["Assigned", pct(f.share_assigned)],
    ["Median time to assign", secs(f.median_time_to_assign_s)], ["Visits completed", f.visits_completed],
    ["Receipts signed", f.receipts_signed], ["First response (median)", secs(f.median_first_response_s)],
    ["Average rating", f.average_rating ?? "—"], ["Revenue", revenue],
  ];
  $("figures").replaceChildren(...items.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", { "data-figure": k }, v))));
}

function renderStates() {
  const counts = new Map();
  for (const b of state.bookings.values()) counts.set(b.status, (counts.get(b.status) || 0) + 1);
  const order = ["requested", "dispatch_failed", ...STAGES, "completed", "receipt_signed", "closed", "rescheduled", "cancelled"];
  const states = [...counts.keys()].sort((a, b) => order.indexOf(a) - order.indexOf(b));
  $("states").replaceChildren(...(states.length ? states.map((s) =>
    h("li", { "data-state": s }, label(s), h("b", {}, counts.get(s)))) : [h("li", {}, "No bookings yet today.")]));
}

const byWait = (a, b) => (a.requested_at || "").localeCompare(b.requested_at || "");

function renderWaiting() {
  const rows = [...state.bookings.values()].filter((b) => b.status === "requested" || b.status === "rescheduled" && !b.technician).sort(byWait);
  fill("waiting", rows.map((b) => h("tr", { "data-booking": b.booking_id },
    h("td", {}, b.booking_id), h("td", {}, b.region || ""), h("td", {}, when(b)),
    h("td", {}, h("span", { "data-since": b.requested_at }, "")))), "Nobody is waiting.", 4);
}

function renderFailed() {
  const rows = [...state.bookings.values()].filter((b) => b.status === "dispatch_failed").sort(byWait);
  fill("failed", rows.map((b) => h("tr", { "data-booking": b.booking_id },
    h("td", {}, b.booking_id), h("td", {}, b.region || ""), h("td", {}, b.dispatch_failed_reason || ""),
    h("td", {}, h("span", { "data-since": b.requested_at }, "")),
    h("td", {}, isOps() && h("button", { type: "button", onclick: () => reassign(b, "Assign"),
      "aria-label": `Assign booking ${b.booking_id}` }, "Assign…")))), "None.", 5);
}

function renderVisits() {
  const rows = [...state.bookings.values()].filter((b) => STAGES.includes(b.status))
    .sort((a, b) => STAGES.indexOf(b.status) - STAGES.indexOf(a.status) || byWait(a, b));
  fill("visits", rows.map((b) => h("tr", { "data-booking": b.booking_id },
    h("td", {}, b.booking_id), h("td", { "data-technician": b.technician?.technician_id || "" }, technicianText(b.technician)),
    h("td", {}, b.store_id || ""), h("td", { "data-stage": b.status }, label(b.status)),
    h("td", { class: b.arrival_flagged ? "flagged" : "" },
      b.arrival_distance_m === null || b.arrival_distance_m === undefined ? "—"
        : `${Math.round(b.arrival_distance_m)} m${b.arrival_flagged ? " (too far)" : ""}`),
    h("td", {}, isOps() && ["assigned", "en_route"].includes(b.status) && h("button", {
      type: "button", onclick: () => reassign(b, "Reassign"), "aria-label": `Reassign booking ${b.booking_id}` },
    "Reassign…")))), "No visits under way.", 6);
}

// The last resolution's remedies, and whether each was carried out: one not made is
// operations' to put right now, by another remedy (a refund with nothing paid) or by
// handing the money back (cash, a card that refused it: owed, on the visit's row).
// And one a later resolution answered that was made all the same (payments made it before
// the withdrawal reached it): the customer has both, until operations deal with it.
const twice = (r) => r.withdrawn_at && (r.took_effect_at || r.owed);
const undealt = (r) => twice(r) && !r.dealt_with_at;
const remedies = (c) => (c.remedies || []).filter((r) => r.current || twice(r));
const unmade = (c) => remedies(c).some((r) => r.not_made || undealt(r));
const replaceable = (c) => remedies(c).some((r) => r.current && r.not_made && !r.owed);

function remedyText(r) {
  const size = r.amount != null ? (r.currency ? money(r.amount, r.currency) : (r.amount / 100).toFixed(2))
    : r.percent ? `${r.percent} %` : r.kind === "refund" ? "of all paid" : "";
  const what = [label(r.kind), size].filter(Boolean).join(" ");
  const after = `${what}: made after another resolution answered it${r.not_made ? ` (${r.not_made})` : ""}`;
  if (twice(r) && r.dealt_with_at) return h("span", { "data-remedy": r.remedy_id, "data-made": "twice-dealt-with" }, `${after}; dealt with${r.dealt_with ? ` (${r.dealt_with})` : ""}`);
  if (twice(r)) return h("span", { class: "flagged", "data-remedy": r.remedy_id, "data-made": "twice" }, after);
  if (r.not_made) return h("span", { class: "flagged", "data-remedy": r.remedy_id, "data-made": "no" }, `${what}: not made (${r.not_made})`);
  return h("span", { "data-remedy": r.remedy_id, "data-made": r.took_effect_at ? "yes" : "pending" }, `${what}: ${r.took_effect_at ? "made" : "under way"}`);
}

// What the customer took off the visit's receipt before signing: never charged, so a
// refund of it would pay them twice.
const takenOff = (c) => c.taken_off_receipt || [];
const REASONS = { not_done: "not done", not_used: "not used", fewer: "fewer" };
const itemsTakenOff = (items) => items.map((i) => `${i.quantity} x ${i.name} (${REASONS[i.reason] || i.reason})`).join("; ");
function takenOffText(t) {
  return h("span", { "data-taken-off": t.revision }, `${money(t.amount, t.currency)} taken off the receipt, not charged: ${itemsTakenOff(t.items)}`);
}

function renderComplaints() {
  // A closed one stays in sight when a remedy was made twice (the customer has both), on
  // operations' board until they deal with it, whatever the day.
  const rows = [...state.complaints.values()].filter((c) => c.status !== "closed" || remedies(c).some(undealt))
    .sort((a, b) => unmade(b) - unmade(a) || (a.next_deadline || "9").localeCompare(b.next_deadline || "9"));
  fill("complaints", rows.map((c) => h("tr", { "data-complaint": c.complaint_id, class: c.breaches || unmade(c) ? "breach-row" : "" },
    h("td", {}, c.complaint_id, h("br"), h("small", {}, `booking ${c.booking_id}`)),
    h("td", {}, label(c.category)), h("td", {}, c.severity), h("td", {}, c.tier), h("td", {}, label(c.status)),
    h("td", {}, [...remedies(c), ...takenOff(c)].length
      ? [...remedies(c).map(remedyText), ...takenOff(c).map(takenOffText)].flatMap((e, i) => i ? [h("br"), e] : [e]) : "—"),
    h("td", {}, c.next_deadline ? [label(c.next_deadline_kind), " ", h("span", { "data-due": c.next_deadline }, "")] : "—"),
    h("td", { class: c.breaches ? "breach" : "" }, c.breaches ? `${c.breaches} missed` : "0"),
    h("td", {}, isOps() && [
      !c.first_response_at && h("button", { type: "button", onclick: () => respond(c), "aria-label": `Respond to complaint ${c.complaint_id}` }, "Respond…"),
      c.status !== "closed" && (c.status !== "resolution_proposed" || replaceable(c)) && h("button", { type: "button", onclick: () => resolve(c), "aria-label": `Propose a remedy for complaint ${c.complaint_id}` }, replaceable(c) ? "Another remedy…" : "Remedy…"),
      ...remedies(c).filter(undealt).map((r) => h("button", { type: "button", onclick: () => dealtWith(c, r), "aria-label": `Deal with remedy ${r.remedy_id} of complaint ${c.complaint_id}` }, "Dealt with…")),
    ]))), "No open complaints.", 9);
}

// Operations' alone: the fees customers owe, to chase or waive, and what was settled today.
function renderFees() {
  $("fees-section").hidden = !isOps();
  const fees = [...state.fees.values()];
  // A fee the card would not take back today is operations' to repay another way.
  const owed = fees.filter((f) => f.status === "owed" || f.status === "refund_declined")
    .sort((a, b) => (a.owed_since || "").localeCompare(b.owed_since || ""));
  $("fees-title").textContent = owed.length ? `Late-cancellation fees owed: ${owed.length}${state.cut.fees ? "+" : ""}` : "Late-cancellation fees owed";
  const settled = ["paid", "waived", "refunded"].map((s) => [s, fees.filter((f) => f.status === s).length]).filter(([, n]) => n);
  $("fees-today").textContent = settled.length ? `Settled today: ${settled.map(([s, n]) => `${n} ${s}`).join(", ")}.` : "";
  fill("fees", owed.map((f) => h("tr", { "data-fee": f.fee_id },
    h("td", {}, f.fee_id, h("br"), h("small", {}, `booking ${f.booking_id}`)),
    h("td", {}, f.customer_id), h("td", {}, money(f.amount, f.currency)), h("td", {}, f.note || ""),
    h("td", {}, h("span", { "data-since": (f.status === "refund_declined" ? f.refund_declined_at : f.owed_since) || "" }, "")),
    h("td", {}, f.status === "owed" && h("button", { type: "button", onclick: () => waive(f), "aria-label": `Waive fee ${f.fee_id}` }, "Waive…"),
      f.status === "refund_declined" && h("button", { type: "button", "aria-label": `Record fee ${f.fee_id} repaid`,
        onclick: () => repaid(`fee ${f.fee_id}`, money(f.amount, f.currency), `/v1/cancellation-fees/${encodeURIComponent(f.fee_id)}/refund-repaid`) }, "Record repaid…")))),
  "No fees owed.", 6);
}

// Operations' alone: refunds of visits the card would not take back, and cash to hand back
// (the customer was told; the money is theirs still, owed by that refund until operations
// repay it another way). One line per refund: a visit may owe two.
function renderRefunds() {
  $("refunds-section").hidden = !isOps();
  const owed = [...state.bookings.values()].flatMap((b) => (b.refunds_owed || []).map((r) => [b, r]))
    .sort(([, a], [, b]) => (a.since || "").localeCompare(b.since || ""));
  fill("refunds-declined", owed.map(([b, r]) => h("tr", { "data-booking": b.booking_id, "data-refund": r.refund_id || "" },
    h("td", {}, b.booking_id, r.refund_id && h("br"), r.refund_id && h("small", {}, `refund ${r.refund_id}`)),
    h("td", {}, b.customer_id || ""),
    h("td", {}, money(r.amount, b.currency)), h("td", {}, r.note || ""),
    h("td", {}, h("span", { "data-since": r.since || "" }, "")),
    h("td", {}, r.refund_id && r.receipt_id && h("button", { type: "button", "aria-label": `Record refund ${r.refund_id} of booking ${b.booking_id} repaid`,
      onclick: () => repaid(`refund ${r.refund_id} of booking ${b.booking_id}`, money(r.amount, b.currency),
        `/v1/receipts/${encodeURIComponent(r.receipt_id)}/refunds/${encodeURIComponent(r.refund_id)}/repaid`) }, "Record repaid…")))),
  "No refund owed.", 6);
}

// Operations' alone: charges and refunds the provider has not answered (payments keeps
// asking; the section is hidden while there are none).
function renderProvider() {
  const rows = [...state.bookings.values()].filter((b) => b.provider_unanswered)
    .sort((a, b) => (a.provider_unanswered_since || "").localeCompare(b.provider_unanswered_since || ""));
  $("provider-section").hidden = !isOps() || !rows.length;
  fill("provider-unanswered", rows.map((b) => h("tr", { "data-booking": b.booking_id },
    h("td", {}, b.booking_id), h("td", {}, b.provider_unanswered_note || ""),
    h("td", {}, h("span", { "data-since": b.provider_unanswered_since || "" }, "")))),
  "None.", 3);
}

// Signed visits whose money is still due: a declined card (the customer pays in the app) or
// cash the technician has not recorded. A store sees its own, without the customer.
function renderUnpaid() {
  const rows = [...state.unpaid.values()];
  const due = rows.filter((u) => u.status === "due")
    .sort((a, b) => (a.due_since || "").localeCompare(b.due_since || ""));
  $("unpaid-title").textContent = due.length ? `Visits not paid: ${due.length}${state.cut.unpaid ? "+" : ""}` : "Visits not paid";
  const closed = ["paid", "written_off"].map((s) => [s, rows.filter((u) => u.status === s).length]).filter(([, n]) => n);
  $("unpaid-today").textContent = closed.length ? `Since today began: ${closed.map(([s, n]) => `${n} ${label(s)}`).join(", ")}.` : "";
  fill("unpaid", due.map((u) => h("tr", { "data-receipt": u.receipt_id },
    h("td", {}, u.booking_id, h("br"), h("small", {}, `receipt ${u.receipt_id}`)),
    h("td", {}, u.way === "cash" ? `cash: technician ${u.technician_id || ""}` : "card: the customer"),
    h("td", {}, isOps() ? u.customer_id || "" : ""), h("td", {}, money(u.amount, u.currency)),
    h("td", {}, u.note || ""), h("td", {}, h("span", { "data-since": u.due_since || "" }, "")),
    h("td", {}, u.reminders ? `${u.reminders} sent` : "none yet"),
    // Written off only once whoever must pay has been reminded (payments refuses before).
    h("td", {}, isOps() && u.reminders > 0 && h("button", { type: "button", onclick: () => writeOff(u), "aria-label": `Write off receipt ${u.receipt_id}` }, "Write off…")))),
  "Every signed visit is paid.", 8);
  // Operations' alone: money given up today, to take back if it turns up after all.
  $("written-off-part").hidden = !isOps();
  $("written-off-title").textContent = `Written off since today began${state.cut.unpaid ? " (of the rows loaded: “Show more” above)" : ""}`;
  const off = rows.filter((u) => u.status === "written_off")
    .sort((a, b) => (b.written_off_at || "").localeCompare(a.written_off_at || ""));
  fill("written-off", off.map((u) => h("tr", { "data-receipt": u.receipt_id },
    h("td", {}, u.booking_id, h("br"), h("small", {}, `receipt ${u.receipt_id}`)),
    h("td", {}, u.way === "cash" ? `cash: technician ${u.technician_id || ""}` : "card: the customer"),
    h("td", {}, u.customer_id || ""), h("td", {}, money(u.amount, u.currency)),
    h("td", {}, u.write_off_reason || ""), h("td", {}, clock(u.written_off_at)),
    h("td", {}, h("button", { type: "button", onclick: () => reopen(u), "aria-label": `Reopen receipt ${u.receipt_id}` }, "Reopen…")))),
  "Nothing written off today.", 7);
}

function renderMap() {
  const m = state.map;
  if (!m) return;
  const bookings = [...state.bookings.values()].filter((b) => b.location && ["requested", "dispatch_failed", ...STAGES].includes(b.status));
  $("map").replaceChildren(drawMap(m.areas, m.technicians, bookings));
  fill("on-shift", m.technicians.map((t) => h("tr", { "data-technician": t.technician.technician_id },
    h("td", {}, technicianText(t.technician)), h("td", {}, t.technician.store_id || ""),
    h("td", {}, t.booking_id ? `${label(t.stage)} · ${t.booking_id}` : "free"),
    h("td", {}, t.location_at ? `${t.location.lat.toFixed(4)}, ${t.location.lon.toFixed(4)} at ${clock(t.location_at)}` : "not reported"))),
  "Nobody is on shift now.", 4);
}

// Waiting times and deadlines count by themselves, once a second.
function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = el.dataset.since ? duration((now - Date.parse(el.dataset.since)) / 1000) : "";
  }
  for (const el of document.querySelectorAll("[data-due]")) {
    const left = (Date.parse(el.dataset.due) - now) / 1000;
    el.textContent = left >= 0 ? `in ${duration(left)}` : `overdue by ${duration(left)}`;
    el.className = left >= 0 ? "" : "overdue";
  }
}
setInterval(tick, 1000);
setInterval(() => { if (tokens() && !$("board-view").hidden) loadMap(); }, 15000);
setInterval(() => { if (tokens() && !$("board-view").hidden) { loadCalls(); loadDisputes(); loadSettlements(); loadMargins(); } }, 60000);

// Operations' alone: customers to call a week after a larger job (booking's call list, read
// with the board and every minute; a call recorded takes its line off until it is due again).
const CALLS_SHOWN = 200;  // the list's longest page; more than that shows as "200+"
async function loadCalls() {
  $("calls-section").hidden = !isOps();
  if (!isOps()) return;
  const res = await api(`/v1/follow-ups/calls?limit=${CALLS_SHOWN}`);
  if (!res.ok) return;
  const calls = await res.json();
  $("calls-title").textContent = calls.length ? `Calls to make: ${calls.length}${calls.length === CALLS_SHOWN ? "+" : ""}` : "Calls to make";
  fill("calls", calls.map((c) => h("tr", { "data-follow-up": c.follow_up_id },
    h("td", {}, c.customer_name, h("br"), h("small", {}, `booking ${c.booking_id}`)),
    h("td", {}, h("a", { href: `tel:${c.phone}` }, c.phone)),
    h("td", {}, c.services.join(", ")),
    h("td", {}, h("span", { "data-since": c.due_at }, "")),
    h("td", {}, String(c.calls.length)),
    h("td", {}, h("button", { type: "button", onclick: () => recordCall(c), "aria-label": `Record the call to ${c.customer_name} about booking ${c.booking_id}` }, "Record call…")))),
  "No calls due.", 6);
}

// Items customers took off receipts before signing (payments' list, read with the board and
// every minute): operations see every store's, a store its own technicians'.
const DISPUTES_SHOWN = 50;
async function loadDisputes() {
  const res = await api(`/v1/receipt-disputes?limit=${DISPUTES_SHOWN}`);
  if (!res.ok) return;
  const disputed = await res.json();
  fill("disputes", disputed.map((d) => h("tr", { "data-receipt": d.receipt_id },
    h("td", {}, d.booking_id),
    h("td", {}, d.technician_id, isOps() ? [h("br"), h("small", {}, `store ${d.store_id}`)] : null),
    h("td", {}, itemsTakenOff(d.disputes.flatMap((x) => x.items))),
    h("td", {}, money(d.taken_off, d.currency)),
    h("td", {}, `${money(d.total, d.currency)}, ${label(d.status)}`),
    h("td", {}, h("span", { "data-since": d.disputed_at }, "")))),
  "Nothing taken off receipts lately.", 6);
}

// Stores' weekly statements (payments'), read with the board and every minute: a store its
// own last weeks and every week still due, however old; operations every store's, closing
// those due once the money has moved.
const SETTLEMENT_WEEKS = 4;
let settlementsAsked = 0;  // the latest read: one sent before a close does not paint it due again
async function loadSettlements() {
  const query = isOps() ? "" : `store_id=${encodeURIComponent(myStore())}&`;
  const asked = ++settlementsAsked;
  const [recent, due] = await Promise.all([
    api(`/v1/settlements?${query}weeks=${SETTLEMENT_WEEKS}`), api(`/v1/settlements?${query}status=due`)]);
  if (!recent.ok || asked !== settlementsAsked) return;
  const shown = new Map((await recent.json()).map((s) => [s.statement_id, s]));
  for (const s of due.ok ? await due.json() : []) if (!shown.has(s.statement_id)) shown.set(s.statement_id, s);
  if (asked !== settlementsAsked) return;
  const statements = [...shown.values()].sort((a, b) => b.week.localeCompare(a.week) || a.store_id.localeCompare(b.store_id));
  fill("settlements", statements.map((s) => h("tr", { "data-statement": s.statement_id },
    h("td", {}, s.week, h("br"), h("small", {}, weekDays(s)),
      isOps() ? [h("br"), h("small", {}, `store ${s.store_id}`)] : null),
    h("td", {}, String(s.visits)),
    h("td", {}, money(s.takings, s.currency)),
    h("td", {}, money(s.commission, s.currency)),
    h("td", {}, money(s.held_by_store, s.currency)),
    h("td", { "data-payable": "" }, payableText(s)),
    h("td", { "data-status": s.status }, s.status === "closed" ? `closed: ${s.reference}` : s.status),
    h("td", {}, isOps() && s.status === "due"
      ? h("button", { type: "button", onclick: () => closeSettlement(s), "aria-label": `Close ${s.store_id}'s week ${s.week} (${s.currency})` }, "Close…")
      : ""))),
  `No money moved in the last ${SETTLEMENT_WEEKS} weeks.`, 8);
}

// Monday to Sunday, as the statement's UTC week runs (the last day is the one before it ends).
function weekDays(s) {
  const day = (iso) => new Date(iso).toLocaleDateString(undefined, { day: "numeric", month: "short", timeZone: "UTC" });
  return `${day(s.starts_at)} – ${day(new Date(new Date(s.ends_at) - 86400000).toISOString())}`;
}

function visitsText(n) { return `${n} visit${n === 1 ? "" : "s"}`; }

function payableText(s) {
  if (s.payable === 0) return "nothing either way";
  const amount = money(Math.abs(s.payable), s.currency);
  return s.payable > 0 ? `${amount} to the store` : `${amount} from the store`;
}

// Closed by the transfer's reference, with the payable the dialog showed: a statement that
// reads differently by then is refused (409), not closed on operations' behalf.
function closeSettlement(s) {
  const reference = h("input", { id: "settlement-reference", required: true, minlength: 3, maxlength: 120 });
  dialog(`Close ${s.store_id}'s week ${s.week} (${s.currency})`,
    [h("p", {}, `${visitsText(s.visits)} with money moving took in ${money(s.takings, s.currency)}; commission ${money(s.commission, s.currency)}; the store holds ${money(s.held_by_store, s.currency)}. Settled: ${payableText(s)}.`),
      ...field("settlement-reference", "Reference (the transfer's)", reference)],
    "Close the week",
    async () => {
      const res = await api(`/v1/settlements/${encodeURIComponent(s.store_id)}/${encodeURIComponent(s.week)}/close`,
        { method: "POST", body: { currency: s.currency, payable: s.payable, reference: reference.value } });
      if (res.ok) loadSettlements();
      return res;
    });
}

// Operations' alone: what the platform made of each region, store or technician by the week
// (payments' margins), read with the board, every minute and when "by" changes.
const MARGIN_WEEKS = 4;
const MARGINS_SHOWN = 50;
let marginsAsked = 0;  // the latest read: an older one answering late is not shown over it
async function loadMargins() {
  $("margins-section").hidden = !isOps();
  if (!isOps()) return;
  const by = $("margins-by").value;
  const asked = ++marginsAsked;
  const res = await api(`/v1/margins?by=${by}&weeks=${MARGIN_WEEKS}&limit=${MARGINS_SHOWN}`);
  if (!res.ok || asked !== marginsAsked) return;
  const m = await res.json();
  if (asked !== marginsAsked) return;
  const head = $("margins").tHead.rows[0];
  $("margins-key").textContent = by[0].toUpperCase() + by.slice(1);
  head.replaceChildren(head.cells[0], ...m.weeks.map((w) => h("th", { scope: "col" }, w)),
    h("th", { scope: "col" }, `${m.weeks.length} weeks`), h("th", { scope: "col" }, "Taken in"),
    h("th", { scope: "col" }, "Coupons"), h("th", { scope: "col" }, "Written off"));
  fill("margins", m.rows.map((r) => h("tr", { "data-margin": r.key ?? "" },
    h("th", { scope: "row" }, r.key ?? `${by} not known`),
    ...r.weeks.map((w) => netCell(w.platform_net, r.currency,
      `${visitsText(w.visits)}: took in ${money(w.takings, r.currency)} (refunds ${money(w.refunds, r.currency)}), commission ${money(w.commission, r.currency)}, coupons ${money(w.coupons, r.currency)}`, w.week)),
    netCell(r.total.platform_net, r.currency, `commission ${money(r.total.commission, r.currency)}`, "total"),
    h("td", {}, money(r.total.takings, r.currency)),
    h("td", {}, money(r.total.coupons, r.currency)),
    h("td", {}, money(r.total.written_off, r.currency)))),
  `No money moved in the last ${MARGIN_WEEKS} weeks.`, m.weeks.length + 5);
  const currencies = [...new Set(m.platform.map((p) => p.currency))];
  $("margins").tFoot.replaceChildren(...currencies.map((currency) => {
    const weeks = m.platform.filter((p) => p.currency === currency);
    const net = weeks.reduce((sum, p) => sum + p.net, 0);
    return h("tr", { "data-platform": currency },
      h("th", { scope: "row" }, `Platform (${currency})${m.more ? `; ${m.more} more not shown` : ""}`),
      ...weeks.map((p) => netCell(p.net, currency, `commission ${money(p.commission, currency)}, coupons ${money(p.coupons, currency)}, fees kept ${money(p.fees_kept, currency)}`, p.week)),
      netCell(net, currency, "", "total"), h("td", { colspan: 3 }, ""));
  }));
}
$("margins-by").addEventListener("change", loadMargins);

function netCell(amount, currency, detail, week) {
  return h("td", { class: amount < 0 ? "loss" : "", title: detail, "data-week": week, "data-net": String(amount) }, money(amount, currency));
}

// ------------------------------------------------------------------ actions --
function dialog(title, body, submitLabel, onSubmit) {
  const dlg = $("dialog");
  $("dialog-title").textContent = title;
  $("dialog-body").replaceChildren(...body);
  $("dialog-error").textContent = "";
  $("dialog-submit").textContent = submitLabel;
  $("dialog-form").onsubmit = async (ev) => {
    ev.preventDefault();
    $("dialog-submit").disabled = true;
    try {
      const res = await onSubmit();
      if (res.ok) { dlg.close(); announce(`${title}: done`); }
      else $("dialog-error").textContent = await problem(res);
    } finally { $("dialog-submit").disabled = false; }
  };
  $("dialog-cancel").onclick = () => dlg.close();
  dlg.showModal();
}

function field(id, text, input) { return [h("label", { for: id }, text), input]; }

const HALTING = ["wrong_code_lockout", "not_the_person"];

// Names the alert: only its suspension is lifted (the service refuses, with the reason, if
// another alert or a complaint keeps them off work now).
function reinstate(a) {
  const reason = h("input", { id: "reinstate-reason", required: true, minlength: 3, maxlength: 500 });
  dialog(`Reinstate ${technicianText(a.technician)}`,
    [h("p", {}, `No offers reach them since the alert on booking ${a.booking_id}. Put them back to work?`),
      ...field("reinstate-reason", "What you found", reason)],
    "Reinstate",
    () => api(`/v1/technicians/${encodeURIComponent(a.technician.technician_id)}/status`, { method: "PUT", body: { status: "active", reason: reason.value, alert_id: a.alert_id } }));
}

function acknowledge(a) {
  const note = h("textarea", { id: "ack-note", required: true, minlength: 3, maxlength: 500, rows: 3 });
  dialog(`Acknowledge alert on booking ${a.booking_id}`,
    [h("p", {}, a.detail), ...field("ack-note", "What are you doing about it?", note)], "Acknowledge",
    () => api(`/v1/safety-alerts/${encodeURIComponent(a.alert_id)}/acknowledge`, { method: "POST", body: { note: note.value } }));
}

async function reassign(b, verb) {
  const res = await api(`/v1/visits/${encodeURIComponent(b.booking_id)}/candidates`);
  const candidates = res.ok ? await res.json() : [];
  const choices = h("div", { class: "choices", role: "radiogroup", "aria-label": "Technician" },
    h("label", {}, h("input", { type: "radio", name: "technician", value: "", checked: true }), "Search again (matching round)"),
    ...candidates.map((c, i) => h("label", {},
      h("input", { type: "radio", name: "technician", value: c.technician.technician_id, "data-candidate": i }),
      `${technicianText(c.technician)} · ${(c.distance_m / 1000).toFixed(1)} km`)));
  const reason = h("input", { id: "reason", required: true, minlength: 3, maxlength: 500, value: verb === "Assign" ? "assigned by operations" : "" });
  dialog(`${verb} booking ${b.booking_id}`,
    [h("p", {}, `Now: ${technicianText(b.technician)}`),
      h("p", { id: "choices-title" }, candidates.length ? "Who can take it, best first:" : "Nobody qualifies right now."),
      choices, ...field("reason", "Reason (kept on the booking's timeline)", reason)],
    verb,
    () => {
      const picked = choices.querySelector("input:checked")?.value || null;
      return api(`/v1/visits/${encodeURIComponent(b.booking_id)}/reassign`, {
        method: "POST", body: picked ? { reason: reason.value, technician_id: picked } : { reason: reason.value },
      });
    });
}

function respond(c) {
  const text = h("textarea", { id: "respond-text", required: true, maxlength: 2000, rows: 4 });
  dialog(`Respond to complaint ${c.complaint_id}`, field("respond-text", "Your first response to the customer", text), "Send response",
    () => api(`/v1/complaints/${encodeURIComponent(c.complaint_id)}/respond`, { method: "POST", body: { text: text.value } }));
}

function resolve(c) {
  const text = h("textarea", { id: "resolution-text", required: true, maxlength: 2000, rows: 3 });
  const kind = h("select", { id: "remedy-kind" }, ...REMEDIES.map((r) => h("option", { value: r }, label(r))));
  const amount = h("input", { id: "remedy-amount", type: "number", min: 1, step: 1, placeholder: "minor units; empty: all paid" });
  const currency = h("input", { id: "remedy-currency", value: "EUR", maxlength: 3, pattern: "[A-Z]{3}" });
  // One key per dialog: pressing Propose again after a lost answer proposes nothing twice.
  const key = `resolve-${Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("")}`;
  const before = takenOff(c).map((t) => h("p", { class: "flagged", "data-taken-off": t.revision },
    `The customer took ${money(t.amount, t.currency)} off the receipt before signing: ${itemsTakenOff(t.items)}. They were not charged for it: do not refund it again.`));
  dialog(`Remedy for complaint ${c.complaint_id}`,
    [...before, ...field("resolution-text", "Resolution proposed to the customer", text), ...field("remedy-kind", "Remedy", kind),
      ...field("remedy-amount", "Amount (refund or coupon, minor units)", amount), ...field("remedy-currency", "Currency", currency)],
    "Propose",
    () => {
      const remedy = { kind: kind.value };
      if (amount.value) remedy.amount = Number(amount.value);
      if (kind.value === "coupon") remedy.currency = currency.value;
      return api(`/v1/complaints/${encodeURIComponent(c.complaint_id)}/resolution`, { method: "POST", headers: { "Idempotency-Key": key }, body: { text: text.value, remedies: [remedy] } });
    });
}

function waive(f) {
  const reason = h("input", { id: "waive-reason", required: true, minlength: 3, maxlength: 500 });
  dialog(`Waive fee ${f.fee_id}`,
    [h("p", {}, `${money(f.amount, f.currency)} owed by ${f.customer_id} for cancelling booking ${f.booking_id} late: ${f.note || ""}`),
      ...field("waive-reason", "Why the customer need not pay (they are told)", reason)],
    "Waive",
    () => api(`/v1/cancellation-fees/${encodeURIComponent(f.fee_id)}/waive`, { method: "POST", body: { reason: reason.value } }));
}

// Money the card would not take back (or cash to hand back), given back by hand: how, and
// the transfer's or cash receipt's reference. Payments refuses it twice, or once the card's
// own money went back already.
function repaid(what, amount, path) {
  const way = h("select", { id: "repaid-way" }, ...[["bank_transfer", "By bank transfer"], ["cash", "In cash"], ["other", "Another way"]]
    .map(([value, text]) => h("option", { value }, text)));
  const reference = h("input", { id: "repaid-reference", required: true, minlength: 3, maxlength: 120 });
  dialog(`Record ${what} repaid`,
    [h("p", {}, `${amount} is still the customer's: record how it went back to them.`),
      ...field("repaid-way", "How", way), ...field("repaid-reference", "Reference (the transfer's, or the cash receipt's number)", reference)],
    "Record repaid",
    () => api(path, { method: "POST", body: { way: way.value, reference: reference.value } }));
}

// A remedy made twice: the customer keeps both (the platform bears it), or gave one back.
// Operations' words stay theirs; the complaint then leaves their board.
function dealtWith(c, r) {
  const how = h("input", { id: "dealt-with-how", required: true, minlength: 3, maxlength: 500 });
  dialog(`Deal with remedy ${r.remedy_id}`,
    [h("p", {}, `Complaint ${c.complaint_id} (booking ${c.booking_id}): ${label(r.kind)} made after another resolution answered it, so the customer has both.`),
      ...field("dealt-with-how", "What was done (seen by operations only)", how)],
    "Dealt with",
    () => api(`/v1/complaints/${encodeURIComponent(c.complaint_id)}/remedies/${encodeURIComponent(r.remedy_id)}/dealt-with`, { method: "POST", body: { how: how.value } }));
}

function writeOff(u) {
  const reason = h("input", { id: "write-off-reason", required: true, minlength: 3, maxlength: 500 });
  dialog(`Write off receipt ${u.receipt_id}`,
    [h("p", {}, `${money(u.amount, u.currency)} still due for booking ${u.booking_id} (${u.reminders || 0} reminders sent). Writing it off stops the reminders and closes the booking unpaid.`),
      ...field("write-off-reason", "Why the platform gives this money up (seen by operations only)", reason)],
    "Write off",
    () => api(`/v1/receipts/${encodeURIComponent(u.receipt_id)}/write-off`, { method: "POST", body: { reason: reason.value } }));
}

function reopen(u) {
  const reason = h("input", { id: "reopen-reason", required: true, minlength: 3, maxlength: 500 });
  dialog(`Reopen receipt ${u.receipt_id}`,
    [h("p", {}, `${money(u.amount, u.currency)} written off for booking ${u.booking_id}: ${u.write_off_reason || ""}. Reopening makes it due again, to be paid the way it was to be (${u.way === "cash" ? "the technician records the cash" : "the customer pays in the app"}); they are told. The booking stays closed.`),
      ...field("reopen-reason", "Why the money is due again (seen by operations only)", reason)],
    "Reopen",
    () => api(`/v1/receipts/${encodeURIComponent(u.receipt_id)}/reopen`, { method: "POST", body: { reason: reason.value } }));
}

function recordCall(c) {
  const outcome = h("select", { id: "call-outcome" }, ...[["reached", "Reached"], ["no_answer", "No answer: try again tomorrow"], ["declined", "Did not want to talk"]]
    .map(([value, text]) => h("option", { value }, text)));
  const note = h("input", { id: "call-note", maxlength: 2000 });
  const before = c.calls.map((k) => `${label(k.outcome)}${k.note ? `: ${k.note}` : ""}`).join("; ");
  dialog(`Call ${c.customer_name}`,
    [h("p", {}, `${c.phone} (speaks ${c.preferred_language}), about ${c.services.join(", ")}, booking ${c.booking_id}.${before ? ` Tried before: ${before}.` : ""}`),
      ...field("call-outcome", "How it went", outcome), ...field("call-note", "Note (seen by operations only)", note)],
    "Record call",
    async () => {
      const res = await api(`/v1/follow-ups/${encodeURIComponent(c.follow_up_id)}/calls`, { method: "POST", body: { outcome: outcome.value, note: note.value, version: c.version } });
      if (res.ok) loadCalls();
      return res;
    });
}

// -------------------------------------------------------------------- start --
function start() {
  $("signin-view").hidden = true; $("board-view").hidden = false; $("signout").hidden = false;
  $("connection").textContent = "Connecting…";
  listen();
}

if (tokens()) start();
