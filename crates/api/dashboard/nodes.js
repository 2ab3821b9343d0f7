// #/nodes: the cluster's nodes (admin: GET /nodes with X-Admin-Token) with their status and
// load, and the registry's recent events (GET /nodes/events), refreshed every 5 s.

import { api, session } from './api.js'
import { ago, badge, bytes, every, fill, h, table, time } from './ui.js'

export async function render(view, { signal }) {
  if (!session.admin) {
    fill(
      view,
      h('h1', {}, 'Nodes'),
      h(
        'div',
        { class: 'card', id: 'nodes-message' },
        h('p', {}, 'The nodes page needs the admin token (the API’s X-Admin-Token): sign out and sign in with it.'),
        h('p', { class: 'muted' }, '`paddock api` keeps it in <data-dir>/admin-token; `paddock serve` has one only when started with --admin-token (or PADDOCK_ADMIN_TOKEN).'),
      ),
    )
    return
  }
  const list = h('div', { id: 'node-list' }, h('p', { class: 'muted' }, 'Loading…'))
  const events = h('div', { id: 'node-events' })
  fill(view, h('h1', {}, 'Nodes'), h('div', { class: 'card' }, list), h('div', { class: 'card' }, h('h2', {}, 'Recent node events'), events))
  every(5000, signal, async () => {
    const [nodes, history] = await Promise.all([api('/nodes', { admin: true, signal }), api('/nodes/events?limit=20', { admin: true, signal })])
    fill(
      list,
      table(
        ['Node', 'Status', 'Sandboxes', 'CPU', 'Memory', 'Allocated', 'Creates', 'Version'],
        nodes.map((n) => {
          const m = n.metrics ?? {}
          const mem = m.memoryTotalBytes ? m.memoryUsedBytes / m.memoryTotalBytes : 0
          return h(
            'tr',
            { 'data-node': n.id },
            h('td', {}, h('span', { class: 'mono' }, n.id), h('div', { class: 'muted' }, n.clusterID)),
            h('td', { title: `since ${time(n.statusChangedAt)}` }, badge(n.status)),
            h('td', {}, `${n.sandboxCount} (+${n.sandboxStartingCount ?? 0} starting)`),
            h('td', {}, meter(m.cpuPercent / 100), `${m.cpuPercent ?? 0}% of ${m.cpuCount ?? 0}`),
            h('td', {}, meter(mem), `${bytes(m.memoryUsedBytes)} / ${bytes(m.memoryTotalBytes)}`),
            h('td', {}, `${m.allocatedCPU ?? 0} CPU, ${bytes(m.allocatedMemoryBytes)}`),
            h('td', {}, `${n.createSuccesses} ok, ${n.createFails} failed`),
            h('td', { class: 'mono' }, n.version),
          )
        }),
        'No node has joined this control plane (`paddock serve` runs its node inside the server, outside the cluster registry).',
      ),
    )
    fill(
      events,
      table(
        ['When', 'Node', 'Event', 'Status'],
        history.map((e) => [h('span', { title: time(e.timestamp) }, ago(e.timestamp)), h('span', { class: 'mono' }, e.nodeID), e.type, badge(e.status)]),
        'No node events in the last 7 days.',
      ),
    )
  })
}

function meter(fraction) {
  const bar = h('div', { class: 'bar' }, h('i'))
  // A CSSOM width (not a style attribute, which the CSP refuses).
  bar.firstChild.style.width = `${Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100)}%`
  return bar
}
