// envd's process service (Connect protocol over JSON) reached through the sandbox proxy, as the
// SDKs reach it with E2B_SANDBOX_URL: the E2b-Sandbox-Id and E2b-Sandbox-Port headers route
// the request, X-Access-Token authenticates it. Unary calls are plain JSON; the server stream
// of Start uses Connect envelopes (a flag byte, a big-endian u32 length, the JSON).

const ENVD_PORT = '49983'

export class EnvdError extends Error {
  constructor(message) {
    super(message)
    this.name = 'EnvdError'
  }
}

const b64 = {
  encode(text) {
    const bytes = new TextEncoder().encode(text)
    let bin = ''
    for (const b of bytes) bin += String.fromCharCode(b)
    return btoa(bin)
  },
  decode(s) {
    const bin = atob(s)
    const out = new Uint8Array(bin.length)
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
    return out
  },
}

export class Envd {
  constructor(sandboxUrl, sandboxId, accessToken) {
    this.base = sandboxUrl.replace(/\/+$/, '')
    this.headers = {
      'E2b-Sandbox-Id': sandboxId,
      'E2b-Sandbox-Port': ENVD_PORT,
      'Connect-Protocol-Version': '1',
    }
    if (accessToken) this.headers['X-Access-Token'] = accessToken
  }

  async unary(method, message) {
    let res
    try {
      res = await fetch(`${this.base}/process.Process/${method}`, {
        method: 'POST',
        headers: { ...this.headers, 'Content-Type': 'application/json' },
        body: JSON.stringify(message),
      })
    } catch (err) {
      throw new EnvdError(`envd ${method}: the sandbox proxy at ${this.base} did not answer (${err.message})`)
    }
    const text = await res.text()
    if (!res.ok) {
      let why = text
      try {
        why = JSON.parse(text).message ?? text
      } catch {}
      throw new EnvdError(`envd ${method}: ${res.status} ${why}`)
    }
    return text ? JSON.parse(text) : {}
  }

  /** Server stream `method`: yields each message; throws the end-of-stream error if any. */
  async *stream(method, message, signal) {
    const json = new TextEncoder().encode(JSON.stringify(message))
    const body = new Uint8Array(5 + json.length)
    new DataView(body.buffer).setUint32(1, json.length)
    body.set(json, 5)
    let res
    try {
      res = await fetch(`${this.base}/process.Process/${method}`, {
        method: 'POST',
        headers: { ...this.headers, 'Content-Type': 'application/connect+json', 'Keepalive-Ping-Interval': '50' },
        body,
        signal,
      })
    } catch (err) {
      if (err.name === 'AbortError') throw err
      throw new EnvdError(`envd ${method}: the sandbox proxy at ${this.base} did not answer (${err.message})`)
    }
    if (!res.ok) {
      const text = await res.text()
      let why = text
      try {
        why = JSON.parse(text).message ?? text
      } catch {}
      throw new EnvdError(`envd ${method}: ${res.status} ${why}`)
    }
    const reader = res.body.getReader()
    let buf = new Uint8Array(0)
    for (;;) {
      while (buf.length >= 5) {
        const flags = buf[0]
        const len = new DataView(buf.buffer, buf.byteOffset, 5).getUint32(1)
        if (buf.length < 5 + len) break
        const msg = JSON.parse(new TextDecoder().decode(buf.subarray(5, 5 + len)) || '{}')
        buf = buf.slice(5 + len)
        if (flags & 2) {
          if (msg.error) throw new EnvdError(`envd ${method}: ${msg.error.code}: ${msg.error.message ?? ''}`)
          return
        }
        yield msg
      }
      const { value, done } = await reader.read()
      if (done) {
        if (buf.length) throw new EnvdError(`envd ${method}: the stream ended inside a message`)
        return
      }
      const joined = new Uint8Array(buf.length + value.length)
      joined.set(buf)
      joined.set(value, buf.length)
      buf = joined
    }
  }

  /**
   * Starts a login shell on a PTY of `cols`×`rows`: `onData(bytes)` per output chunk,
   * resolves with the end event (exit status) when the shell ends.
   */
  async shell({ cols, rows, onStart, onData, signal }) {
    const start = {
      process: {
        cmd: '/bin/bash',
        args: ['-i', '-l'],
        envs: { TERM: 'xterm-256color', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' },
      },
      pty: { size: { cols, rows } },
    }
    for await (const msg of this.stream('Start', start, signal)) {
      const ev = msg.event ?? {}
      if (ev.start) onStart(ev.start.pid)
      else if (ev.data?.pty) onData(b64.decode(ev.data.pty))
      else if (ev.end) return ev.end
    }
    return null
  }

  sendInput(pid, text) {
    return this.unary('SendInput', { process: { pid }, input: { pty: b64.encode(text) } })
  }

  resize(pid, cols, rows) {
    return this.unary('Update', { process: { pid }, pty: { size: { cols, rows } } })
  }

  /** SIGKILL to `pid`; with `keepalive` the request outlives the page (for `pagehide`). */
  kill(pid, keepalive = false) {
    if (keepalive) {
      return fetch(`${this.base}/process.Process/SendSignal`, {
        method: 'POST',
        keepalive: true,
        headers: { ...this.headers, 'Content-Type': 'application/json' },
        body: JSON.stringify({ process: { pid }, signal: 'SIGNAL_SIGKILL' }),
      })
    }
    return this.unary('SendSignal', { process: { pid }, signal: 'SIGNAL_SIGKILL' })
  }

}
