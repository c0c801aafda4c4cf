// The kitchen display (/kds, docs/screens.md): the day's tickets for one station, live from the
// terminal's orders document over the Yjs route.  Tap an item to move it to its next kitchen
// stage; "Bump" moves the station's items of the ticket to ready, then (tapped again) to served,
// which takes the ticket off the screen.  Every value is put in as text, never as HTML.
import { bind, banner, el, getJson } from './binding.js'
import { nextKitchenStage, orderViews, setKitchenStatus } from './orders.js'

const params = new URLSearchParams(location.search)
const station = params.get('station') || ''
const client = params.get('client') || 'kds'
// Minutes after which a ticket turns amber, then red.
const WARN_MIN = Number(params.get('warn') || 8)
const LATE_MIN = Number(params.get('late') || 15)
const LIVE = new Set(['open', 'sent', 'preparing', 'ready'])
const $ = id => document.getElementById(id)

let orders = null
let inventory = null
let day = null

function minutesSince (iso) {
  return Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 60000))
}

function forStation (item) {
  return !item.voided && item.kitchen_status !== 'served' && (!station || item.station === station)
}

function write (change) {
  try {
    orders.doc.transact(change)
  } catch (err) {
    banner(err.message)
  }
}

function bumpItem (orderId, item) {
  const stage = nextKitchenStage(item.kitchen_status)
  if (stage) write(() => setKitchenStatus(orders.doc.getMap('orders'), orderId, item.id, stage))
}

function bumpTicket (view) {
  const items = view.items.filter(forStation)
  const stage = items.every(i => i.kitchen_status === 'ready') ? 'served' : 'ready'
  write(() => {
    for (const item of items) {
      if (item.kitchen_status !== stage) setKitchenStatus(orders.doc.getMap('orders'), view.id, item.id, stage)
    }
  })
}

function ticket (view) {
  const items = view.items.filter(forStation)
  const since = view.stages.sent || view.created_at
  const age = minutesSince(since)
  const node = el('article', null, `ticket ${age >= LATE_MIN ? 'age-late' : age >= WARN_MIN ? 'age-warn' : 'age-ok'}`)
  node.dataset.orderId = view.id
  const head = el('header')
  head.append(el('b', view.table ? `Table ${view.table}` : 'Counter'), el('span', `${age} min`, 'age'))
  const sub = el('div', [view.waiter, view.status, view.id.slice(-5)].filter(Boolean).join(' · '), 'dim')
  const list = el('ol')
  for (const item of items) {
    const li = el('li', null, `item k-${item.kitchen_status}`)
    li.dataset.itemId = item.id
    const button = el('button', null)
    button.type = 'button'
    button.append(el('span', `${item.qty}×`, 'qty'), el('span', item.name, 'name'),
      el('span', item.kitchen_status, 'stage'))
    const extra = [...item.modifiers.map(m => m.name), item.notes].filter(Boolean).join(', ')
    if (extra) button.append(el('small', extra))
    button.addEventListener('click', () => bumpItem(view.id, item))
    li.append(button)
    list.append(li)
  }
  const bump = el('button', items.every(i => i.kitchen_status === 'ready') ? 'Served' : 'Bump', 'bump')
  bump.type = 'button'
  bump.addEventListener('click', () => bumpTicket(view))
  if (view.notes) node.append(head, sub, el('p', view.notes, 'notes'), list, bump)
  else node.append(head, sub, list, bump)
  return node
}

function render () {
  const { views, skipped } = orderViews(orders.doc.getMap('orders'))
  const live = views
    .filter(v => LIVE.has(v.status) && v.items.some(forStation))
    .sort((a, b) => (a.created_at < b.created_at ? -1 : 1))
  $('tickets').replaceChildren(...live.map(ticket))
  $('count').textContent = String(live.length)
  $('skipped').textContent = skipped ? `${skipped} unreadable order(s) left out` : ''
  const stations = new Set()
  for (const v of views) for (const i of v.items) if (i.station) stations.add(i.station)
  const nav = $('stations')
  nav.replaceChildren(...['', ...[...stations].sort()].map(s => {
    const a = el('a', s || 'all', s === station ? 'current' : '')
    a.href = s ? `?station=${encodeURIComponent(s)}` : '?'
    return a
  }))
  document.body.dataset.rendered = String(live.length)
  // the last renders and when (ms since the page began loading): simulations/bench_screens.py
  const log = window.meshposKds.renders_log
  log.push({ tickets: live.length, at: performance.now() })
  if (log.length > 20) log.shift()
}

function render86 () {
  const out = []
  const catalog = inventory.doc.getMap('catalog')
  for (const [sku, flag] of inventory.doc.getMap('stock_86').entries()) {
    if (flag && flag.out === true) out.push(catalog.get(sku)?.name || sku)
  }
  $('eightysix').textContent = out.length ? `86: ${out.sort().join(', ')}` : ''
}

async function start () {
  const status = await getJson('/api/v1/status')
  day = status.business_day
  $('terminal').textContent = `${status.terminal_id} kitchen`
  $('station').textContent = station || 'all stations'
  document.title = `${station || 'kitchen'} - ${status.terminal_id}`
  const refused = reason => banner(`The terminal refused a change: ${reason}`)
  orders = bind(`orders/${day}`, {
    client, render, refused, status: s => { $('link').textContent = s }
  })
  inventory = bind('inventory', { client, render: render86, refused })
  window.meshposKds.orders = orders
  setInterval(() => { if (orders.provider.synced) render() }, 15000) // ages move on
  setInterval(async () => { // the business day rolls over: follow the new day's document
    const now = await getJson('/api/v1/status').catch(() => null)
    if (now && now.business_day !== day) location.reload()
  }, 60000)
}

window.meshposKds = { renders_log: [] }
start().catch(err => banner(err.message))
