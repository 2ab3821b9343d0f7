// Line charts as inline SVG (no library): one series over time, with an optional limit line.

const NS = 'http://www.w3.org/2000/svg'

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag)
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v))
  if (text !== undefined) el.textContent = text
  return el
}

/**
 * A chart of `points` ([{t: unix seconds, v}]) from 0 to `max` (or the largest value), `limit`
 * drawn as a dashed line, values labelled with `format`.
 */
export function lineChart({ points, max, limit, format = String, label = '' }) {
  const W = 400
  const H = 150
  const L = 50
  const B = 18
  const T = 8
  const root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label })
  const top = Math.max(max ?? 0, limit ?? 0, ...points.map((p) => p.v), 1e-9)
  const y = (v) => T + (H - T - B) * (1 - v / top)
  root.append(svg('line', { class: 'axis', x1: L, x2: W, y1: H - B, y2: H - B }))
  root.append(svg('line', { class: 'axis', x1: L, x2: W, y1: T, y2: T }))
  root.append(svg('text', { x: 4, y: T + 10 }, format(top)))
  root.append(svg('text', { x: 4, y: H - B }, format(0)))
  if (points.length === 0) {
    root.append(svg('text', { x: L + 10, y: H / 2 }, 'no samples yet'))
    return root
  }
  const t0 = points[0].t
  const span = Math.max(points[points.length - 1].t - t0, 1)
  const x = (t) => L + ((W - L - 4) * (t - t0)) / span
  const path = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ')
  const last = points[points.length - 1]
  root.append(svg('path', { class: 'area', d: `${path} L${x(last.t).toFixed(1)},${H - B} L${x(t0).toFixed(1)},${H - B} Z` }))
  root.append(svg('path', { class: 'line', d: path }))
  if (limit) root.append(svg('line', { class: 'limit', x1: L, x2: W, y1: y(limit), y2: y(limit) }))
  const when = (t) => new Date(t * 1000).toLocaleTimeString()
  root.append(svg('text', { x: L, y: H - 4 }, when(t0)))
  root.append(svg('text', { x: W - 4, y: H - 4, 'text-anchor': 'end' }, when(last.t)))
  root.append(svg('title', {}, `${label}: ${format(last.v)} at ${when(last.t)}`))
  return root
}
