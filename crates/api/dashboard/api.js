// The REST API as the dashboard uses it: the session's credentials (sessionStorage, sent only
// in headers, never in URLs), JSON requests whose failures carry the API's own message, and
// the Server-Sent Events streams read with fetch (EventSource cannot send X-API-Key).

const KEY = 'paddock.apiKey'
const ADMIN = 'paddock.adminToken'

export const session = {
  get key() {
    return sessionStorage.getItem(KEY)
  },
  get admin() {
    return sessionStorage.getItem(ADMIN)
  },
  save(key, admin) {
    sessionStorage.setItem(KEY, key)
    if (admin) sessionStorage.setItem(ADMIN, admin)
    else sessionStorage.removeItem(ADMIN)
  },
  clear() {
    sessionStorage.removeItem(KEY)
    sessionStorage.removeItem(ADMIN)
  },
}

/** A failed request: `status` 0 when the server was not reached. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message)
    this.name = 'ApiError'
    this.status = status
  }
}

function credentials(admin, key, token) {
  if (admin) {
    const t = token ?? session.admin
    if (!t) throw new ApiError(401, 'no admin token in this session: sign out and sign in with one')
    return { 'X-Admin-Token': t }
  }
  return { 'X-API-Key': key ?? session.key ?? '' }
}

/**
 * `method path` with a JSON `body`; resolves to the parsed answer (null when empty) or, with
 * `withHeaders`, `{data, headers}`. Rejects with an ApiError holding the API's message.
 */
export async function api(path, { method = 'GET', body, admin = false, key, token, signal, withHeaders = false } = {}) {
  const headers = credentials(admin, key, token)
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  let res
  try {
    res = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) })
  } catch (err) {
    if (err.name === 'AbortError') throw err
    throw new ApiError(0, `${method} ${path}: the API did not answer (${err.message})`)
  }
  const text = await res.text()
  let data = null
  if (text) {
    try {
      data = JSON.parse(text)
    } catch {
      data = text
    }
  }
  if (!res.ok) {
    const why = (data && typeof data === 'object' && data.message) || text || res.statusText
    throw new ApiError(res.status, `${method} ${path}: ${res.status} ${why}`)
  }
  return withHeaders ? { data, headers: res.headers } : data
}

/**
 * Follows the SSE stream at `path` until `signal` aborts: `onEvent({id, type, data})` per
 * event, `onOpen()` each time the stream is (re)connected. Reconnects after a failure (which
 * goes to `onError`) with `Last-Event-ID`, so no event is missed.
 */
export async function follow(path, { signal, onEvent, onOpen, onError, lastEventId = null }) {
  let last = lastEventId
  while (!signal.aborted) {
    try {
      const headers = { ...credentials(false), Accept: 'text/event-stream' }
      if (last) headers['Last-Event-ID'] = last
      let res
      try {
        res = await fetch(path, { headers, signal })
      } catch (err) {
        if (err.name === 'AbortError') throw err
        throw new ApiError(0, `GET ${path}: the event stream did not answer (${err.message})`)
      }
      if (!res.ok) {
        let why = await res.text()
        try {
          why = JSON.parse(why).message ?? why
        } catch {}
        throw new ApiError(res.status, `GET ${path}: ${res.status} ${why}`)
      }
      onOpen?.()
      for await (const ev of sseEvents(res.body)) {
        if (ev.id) last = ev.id
        onEvent(ev)
      }
      if (signal.aborted) return
      throw new ApiError(0, `GET ${path}: the event stream ended; reconnecting`)
    } catch (err) {
      if (err.name === 'AbortError' || signal.aborted) return
      onError?.(err)
      await new Promise((r) => setTimeout(r, 2000))
    }
  }
}

/** Parses a text/event-stream body into `{id, type, data}` (data parsed as JSON when it is). */
export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader()
  let buf = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buf += value.replace(/\r\n?/g, '\n')
    let end
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end)
      buf = buf.slice(end + 2)
      const ev = { id: null, type: 'message', data: [] }
      for (const line of block.split('\n')) {
        if (line === '' || line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        let val = colon < 0 ? '' : line.slice(colon + 1)
        if (val.startsWith(' ')) val = val.slice(1)
        if (field === 'id') ev.id = val
        else if (field === 'event') ev.type = val
        else if (field === 'data') ev.data.push(val)
      }
      if (ev.data.length === 0) continue
      const text = ev.data.join('\n')
      try {
        ev.data = JSON.parse(text)
      } catch {
        ev.data = text
      }
      yield ev
    }
  }
}

/** `/dashboard/config.json`: where the sandbox proxy is (for envd). */
let config = null
export async function dashboardConfig() {
  if (!config) {
    const res = await fetch('config.json')
    if (!res.ok) throw new ApiError(res.status, `GET /dashboard/config.json: ${res.status}`)
    config = await res.json()
  }
  return config
}
