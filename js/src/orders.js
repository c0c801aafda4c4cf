// Reading and changing orders in an `orders/<day>` Y.Doc, as docs/documents.md lays them out
// (the same functions as its "JS: reading an order" and "JS: changing an order" snippets).  The
// screens use these; a value a peer wrote may break the layout, so a reader that throws on one
// order leaves that order out and keeps the others (the terminal does the same).

export const RANK = ['open', 'sent', 'preparing', 'ready', 'served', 'cancelled', 'paid', 'closed']
export const KITCHEN_RANK = ['queued', 'preparing', 'ready', 'served']
const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0)

export const furthest = (stages, rank) =>
  stages.filter(s => rank.includes(s)).reduce((a, b) => (rank.indexOf(b) > rank.indexOf(a) ? b : a))

// The order's entries grouped by kind, JSON text decoded (OrdersDoc._facts).
export function orderFacts (order) {
  const f = { record: null, items: new Map(), stages: {}, kitchen: {}, void: {}, fields: {} }
  for (const [key, value] of order.entries()) {
    const colon = key.indexOf(':')
    const kind = colon < 0 ? key : key.slice(0, colon)
    const rest = colon < 0 ? '' : key.slice(colon + 1)
    if (kind === 'order') {
      f.record = JSON.parse(value)
      for (const item of f.record.items ?? []) f.items.set(item.id, item)
    } else if (kind === 'items') {
      for (const item of JSON.parse(value)) f.items.set(item.id, item)
    } else if (kind === 'stage') {
      f.stages[rest] = JSON.parse(value)
    } else if (kind === 'kitchen') {
      const at = rest.lastIndexOf(':')
      ;(f.kitchen[rest.slice(0, at)] ??= {})[rest.slice(at + 1)] = value
    } else if (kind === 'void') {
      f.void[rest] = JSON.parse(value)
    } else if (kind === 'table' || kind === 'waiter' || kind === 'notes') {
      f.fields[kind] = value
    }
  }
  if (f.record === null) throw new Error('the order map has no "order" record')
  return f
}

// The same JSON as the terminal's view of an order (OrdersDoc.view, GET /api/v1/orders/{id}).
export function orderView (orderId, order) {
  const f = orderFacts(order)
  const r = f.record
  const stages = { open: { at: r.created_at, by: r.created_by }, ...f.stages }
  const status = furthest(Object.keys(stages), RANK)
  const items = [...f.items.values()]
    .sort((a, b) => cmp(a.added_at, b.added_at) || cmp(a.id, b.id))
    .map(it => {
      const kitchen = { queued: it.added_at, ...f.kitchen[it.id] }
      const v = f.void[it.id] ?? null
      const unit = it.unit_price_cents + it.modifiers.reduce((sum, m) => sum + m.price_cents, 0)
      return {
        id: it.id, sku: it.sku, name: it.name, qty: it.qty, unit_price_cents: it.unit_price_cents,
        modifiers: it.modifiers.map(m => ({ name: m.name, price_cents: m.price_cents })),
        notes: it.notes ?? '', station: it.station ?? '',
        kitchen_status: furthest(Object.keys(kitchen), KITCHEN_RANK),
        kitchen_at: kitchen,
        voided: v !== null, void: v, added_at: it.added_at, added_by: it.added_by ?? null,
        total_cents: v !== null ? 0 : it.qty * unit
      }
    })
  const field = k => (k in f.fields ? f.fields[k] : r[k] ?? null)
  let cancellation = stages.cancelled ?? null
  if (cancellation !== null && status !== 'cancelled') cancellation = { ...cancellation, overridden_by: status }
  return {
    id: orderId, business_day: r.business_day, table: field('table'), waiter: field('waiter'),
    notes: field('notes') || '', status,
    stages: Object.fromEntries(Object.entries(stages).map(([s, v]) => [s, v.at])),
    cancellation, items, total_cents: items.reduce((sum, i) => sum + i.total_cents, 0),
    created_at: r.created_at, created_by: r.created_by
  }
}

// Every order of the document that reads; `skipped` counts the ones that do not.
export function orderViews (orders) {
  const views = []
  let skipped = 0
  for (const [id, order] of orders.entries()) {
    try {
      views.push(orderView(id, order))
    } catch {
      skipped++
    }
  }
  return { views, skipped }
}

// The kitchen stage after `current`, or null at the last one.
export function nextKitchenStage (current) {
  const i = KITCHEN_RANK.indexOf(current)
  return i >= 0 && i < KITCHEN_RANK.length - 1 ? KITCHEN_RANK[i + 1] : null
}

// Move an item's kitchen status to `stage` (the rules of OrdersDoc.set_kitchen_status; the
// terminal checks them again and closes the connection with 4011 if the document moved on).
export function setKitchenStatus (orders, orderId, itemId, stage, now = new Date().toISOString()) {
  const order = orders.get(orderId)
  const view = orderView(orderId, order)
  if (RANK.indexOf(view.status) >= RANK.indexOf('cancelled')) throw new Error(`order is ${view.status}`)
  const item = view.items.find(i => i.id === itemId)
  if (item === undefined) throw new Error(`item ${itemId} not found`)
  if (item.voided) throw new Error('item is voided')
  if (KITCHEN_RANK.indexOf(stage) <= KITCHEN_RANK.indexOf(item.kitchen_status)) {
    throw new Error(`item is ${item.kitchen_status}; kitchen status moves forward only`)
  }
  order.set(`kitchen:${itemId}:${stage}`, now)
}
