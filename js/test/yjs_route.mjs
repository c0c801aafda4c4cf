// A stock Yjs client (yjs + y-websocket's WebsocketProvider on the `ws` package) against a
// terminal's Yjs route, driven by tests/test_yjs_node.py.  Prints one JSON object of what it saw;
// the Python test asserts on it.
//
//   node js/test/yjs_route.mjs <api base url> <order id> <item id>
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [base, orderId, itemId] = process.argv.slice(2)
const day = `${orderId.slice(0, 4)}-${orderId.slice(4, 6)}-${orderId.slice(6, 8)}`
const room = `orders/${day}`
const wsBase = base.replace(/^http/, 'ws') + '/api/v1/yjs'
const out = {}

const within = (ms, what, check) => new Promise((resolve, reject) => {
  const started = Date.now()
  const poll = async () => {
    try {
      const value = await check()
      if (value) return resolve(value)
    } catch (err) { return reject(err) }
    if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`))
    setTimeout(poll, 20)
  }
  poll()
})

const bind = (client, doc = new Y.Doc()) => {
  const provider = new WebsocketProvider(wsBase, room, doc, {
    WebSocketPolyfill: WebSocket, params: { client }, disableBc: true
  })
  return { doc, provider, orders: doc.getMap('orders') }
}

const api = async (path, init) => {
  const resp = await fetch(base + path, init)
  return { status: resp.status, body: await resp.json() }
}

// 1. sync: the order the API wrote is in the client's document, as docs/documents.md lays it out
const kds = bind('node-kds')
await within(10000, 'sync', () => kds.provider.synced)
const order = kds.orders.get(orderId)
out.synced = true
out.record = JSON.parse(order.get('order'))

// 2. a kitchen bump made in the client's document is stored by the terminal
kds.doc.transact(() => { order.set(`kitchen:${itemId}:ready`, new Date().toISOString()) })
out.bumped = (await within(10000, 'the bump', async () => {
  const got = await api(`/api/v1/orders/${orderId}`)
  return got.body.items[0].kitchen_status === 'ready' && got.body
})).items[0].kitchen_status

// 3. an order created through the API arrives live
const created = await api('/api/v1/orders', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ table: 'T7', items: [{ sku: 'soup', name: 'Soup', qty: 1, unit_price_cents: 700 }] })
})
out.liveOrder = await within(10000, 'the live order', () => kds.orders.has(created.body.id) && created.body.id)

// 4. awareness: who looks at which ticket reaches the other client, and leaves with its client
const pos = bind('node-pos')
await within(10000, 'second sync', () => pos.provider.synced)
kds.provider.awareness.setLocalStateField('looking_at', orderId)
out.awareness = await within(10000, 'awareness', () => {
  const state = pos.provider.awareness.getStates().get(kds.doc.clientID)
  return state && state.looking_at
})
const kdsClient = kds.doc.clientID
kds.provider.destroy()
out.awarenessGone = await within(10000, 'awareness removal',
  () => !pos.provider.awareness.getStates().has(kdsClient))

// 5. a refused write: the connection closes with the table's code, nothing changes
const bad = bind('node-bad')
await within(10000, 'third sync', () => bad.provider.synced)
const closed = new Promise((resolve) => bad.provider.on('connection-close', (event) => {
  bad.provider.shouldConnect = false // the doc holds a refused change: never send it again
  resolve(event)
}))
bad.doc.transact(() => { bad.orders.get(orderId).set(`kitchen:${itemId}:queued`, new Date().toISOString()) })
const event = await closed
out.refused = { code: event.code, reason: event.reason.toString() }
out.afterRefusal = (await api(`/api/v1/orders/${orderId}`)).body.items[0].kitchen_status
bad.provider.destroy()

// 6. the other client was served all along: it holds the bump and not the refused change
out.posSawBump = pos.orders.get(orderId).has(`kitchen:${itemId}:ready`)
out.posSawRefused = pos.orders.get(orderId).has(`kitchen:${itemId}:queued`)
pos.provider.destroy()

console.log(JSON.stringify(out))
process.exit(0)
