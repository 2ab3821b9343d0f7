// #/sandboxes/<id>: one sandbox: its state and lifecycle buttons (pause, resume, snapshot,
// kill), CPU/memory/disk charts (GET /sandboxes/{id}/metrics every 5 s), envd's logs
// (GET /v2/sandboxes/{id}/logs, followed by cursor), its lifecycle events (stored ones, then
// live over SSE) and a terminal: a login shell on a PTY through envd.

import { api, ApiError, dashboardConfig, follow } from './api.js'
import { lineChart } from './charts.js'
import { Envd } from './envd.js'
import { Terminal } from './terminal.js'
import { ago, badge, bytes, every, fill, h, report, time } from './ui.js'

// Kept on the page: older log lines and events are dropped.
const MAX_LOG_LINES = 2000
const MAX_EVENTS = 200

/** Seconds a resumed sandbox gets to live (the API's default would be 15). */
const RESUME_TIMEOUT = 300

export async function render(view, { signal, params: [id] }) {
  const title = h('h1', {}, 'Sandbox ', h('span', { class: 'mono' }, id))
  const facts = h('div', {}, h('p', { class: 'muted' }, 'Loading…'))
  const actions = h('div', { class: 'actions', id: 'actions' })
  const charts = { cpu: h('div'), mem: h('div'), disk: h('div') }
  const logs = h('pre', { class: 'logs', id: 'logs' })
  const feed = h('ul', { class: 'feed', id: 'sandbox-events' })
  const termBox = h('div', { id: 'terminal-box' }, h('p', { class: 'muted' }, 'The terminal opens while the sandbox runs.'))
  fill(
    view,
    title,
    h('div', { class: 'card' }, facts, actions),
    h(
      'div',
      { class: 'grid' },
      h('div', { class: 'card' }, h('h2', {}, 'CPU'), charts.cpu),
      h('div', { class: 'card' }, h('h2', {}, 'Memory'), charts.mem),
      h('div', { class: 'card' }, h('h2', {}, 'Disk'), charts.disk),
    ),
    h('div', { class: 'card' }, h('h2', {}, 'Terminal'), termBox),
    h('div', { class: 'grid' }, h('div', { class: 'card' }, h('h2', {}, 'envd logs'), logs), h('div', { class: 'card' }, h('h2', {}, 'Lifecycle events'), feed)),
  )

  let detail = null
  let terminal = null
  const refresh = async () => {
    try {
      detail = await api(`/sandboxes/${id}`, { signal })
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 404) throw err
      detail = { sandboxID: id, state: 'stopped', gone: true }
    }
    showFacts(facts, detail)
    showActions(actions, detail, id, refresh)
    if (detail.state === 'running' && !terminal) terminal = openTerminal(termBox, detail, signal, () => (terminal = null))
  }
  await refresh()

  every(5000, signal, async () => {
    if (detail?.gone) return
    const samples = await api(`/sandboxes/${id}/metrics`, { signal }).catch((err) => {
      if (err.status === 404) return [] // killed meanwhile: the events say so
      throw err
    })
    showCharts(charts, samples)
  })

  // The cursor is inclusive (milliseconds): the lines of the newest millisecond shown are asked
  // for again and skipped, so none of that millisecond is lost.
  let cursor = 0
  let shownAtCursor = new Set()
  every(3000, signal, async () => {
    const { logs: entries } = await api(`/v2/sandboxes/${id}/logs?direction=forward&limit=100&cursor=${cursor}`, { signal })
    for (const e of entries) {
      const ms = new Date(e.timestamp).getTime()
      const key = `${e.timestamp} ${e.level} ${e.message}`
      if (ms === cursor && shownAtCursor.has(key)) continue
      if (ms > cursor) {
        cursor = ms
        shownAtCursor = new Set()
      }
      shownAtCursor.add(key)
      logs.append(h('span', { class: e.level }, `${time(e.timestamp)} ${e.level.padEnd(5)} ${e.message}\n`))
      while (logs.childElementCount > MAX_LOG_LINES) logs.firstElementChild.remove()
    }
    if (entries.length) logs.scrollTop = logs.scrollHeight
    if (!logs.childElementCount) fill(logs, h('span', { class: 'debug' }, 'No log lines yet.'))
  })

  // The events kept so far, then the live ones after the newest of them.
  const seen = new Set()
  const showEvent = (ev) => {
    if (seen.has(ev.id)) return
    seen.add(ev.id)
    while (feed.childElementCount >= MAX_EVENTS) feed.lastElementChild.remove()
    feed.prepend(h('li', {}, badge(String(ev.type).replace('sandbox.lifecycle.', '')), h('span', { class: 'muted' }, time(ev.timestamp)), h('span', { class: 'mono muted' }, eventNote(ev))))
  }
  const stored = await api(`/events/sandboxes/${id}?orderAsc=true&limit=100`, { signal }).catch((err) => {
    report(err)
    return []
  })
  stored.forEach(showEvent)
  follow(`/events/sandboxes/${id}`, {
    signal,
    lastEventId: stored.length ? stored[stored.length - 1].id : null,
    onError: report,
    onEvent: ({ data }) => {
      showEvent(data)
      refresh().catch(report)
    },
  })
}

function eventNote(ev) {
  const d = ev.eventData ?? {}
  if (d.kill_reason) return `reason: ${d.kill_reason}`
  if (d.set_timeout) return `timeout: ${d.set_timeout}`
  return ''
}

function showFacts(el, s) {
  const rows = [
    ['State', badge(s.state)],
    ['Template', s.alias ?? s.templateID ?? '–'],
    ['Started', s.startedAt ? `${time(s.startedAt)} (${ago(s.startedAt)})` : '–'],
    ['Ends', s.endAt ? `${time(s.endAt)} (${ago(s.endAt)})` : '–'],
    ['Resources', s.cpuCount ? `${s.cpuCount} CPU, ${s.memoryMB} MiB memory, ${s.diskSizeMB} MiB disk` : '–'],
    ['On timeout', s.lifecycle?.onTimeout ?? '–'],
    ['Metadata', Object.entries(s.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(' ') || '–'],
  ]
  if (s.gone) rows.splice(1, rows.length - 1, ['', 'This sandbox is no longer running; its logs and events are kept.'])
  fill(el, h('dl', { class: 'kv', id: 'facts' }, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', { 'data-fact': k.toLowerCase() }, v)])))
}

function showActions(el, s, id, refresh) {
  const act = (label, fn, cls = '') =>
    h(
      'button',
      {
        type: 'button',
        class: cls,
        'data-action': label.toLowerCase(),
        onclick: async (e) => {
          e.target.disabled = true
          try {
            const message = await fn()
            await refresh()
            if (typeof message === 'string') fill(el.querySelector('#action-note'), message)
          } catch (err) {
            report(err)
            e.target.disabled = false
          }
        },
      },
      label,
    )
  if (s.gone) return fill(el)
  const note = h('span', { class: 'muted', id: 'action-note' })
  const kill = h(
    'button',
    {
      type: 'button',
      class: 'danger',
      'data-action': 'kill',
      onclick: () =>
        fill(
          el,
          h('span', {}, 'Kill this sandbox? Its files are lost.'),
          act('Kill now', () => api(`/sandboxes/${id}`, { method: 'DELETE' }).then(() => null), 'danger primary'),
          h('button', { type: 'button', onclick: () => showActions(el, s, id, refresh) }, 'Cancel'),
        ),
    },
    'Kill',
  )
  fill(
    el,
    s.state === 'running' ? act('Pause', () => api(`/sandboxes/${id}/pause`, { method: 'POST', body: {} }).then(() => null)) : null,
    s.state === 'paused' ? act('Resume', () => api(`/sandboxes/${id}/resume`, { method: 'POST', body: { timeout: RESUME_TIMEOUT } }).then(() => null)) : null,
    s.state === 'running'
      ? act('Snapshot', async () => {
          const snap = await api(`/sandboxes/${id}/snapshots`, { method: 'POST', body: {} })
          return `Snapshot ${snap.names?.[0] ?? snap.snapshotID} taken: sandboxes can start from it as from a template.`
        })
      : null,
    kill,
    note,
  )
}

function showCharts(charts, samples) {
  const pts = (f) => samples.map((m) => ({ t: m.timestampUnix, v: f(m) }))
  const last = samples[samples.length - 1]
  fill(charts.cpu, lineChart({ points: pts((m) => m.cpuUsedPct), max: 100, format: (v) => `${v.toFixed(0)}%`, label: 'CPU used' }))
  fill(charts.mem, lineChart({ points: pts((m) => m.memUsed), limit: last?.memTotal, format: bytes, label: 'Memory used' }))
  fill(charts.disk, lineChart({ points: pts((m) => m.diskUsed), limit: last?.diskTotal, format: bytes, label: 'Disk used' }))
}

/**
 * Opens a shell on a PTY in `box`; returns `{ close }`. The shell is killed when the terminal
 * closes (`close()`, the page's `signal`, or the browser leaving the page): envd keeps a
 * process whose client went away, so nothing else would end it. `closed` is called once the
 * terminal is gone for any reason.
 */
function openTerminal(box, detail, pageSignal, closed) {
  const ctl = new AbortController()
  const signal = ctl.signal
  const close = () => ctl.abort()
  pageSignal.addEventListener('abort', close, { once: true })
  let ended = false
  const kill = (keepalive) => {
    if (ended || pid === null || !envd) return
    ended = true
    envd.kill(pid, keepalive).catch(() => {})
  }
  const onHide = () => kill(true)
  window.addEventListener('pagehide', onHide, { once: true })
  signal.addEventListener('abort', () => kill(false), { once: true })
  const done = () => {
    ended = true
    window.removeEventListener('pagehide', onHide)
    pageSignal.removeEventListener('abort', close)
    closed()
  }
  const status = h('p', { class: 'muted', id: 'terminal-status' }, 'Connecting…')
  const el = h('div', { id: 'terminal' })
  fill(box, el, status)
  let pid = null
  // Keystrokes go out in order, one request at a time, batched while one is in flight.
  let pending = ''
  let sending = false
  const send = async (text) => {
    pending += text
    if (sending || pid === null) return
    sending = true
    try {
      while (pending && !signal.aborted) {
        const chunk = pending
        pending = ''
        await envd.sendInput(pid, chunk)
      }
    } catch (err) {
      report(err)
    } finally {
      sending = false
    }
  }
  const term = new Terminal(el, { cols: 110, rows: 18, onInput: send })
  let envd
  ;(async () => {
    const { sandboxUrl } = await dashboardConfig()
    if (!sandboxUrl) {
      status.textContent = 'No terminal: this server does not know the sandbox proxy’s URL (paddock api --sandbox-url).'
      return
    }
    envd = new Envd(sandboxUrl, detail.sandboxID, detail.envdAccessToken)
    const end = await envd.shell({
      cols: term.cols,
      rows: term.rows,
      signal,
      onStart: (p) => {
        pid = p
        status.textContent = `Shell pid ${p} (bash on a PTY through envd). Click the terminal and type.`
        el.focus({ preventScroll: true })
        send('')
      },
      onData: (bytes) => term.write(bytes),
    })
    status.textContent = end ? `The shell ended (${end.status ?? `exit ${end.exitCode ?? 0}`}).` : 'The shell’s stream ended.'
    done()
  })().catch(async (err) => {
    done()
    if (err.name === 'AbortError') return
    // A pause or kill ends the shell's stream: that is no failure of the terminal.
    const now = await api(`/sandboxes/${detail.sandboxID}`, { signal }).catch(() => null)
    if (now?.state === 'running') report(err)
    status.textContent = now?.state === 'running' ? 'The terminal is closed.' : 'The sandbox stopped running; the terminal reopens when it runs again.'
  })
  return { close }
}
