// Starts and stops a real `paddock serve` for the JS end-to-end tests (the JS twin of
// tests/e2e/python/paddock_server.py): free loopback ports, a temp data dir, a random API key,
// waiting for GET /health and the three `export E2B_...` lines, SIGTERM with a clean exit, and
// the leak checks after it (mounts under the data dir, cgroups named after created sandboxes).
//
// Environment: PADDOCK_BIN (default <repo>/target/release/paddock), PADDOCK_TEMPLATES_DIR
// (default /var/cache/paddock/templates).

import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const repoRoot = path.resolve(here, '..', '..', '..')

/** A TCP port on 127.0.0.1 that is free right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** The `export E2B_X=value` lines of a server's output. */
export function parseExports(text) {
  const found = {}
  for (const line of text.split('\n')) {
    const m = line.match(/^\s*export\s+(E2B_[A-Z_]+)=(.*?)\s*$/)
    if (m) found[m[1]] = m[2].replace(/^(['"])(.*)\1$/, '$2')
  }
  return found
}

/** Mount points in this mount namespace at or below `prefix`. */
export function mountsUnder(prefix) {
  const p = prefix.replace(/\/+$/, '')
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter(Boolean)
    .map((m) => m.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === p || m.startsWith(p + '/'))
}

/** cgroup directories below any `paddock` cgroup whose name contains one of `ids`. */
export function leakedCgroups(ids) {
  if (ids.size === 0) return []
  const root = '/sys/fs/cgroup'
  const roots = new Set([path.join(root, 'paddock'), path.join(root, 'unified', 'paddock')])
  for (const c of fs.existsSync(root) ? fs.readdirSync(root) : []) roots.add(path.join(root, c, 'paddock'))
  const leaked = []
  const walk = (dir) => {
    let entries
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true })
    } catch {
      return
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue
      const full = path.join(dir, e.name)
      if ([...ids].some((id) => e.name.includes(id))) leaked.push(full)
      walk(full)
    }
  }
  for (const r of roots) walk(r)
  return leaked
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export class PaddockServer {
  /** `extraArgs`: more flags for `paddock serve` (e.g. `--admin-token`). */
  constructor({ extraArgs = [] } = {}) {
    this.extraArgs = extraArgs
    this.binary = process.env.PADDOCK_BIN || path.join(repoRoot, 'target', 'release', 'paddock')
    this.templatesDir = process.env.PADDOCK_TEMPLATES_DIR || '/var/cache/paddock/templates'
    this.apiKey = 'e2b_' + randomBytes(20).toString('hex')
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'paddock-e2e-js-'))
    this.logPath = this.dataDir + '.log'
    this.createdIds = new Set()
    this.exports = {}
    this.proc = null
    this.exitCode = null
  }

  get apiUrl() {
    return `http://127.0.0.1:${this.apiPort}`
  }

  get sandboxUrl() {
    return `http://127.0.0.1:${this.proxyPort}`
  }

  track(id) {
    this.createdIds.add(id)
    return id
  }

  logTail(lines = 80) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n')
    } catch {
      return ''
    }
  }

  async start(readyTimeoutMs = 600_000) {
    if (!fs.existsSync(this.binary)) {
      throw new Error(`paddock binary not found at ${this.binary} (build it or set PADDOCK_BIN)`)
    }
    fs.mkdirSync(this.templatesDir, { recursive: true })
    this.apiPort = await freePort()
    this.proxyPort = await freePort()
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('E2B_')))
    env.PADDOCK_API_KEY = this.apiKey
    env.RUST_LOG ??= 'info'
    const log = fs.openSync(this.logPath, 'w')
    this.proc = spawn(
      this.binary,
      [
        'serve',
        '--data-dir', this.dataDir,
        '--listen', `127.0.0.1:${this.apiPort}`,
        '--proxy-listen', `127.0.0.1:${this.proxyPort}`,
        '--templates-dir', this.templatesDir,
        ...this.extraArgs,
      ],
      { env, stdio: ['ignore', log, log] },
    )
    fs.closeSync(log)
    this.exited = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })))
    let done = null
    this.exited.then((r) => (done = r))

    const deadline = Date.now() + readyTimeoutMs
    let healthy = false
    while (Date.now() < deadline) {
      if (done) throw new Error(`paddock serve exited (${JSON.stringify(done)}) before ready:\n${this.logTail()}`)
      if (!healthy) {
        try {
          healthy = (await fetch(this.apiUrl + '/health', { signal: AbortSignal.timeout(2000) })).status === 200
        } catch {
          healthy = false
        }
      }
      if (healthy) {
        this.exports = parseExports(fs.readFileSync(this.logPath, 'utf8'))
        if (this.exports.E2B_API_URL && this.exports.E2B_SANDBOX_URL && this.exports.E2B_API_KEY) return this
      }
      await sleep(250)
    }
    throw new Error(`paddock serve not ready within ${readyTimeoutMs} ms (healthy=${healthy}):\n${this.logTail()}`)
  }

  /** The three variables that point an E2B SDK at this server. */
  clientEnv() {
    return { E2B_API_URL: this.apiUrl, E2B_SANDBOX_URL: this.sandboxUrl, E2B_API_KEY: this.apiKey }
  }

  /** SIGTERM, then wait up to `timeoutMs`; returns the exit code (SIGKILLs and throws on timeout). */
  async stop(timeoutMs = 30_000) {
    if (!this.proc) throw new Error('paddock serve was never started')
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM')
    let timeoutId
    const timer = new Promise((resolve) => (timeoutId = setTimeout(() => resolve(null), timeoutMs)))
    const result = await Promise.race([this.exited, timer])
    clearTimeout(timeoutId) // a pending timer would keep the test process alive for timeoutMs
    if (result === null) {
      this.proc.kill('SIGKILL')
      await this.exited
      throw new Error(`paddock serve did not exit within ${timeoutMs} ms of SIGTERM:\n${this.logTail()}`)
    }
    this.exitCode = result.code
    return result.code
  }

  leaks() {
    return [
      ...mountsUnder(this.dataDir).map((m) => `mount left: ${m}`),
      ...leakedCgroups(this.createdIds).map((c) => `cgroup left: ${c}`),
    ]
  }

  /**
   * The end of a suite: SIGTERM, then the exit code and leaks checked. Throws (with the
   * server log's tail on stderr) on an unclean shutdown; otherwise removes the data dir and
   * keeps the log for a look at any failed test.
   */
  async stopChecked() {
    const code = await this.stop()
    const problems = this.leaks()
    if (code !== 0) problems.unshift(`paddock serve exited with ${code} after SIGTERM (want 0)`)
    if (problems.length) {
      console.error(`--- paddock serve log tail (${this.logPath}) ---\n${this.logTail(120)}`)
      throw new Error('unclean shutdown:\n  ' + problems.join('\n  '))
    }
    this.cleanup({ keepLog: true })
    console.log(`paddock serve log: ${this.logPath}`)
  }

  cleanup({ keepLog = false } = {}) {
    fs.rmSync(this.dataDir, { recursive: true, force: true })
    if (!keepLog) fs.rmSync(this.logPath, { force: true })
  }
}
