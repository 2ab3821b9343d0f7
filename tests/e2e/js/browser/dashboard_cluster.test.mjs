// The dashboard's nodes page on a cluster's control plane: a real `paddock api` (admin token)
// and one `paddock node` that joins it, on loopback. The page lists the node with its status
// and load, and the registry's events (its join). Saves docs/screenshots/dashboard-nodes.png.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'

import { freePort, parseExports } from '../paddock.mjs'
import { launch, SCREENSHOTS, watchErrors } from './chromium.mjs'

const BIN = process.env.PADDOCK_BIN || path.resolve(import.meta.dirname, '..', '..', '..', '..', 'target', 'release', 'paddock')
const ADMIN = 'pdk_admin_' + randomBytes(12).toString('hex')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'paddock-dash-cluster-'))
const procs = []
let apiUrl
let apiKey
let browser

function run(name, args) {
  const log = fs.openSync(path.join(dir, `${name}.log`), 'w')
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', log], env: { ...process.env, RUST_LOG: 'info' } })
  fs.closeSync(log)
  proc.exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)))
  procs.push(proc)
  return proc
}

const tail = (name) => {
  try {
    return fs.readFileSync(path.join(dir, `${name}.log`), 'utf8').split('\n').slice(-40).join('\n')
  } catch {
    return ''
  }
}

before(async () => {
  const [apiPort, clusterPort, nodePort] = [await freePort(), await freePort(), await freePort()]
  apiUrl = `http://127.0.0.1:${apiPort}`
  const api = run('api', [
    'api',
    '--data-dir', path.join(dir, 'api'),
    '--listen', `127.0.0.1:${apiPort}`,
    '--cluster-listen', `127.0.0.1:${clusterPort}`,
    '--admin-token', ADMIN,
    '--no-system-templates',
  ])
  let out = ''
  api.stdout.on('data', (b) => (out += b))
  const deadline = Date.now() + 60_000
  while (!parseExports(out).E2B_API_KEY) {
    if (Date.now() > deadline || api.exitCode !== null) throw new Error(`paddock api not ready:\n${tail('api')}`)
    await new Promise((r) => setTimeout(r, 200))
  }
  apiKey = parseExports(out).E2B_API_KEY
  const templates = path.join(dir, 'node-templates')
  fs.mkdirSync(templates)
  const node = run('node', [
    'node',
    '--data-dir', path.join(dir, 'node'),
    '--join', `127.0.0.1:${clusterPort}`,
    '--token-file', path.join(dir, 'api', 'join-token'),
    '--name', 'dash-n1',
    '--listen', `127.0.0.1:${nodePort}`,
    '--templates-dir', templates,
    // No veth on the host, which would make Chromium abort its loads (ERR_NETWORK_CHANGED).
    '--network', 'none',
  ])
  node.stdout.resume()
  browser = await launch()
})

after(async () => {
  await browser?.close()
  for (const p of procs.reverse()) {
    if (p.exitCode === null) p.kill('SIGTERM')
    await Promise.race([p.exited, new Promise((r) => setTimeout(r, 30_000))])
    if (p.exitCode === null) p.kill('SIGKILL')
  }
  fs.rmSync(dir, { recursive: true, force: true })
})

test('the nodes page lists a joined node with its status and load', async () => {
  const page = await browser.context.newPage()
  const errors = watchErrors(page)
  // The node has joined once the admin API lists it ready.
  const deadline = Date.now() + 120_000
  for (;;) {
    const r = await fetch(`${apiUrl}/nodes`, { headers: { 'X-Admin-Token': ADMIN } })
    const nodes = await r.json()
    if (nodes.some((n) => n.id === 'dash-n1' && n.status === 'ready' && n.metrics.cpuCount > 0)) break
    if (Date.now() > deadline) throw new Error(`node not ready: ${JSON.stringify(nodes)}\n${tail('node')}`)
    await new Promise((r) => setTimeout(r, 500))
  }
  await page.goto(`${apiUrl}/dashboard/#/nodes`)
  await page.fill('#api-key', apiKey)
  await page.fill('#admin-token', ADMIN)
  await page.click('#signin')
  const row = '#node-list tr[data-node="dash-n1"]'
  await page.waitForSelector(row)
  const text = await page.textContent(row)
  assert.match(text, /ready/)
  assert.match(text, /% of \d+/)
  await page.waitForFunction(() => /node\.joined/.test(document.getElementById('node-events').textContent))
  fs.mkdirSync(SCREENSHOTS, { recursive: true })
  await page.screenshot({ path: path.join(SCREENSHOTS, 'dashboard-nodes.png') })
  assert.equal(await page.isVisible('#banner'), false)
  assert.deepEqual(errors, [])
  await page.close()
})
