// DOM helpers (elements are built with textContent, never innerHTML, so API data is never
// markup), the error banner and formatting.

/** `h('a', {href: '#/x', class: 'y'}, 'text', child)`: an element. `on*` attributes are listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v)
    else if (k === 'class') el.className = v
    else if (v === true) el.setAttribute(k, '')
    else el.setAttribute(k, String(v))
  }
  append(el, children)
  return el
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
}

/** Replaces `el`'s children. */
export function fill(el, ...children) {
  el.replaceChildren()
  append(el, children)
  return el
}

/** Shows `message` in the error banner (every failed request ends here). */
export function showError(message) {
  const banner = document.getElementById('banner')
  document.getElementById('banner-text').textContent = message
  banner.hidden = false
}

export function clearError() {
  document.getElementById('banner').hidden = true
}

/** Reports a failure in the banner; aborted requests (a page left) are not failures. */
export function report(err) {
  if (err?.name === 'AbortError') return
  showError(err?.message ?? String(err))
}

export function badge(text) {
  return h('span', { class: `badge ${String(text).replace(/[^a-z]/gi, '')}` }, text)
}

/** A table of `rows` (arrays of cells) under `headers`; `empty` when there are no rows. */
export function table(headers, rows, empty = 'Nothing here yet.') {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty)
  return h(
    'table',
    {},
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))),
    h('tbody', {}, rows.map((r) => (r instanceof Node ? r : h('tr', {}, r.map((c) => h('td', {}, c)))))),
  )
}

export function bytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024
    i++
  }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`
}

export function time(iso) {
  if (!iso) return '–'
  const d = new Date(iso)
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString()
}

export function ago(iso) {
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000)
  if (Number.isNaN(s)) return '–'
  const abs = Math.abs(s)
  const txt = abs < 60 ? `${abs}s` : abs < 3600 ? `${Math.round(abs / 60)}m` : abs < 86400 ? `${Math.round(abs / 3600)}h` : `${Math.round(abs / 86400)}d`
  return s >= 0 ? `${txt} ago` : `in ${txt}`
}

/** Calls `fn` now and every `ms` until `signal` aborts; failures go to the banner. */
export function every(ms, signal, fn) {
  let timer = null
  const tick = async () => {
    if (signal.aborted) return
    try {
      await fn()
    } catch (err) {
      report(err)
    }
    if (!signal.aborted) timer = setTimeout(tick, ms)
  }
  signal.addEventListener('abort', () => clearTimeout(timer))
  tick()
}
