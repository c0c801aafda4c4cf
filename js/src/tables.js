// The floor plan (/tables, docs/screens.md): every table with its status, waiter, guests and
// merges, live from the terminal's `tables` document over the Yjs route (read only).  A table
// whose registers break docs/documents.md is left out and counted, as the terminal does.
import { bind, banner, el, getJson } from './binding.js'

const STATUSES = ['free', 'occupied', 'reserved', 'cleaning']
const $ = id => document.getElementById(id)

function tableViews (doc) {
  const maps = {}
  for (const root of ['tables', 'table_status', 'table_waiter', 'table_guests', 'table_merge']) {
    maps[root] = doc.getMap(root)
  }
  const views = []
  let skipped = 0
  for (const [id, layout] of maps.tables.entries()) {
    const status = maps.table_status.get(id)?.status ?? 'free'
    const seats = layout?.seats
    if (typeof layout?.name !== 'string' || !Number.isInteger(seats) || !STATUSES.includes(status)) {
      skipped++
      continue
    }
    views.push({
      id, name: layout.name, seats, area: layout.area ?? '', status,
      waiter: maps.table_waiter.get(id)?.waiter ?? null,
      guests: maps.table_guests.get(id)?.guests ?? 0,
      merged_into: maps.table_merge.get(id)?.into ?? null
    })
  }
  return { views, skipped }
}

function card (view, group) {
  const node = el('article', null, `table ${view.status}`)
  node.dataset.tableId = view.id
  node.append(el('b', view.name), el('span', view.status, 'status'))
  node.append(el('div', `${view.guests}/${view.seats} guests`, 'dim'))
  if (view.waiter) node.append(el('div', view.waiter))
  if (view.merged_into) node.append(el('div', `merged into ${view.merged_into}`, 'warn'))
  else if (group.length) node.append(el('div', `with ${group.join(', ')}`, 'dim'))
  return node
}

function render (doc) {
  const { views, skipped } = tableViews(doc)
  const areas = new Map()
  for (const v of views.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (!areas.has(v.area)) areas.set(v.area, [])
    areas.get(v.area).push(v)
  }
  const sections = [...areas.entries()].sort().map(([area, list]) => {
    const section = el('section')
    section.append(el('h2', area || 'tables'))
    const grid = el('div', null, 'floor')
    grid.append(...list.map(v => card(v, views.filter(o => o.merged_into === v.id).map(o => o.name))))
    section.append(grid)
    return section
  })
  $('areas').replaceChildren(...sections)
  const counts = STATUSES.map(s => `${views.filter(v => v.status === s).length} ${s}`)
  $('summary').textContent = counts.join(' · ') + (skipped ? ` · ${skipped} unreadable` : '')
  document.body.dataset.rendered = String(views.length)
}

async function start () {
  const status = await getJson('/api/v1/status')
  $('terminal').textContent = `${status.terminal_id} floor`
  bind('tables', {
    client: new URLSearchParams(location.search).get('client') || 'floor',
    render,
    refused: reason => banner(`The terminal refused a change: ${reason}`),
    status: s => { $('link').textContent = s }
  })
}

start().catch(err => banner(err.message))
