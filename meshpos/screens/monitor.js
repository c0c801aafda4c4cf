// The monitor dashboard (docs/screens.md): this terminal's peers, documents, drawers, the day's
// figures and its event log, from the local API of the terminal that serves the page - polled
// once a second, events followed live on the events WebSocket.  Plain DOM, no framework: every
// value a peer or a UI wrote is put in as text (textContent), never as HTML.
'use strict';

const POLL_MS = 1000;
const DAY_POLL_MS = 5000;
const EVENTS_SHOWN = 50;
const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function td(text, className) { return el('td', text, className); }

function fill(tbody, rows) { tbody.replaceChildren(...rows); }

function money(cents) { return (cents / 100).toFixed(2); }

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function ago(iso) {
  if (!iso) return 'never';
  return `${duration(Math.max(0, (Date.now() - Date.parse(iso)) / 1000))} ago`;
}

async function get(path) {
  const response = await fetch(path, { headers: { Accept: 'application/json' } });
  const body = await response.json();
  if (!response.ok) throw new Error(`${path}: ${body.message || response.status}`);
  return body;
}

function banner(message) {
  $('banner').textContent = message || '';
  $('banner').classList.toggle('shown', Boolean(message));
}

// -- sections -------------------------------------------------------------------------------------

function showHeader(status, stats) {
  $('terminal').textContent = `${status.terminal_id} (${status.type})`;
  document.title = `${status.terminal_id} - meshpos monitor`;
  $('day').textContent = status.business_day;
  $('uptime').textContent = duration(status.uptime_seconds);
  $('links').textContent = status.mesh ? String(stats.total_connections) : 'not enrolled';
  $('throughput').textContent = stats.message_throughput.toFixed(1);
  const hq = status.hq;
  $('hq').textContent = !hq.configured ? 'none'
    : `${hq.linked ? 'linked' : 'not linked'}, ${hq.pending_updates ?? 0} changes to send`;
}

function peerRow(peer, whyNot) {
  const tr = document.createElement('tr');
  const name = peer.terminal_id || peer.address;
  tr.dataset.peer = name;
  tr.className = peer.online ? 'online' : 'offline';
  const who = td(null);
  who.append(el('span', null, 'dot'), el('span', name));
  const why = whyNot.get(peer.terminal_id) || (peer.last_error && peer.last_error.reason);
  const state = peer.online ? `online since ${ago(peer.connected_since)}`
    : peer.through ? `not linked; reached through ${peer.through}`
      : `offline${why ? `: ${why}` : ''}`;
  tr.append(
    who,
    td(peer.type || '', 'dim wide'),
    td(peer.online && peer.rtt_ms != null ? peer.rtt_ms.toFixed(1) : '-', 'num'),
    td(`${size(peer.bytes_in || 0)} / ${size(peer.bytes_out || 0)}`, 'num wide'),
    td(`${peer.updates_in || 0} / ${peer.updates_out || 0}`, 'num wide'),
    td(state, peer.online ? 'state' : 'state bad'),
  );
  return tr;
}

function showPeers(mesh) {
  const tbody = $('peers').tBodies[0];
  if (!mesh) {
    const tr = document.createElement('tr');
    const cell = td('This terminal is not enrolled in a store: it has no peers.', 'dim');
    cell.colSpan = 6;
    tr.append(cell);
    fill(tbody, [tr]);
    return;
  }
  // what mDNS discovery says of a terminal it sees but this one is not linked to
  const whyNot = new Map(mesh.discovery.seen.filter((s) => s.why_not_linked).map((s) => [s.terminal_id, s.why_not_linked]));
  fill(tbody, mesh.peers.map((peer) => peerRow(peer, whyNot)));
}

function showDocuments(documents) {
  fill($('documents').tBodies[0], Object.entries(documents).map(([name, d]) => {
    const tr = document.createElement('tr');
    tr.dataset.document = name;
    tr.append(td(name + (d.read_only ? ' (archived)' : '')), td(size(d.bytes), 'num'),
      td(d.pending_updates, 'num wide'), td(ago(d.last_peer_update_at), 'dim'),
      td(d.malformed.count, d.malformed.count ? 'num bad' : 'num'));
    return tr;
  }));
}

// One cell: a document against a peer (GET /api/v1/peers, `documents`).
function syncCell(peer, state) {
  if (!state) return td('-', 'dim');
  if (peer.online) {
    const apart = state.they_lacked + state.we_lacked;
    return apart ? td(`live; last check: ${state.they_lacked} sent, ${state.we_lacked} received`, 'warn')
      : td('live, in sync', 'ok');
  }
  const behind = state.changed_since;
  return behind ? td(`offline; lacks ${behind} change${behind === 1 ? '' : 's'}`, 'bad') : td('offline; up to date', 'dim');
}

function showSync(mesh, documents) {
  const peers = mesh ? mesh.peers.filter((p) => p.terminal_id && p.documents) : [];
  const head = $('sync').tHead.rows[0];
  head.replaceChildren(el('th', 'document'), ...peers.map((p) => el('th', p.terminal_id)));
  fill($('sync').tBodies[0], Object.keys(documents).map((name) => {
    const tr = document.createElement('tr');
    tr.dataset.document = name;
    tr.append(td(name));
    for (const peer of peers) {
      const cell = syncCell(peer, peer.documents[name]);
      cell.dataset.peer = peer.terminal_id;
      tr.append(cell);
    }
    return tr;
  }));
}

function showDrawers(drawers, reviews) {
  const rows = drawers.map((d) => {
    const tr = document.createElement('tr');
    tr.dataset.drawer = d.drawer;
    tr.append(td(d.drawer), td(d.state), td(money(d.expected_cash_cents), 'num'),
      td(d.holder || '-', 'dim'), td(`${d.voters.reachable} of ${d.voters.total}`,
        d.voters.reachable < d.voters.majority ? 'num bad' : 'num'),
      td(d.open_reviews, d.open_reviews ? 'num warn' : 'num'),
      td(d.provisional_pending, d.provisional_pending ? 'num warn' : 'num'));
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement('tr');
    const cell = td('No drawer has been opened.', 'dim');
    cell.colSpan = 7;
    tr.append(cell);
    rows.push(tr);
  }
  fill($('drawers').tBodies[0], rows);
  $('reviews').textContent = reviews.length
    ? `${reviews.length} ledger ${reviews.length === 1 ? 'entry waits' : 'entries wait'} for a person's review.`
    : 'Nothing waits for review.';
}

function figure(label, value) {
  const box = el('div', null, 'figure');
  box.dataset.figure = label;
  box.append(el('div', value, 'value'), el('div', label, 'label'));
  return box;
}

function showDay(orders, drawers) {
  const byStatus = {};
  let voids = 0;
  let total = 0;
  for (const order of orders) {
    byStatus[order.status] = (byStatus[order.status] || 0) + 1;
    voids += order.items.filter((item) => item.voided).length;
    if (order.status !== 'cancelled') total += order.total_cents;
  }
  const methods = {};
  for (const d of drawers) {
    for (const [method, cents] of Object.entries(d.totals_by_method)) methods[method] = (methods[method] || 0) + cents;
  }
  const open = orders.length - (byStatus.paid || 0) - (byStatus.closed || 0) - (byStatus.cancelled || 0);
  $('figures').replaceChildren(
    figure('orders', orders.length), figure('open orders', open), figure('ordered', money(total)),
    figure('voided items', voids), figure('cancelled', byStatus.cancelled || 0),
    ...Object.entries(methods).map(([method, cents]) => figure(`taken: ${method}`, money(cents))),
  );
}

// -- polling and the event log ------------------------------------------------------------------

let lastCursor = null;
let drawersSeen = [];  // the last poll's drawers: the day's figures read their totals

async function poll() {
  try {
    const [status, stats] = await Promise.all([get('/api/v1/status'), get('/api/v1/stats')]);
    showHeader(status, stats);
    showPeers(status.mesh);
    showDocuments(status.documents);
    showSync(status.mesh, status.documents);
    if (lastCursor === null) {
      lastCursor = Math.max(0, status.last_event_cursor - EVENTS_SHOWN);
      follow();
    }
    banner(null);
  } catch (error) {
    banner(`Cannot read this terminal's status: ${error.message}`);
  }
  try {
    drawersSeen = await get('/api/v1/cashier/drawers');
    showDrawers(drawersSeen, await get('/api/v1/review'));
  } catch (error) {
    $('reviews').textContent = `Drawers: ${error.message}`;
  }
}

async function pollDay() {
  try {
    showDay(await get('/api/v1/orders'), drawersSeen);
  } catch (error) {
    $('figures').replaceChildren(el('p', `Cannot read today's orders: ${error.message}`, 'bad'));
  }
}

function describe(event) {
  const parts = [event.at ? event.at.slice(11, 19) : '', event.type];
  for (const key of ['terminal_id', 'order_id', 'drawer', 'sku', 'table_id', 'code', 'reason']) {
    if (event[key] !== undefined && event[key] !== null) parts.push(`${key}=${event[key]}`);
  }
  if (event.order && event.order.status) parts.push(`status=${event.order.status}`);
  return parts.join(' ');
}

function follow() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/events?cursor=${lastCursor}`);
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === 'reset') {
      lastCursor = event.cursor;
      return;
    }
    lastCursor = event.cursor;
    const list = $('events');
    const item = el('li', describe(event));
    item.dataset.type = event.type;
    list.prepend(item);
    while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
  };
  socket.onclose = () => setTimeout(follow, POLL_MS);  // the terminal restarted, or the network blinked
}

poll().then(pollDay);  // the day's figures want the first poll's drawers
setInterval(poll, POLL_MS);
setInterval(pollDay, DAY_POLL_MS);
