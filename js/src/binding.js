// One Y.Doc bound to one of this terminal's documents over its Yjs route (docs/api.md, "Yjs
// route"), with what a screen needs around y-websocket's provider: renders coalesced to one per
// frame, and a refused write handled - the terminal closes with 4006/4008/4010/4011 and the
// reason, our copy then holds a change it refused, so the copy is dropped and a fresh one bound.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

export const REFUSED = [4006, 4008, 4010, 4011]

export function yjsBase () {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/yjs`
}

// bind('orders/2026-12-07', { client, render(doc), refused(reason), status(text) })
export function bind (name, { client, render, refused, status }) {
  let current = null
  let scheduled = false
  const schedule = () => {
    if (scheduled) return
    scheduled = true
    requestAnimationFrame(() => {
      scheduled = false
      if (current.provider.synced) render(current.doc)
    })
  }
  const start = () => {
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(yjsBase(), name, doc, { params: { client }, disableBc: true })
    current = { doc, provider }
    provider.on('sync', synced => { if (synced) schedule() })
    provider.on('status', ({ status: s }) => status?.(s))
    doc.on('update', schedule)
    provider.on('connection-close', event => {
      if (event && REFUSED.includes(event.code)) {
        provider.destroy()
        doc.destroy()
        refused?.(event.reason || `refused (${event.code})`)
        start()
      }
    })
  }
  start()
  return {
    get doc () { return current.doc },
    get provider () { return current.provider },
    destroy () { current.provider.destroy(); current.doc.destroy() }
  }
}

export function el (tag, text, className) {
  const node = document.createElement(tag)
  if (text !== undefined && text !== null) node.textContent = String(text)
  if (className) node.className = className
  return node
}

export async function getJson (path) {
  const response = await fetch(path, { headers: { Accept: 'application/json' } })
  const body = await response.json()
  if (!response.ok) throw new Error(`${path}: ${body.message || response.status}`)
  return body
}

export function banner (message) {
  const node = document.getElementById('banner')
  node.textContent = message || ''
  node.classList.toggle('shown', Boolean(message))
}
