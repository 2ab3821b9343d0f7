// #/sandboxes: the team's running and paused sandboxes, kept live by the team's lifecycle
// event stream (GET /events/sandboxes as SSE): every event reloads the list, and the newest
// events are shown beside it.

import { api, follow } from './api.js'
import { ago, badge, fill, h, report, table, time } from './ui.js'

export async function render(view, { signal }) {
  const list = h('div', { id: 'sandbox-list' }, h('p', { class: 'muted' }, 'Loading…'))
  const feed = h('ul', { class: 'feed', id: 'event-feed' })
  const live = h('span', { class: 'badge', id: 'live' }, 'connecting')
  fill(
    view,
    h('h1', {}, 'Sandboxes', live),
    h('div', { class: 'card' }, list),
    h('div', { class: 'card' }, h('h2', {}, 'Lifecycle events (live)'), feed, h('p', { class: 'muted', id: 'feed-empty' }, 'Events appear here as they happen.')),
  )

  let loading = null
  let again = false
  const load = async () => {
    // One load at a time; events during a load ask for one more afterwards.
    if (loading) {
      again = true
      return
    }
    loading = (async () => {
      do {
        again = false
        try {
          const rows = await api('/v2/sandboxes?limit=100', { signal })
          fill(list, sandboxTable(rows))
        } catch (err) {
          report(err)
        }
      } while (again && !signal.aborted)
    })()
    await loading
    loading = null
  }

  // Subscribe first, then list: an event between the two still reloads the list.
  follow('/events/sandboxes', {
    signal,
    onOpen: () => {
      fill(live, 'live').className = 'badge running'
      load()
    },
    onError: (err) => {
      fill(live, 'reconnecting').className = 'badge paused'
      report(err)
    },
    onEvent: ({ data }) => {
      document.getElementById('feed-empty')?.remove()
      const type = String(data.type ?? '').replace('sandbox.lifecycle.', '')
      feed.prepend(
        h(
          'li',
          {},
          badge(type),
          h('a', { href: `#/sandboxes/${data.sandboxId}`, class: 'mono' }, data.sandboxId),
          h('span', { class: 'muted' }, data.sandboxTemplateId ?? ''),
          h('span', { class: 'muted' }, time(data.timestamp)),
        ),
      )
      while (feed.children.length > 50) feed.lastChild.remove()
      load()
    },
  })
}

function sandboxTable(rows) {
  rows.sort((a, b) => String(b.startedAt).localeCompare(String(a.startedAt)))
  return table(
    ['Sandbox', 'Template', 'State', 'Started', 'Ends', 'CPU', 'Memory', 'Metadata'],
    rows.map((s) =>
      h(
        'tr',
        { 'data-sandbox': s.sandboxID },
        h('td', {}, h('a', { href: `#/sandboxes/${s.sandboxID}`, class: 'mono' }, s.sandboxID)),
        h('td', {}, s.alias ?? s.templateID),
        h('td', {}, badge(s.state)),
        h('td', { title: time(s.startedAt) }, ago(s.startedAt)),
        h('td', { title: time(s.endAt) }, ago(s.endAt)),
        h('td', {}, String(s.cpuCount)),
        h('td', {}, `${s.memoryMB} MiB`),
        h('td', { class: 'mono' }, Object.entries(s.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(' ')),
      ),
    ),
    'No running or paused sandboxes.',
  )
}
