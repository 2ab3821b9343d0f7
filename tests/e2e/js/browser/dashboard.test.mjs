// The web dashboard (/dashboard/ on the API) in headless Chromium against a real `paddock serve`:
// sign-in (a wrong key shows the API's error), every page loads without console errors, the
// live list follows sandboxes the E2B JS SDK creates and kills, the terminal runs a command in
// a sandbox, and the pause/resume/kill buttons act (checked through the REST API). Saves a
// screenshot of each page into docs/screenshots/.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, test } from 'node:test'

import { Sandbox, Template } from 'e2b'

import { PaddockServer } from '../paddock.mjs'
import { launch, SCREENSHOTS, watchErrors } from './chromium.mjs'

const ADMIN = 'pdk_admin_' + randomBytes(12).toString('hex')
// `--network none`: sandboxes on loopback only. With NAT every sandbox adds a veth to the host,
// and Chromium aborts the loads in flight on such a change (net::ERR_NETWORK_CHANGED).
const server = new PaddockServer({ extraArgs: ['--admin-token', ADMIN, '--network', 'none'] })
let browser
const sandboxes = []

before(async () => {
  for (const key of Object.keys(process.env)) if (key.startsWith('E2B_')) delete process.env[key]
  await server.start()
  Object.assign(process.env, server.clientEnv())
  browser = await launch()
  fs.mkdirSync(SCREENSHOTS, { recursive: true })
})

after(async () => {
  await browser?.close()
  if (!server.proc) return
  for (const s of sandboxes) await s.kill().catch(() => {})
  await server.stopChecked()
})

async function create() {
  const sbx = await Sandbox.create({ timeoutMs: 600_000, metadata: { suite: 'dashboard' } })
  server.track(sbx.sandboxId)
  sandboxes.push(sbx)
  return sbx
}

/** GET `path` of the REST API with the server's key: `{status, body}`. */
async function rest(path) {
  const res = await fetch(server.apiUrl + path, { headers: { 'X-API-Key': server.apiKey } })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : null }
}

/** Polls `fn` until it returns a truthy value (or throws after `timeoutMs`). */
async function until(what, fn, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  let last
  while (Date.now() < deadline) {
    last = await fn()
    if (last) return last
    await new Promise((r) => setTimeout(r, 250))
  }
  throw new Error(`${what}: not within ${timeoutMs} ms (last: ${JSON.stringify(last)})`)
}

/** Opens the dashboard on `hash` in `page`, up to its sign-in form (with what went wrong if not). */
async function openSignIn(page, errors, hash = '') {
  await page.goto(`${server.apiUrl}/dashboard/${hash}`)
  try {
    await page.waitForSelector('#api-key', { timeout: 60_000 })
  } catch (err) {
    const view = await page.textContent('#view').catch((e) => `(no view: ${e.message})`)
    throw new Error(`${err.message}\nview: ${view}\nerrors: ${JSON.stringify(errors)}`)
  }
}

/** A new page signed in (with the admin token unless `admin` is false) on `hash`. */
async function signedIn(hash, { admin = true } = {}) {
  const page = await browser.context.newPage()
  const errors = watchErrors(page)
  await openSignIn(page, errors, hash)
  await page.fill('#api-key', server.apiKey)
  if (admin) await page.fill('#admin-token', ADMIN)
  await page.click('#signin')
  await page.waitForSelector('#nav:not([hidden])')
  return { page, errors }
}

const shot = (page, name) => page.screenshot({ path: path.join(SCREENSHOTS, `dashboard-${name}.png`) })

test('sign-in with a wrong key shows the API error; the right one signs in and out', async () => {
  const page = await browser.context.newPage()
  await openSignIn(page, watchErrors(page))
  await page.fill('#api-key', 'e2b_wrong')
  await page.click('#signin')
  await page.waitForFunction(() => document.getElementById('signin-error').textContent.length > 0)
  const error = await page.textContent('#signin-error')
  assert.match(error, /401/)
  assert.match(error, /invalid API key/)
  assert.equal(await page.isVisible('#nav'), false)
  await shot(page, 'signin')
  await page.fill('#api-key', server.apiKey)
  await page.fill('#admin-token', 'wrong-admin-token')
  await page.click('#signin')
  await page.waitForFunction(() => /invalid admin token/.test(document.getElementById('signin-error').textContent))
  await page.fill('#admin-token', '')
  await page.click('#signin')
  await page.waitForSelector('#nav:not([hidden])')
  await page.click('#signout')
  await page.waitForSelector('#api-key')
  assert.equal(await page.evaluate(() => sessionStorage.length), 0)
  await page.close()
})

test('the live list shows a sandbox the SDK creates, and drops it when killed', async () => {
  const { page, errors } = await signedIn('#/sandboxes')
  await page.waitForSelector('#live.running')
  await page.waitForSelector('#sandbox-list table, #sandbox-list .empty')
  const sbx = await create()
  const row = `#sandbox-list tr[data-sandbox="${sbx.sandboxId}"]`
  await page.waitForSelector(row, { timeout: 15_000 })
  assert.match(await page.textContent(row), /running/)
  await page.waitForSelector(`#event-feed a[href="#/sandboxes/${sbx.sandboxId}"]`)
  await shot(page, 'sandboxes')
  await sbx.kill()
  await page.waitForSelector(row, { state: 'detached', timeout: 15_000 })
  await page.waitForFunction((id) => [...document.querySelectorAll('#event-feed li')].some((li) => li.textContent.includes('killed') && li.textContent.includes(id)), sbx.sandboxId)
  assert.deepEqual(errors, [])
  await page.close()
})

test('the sandbox page shows charts, logs and events; its terminal runs a command', async () => {
  const sbx = await create()
  const { page, errors } = await signedIn(`#/sandboxes/${sbx.sandboxId}`)
  await page.waitForSelector('#facts [data-fact="state"] .badge.running')
  await page.waitForFunction(() => /Shell pid \d+/.test(document.getElementById('terminal-status')?.textContent ?? ''), null, { timeout: 20_000 })
  await page.click('#terminal')
  await page.keyboard.type('echo hello-$((6*7))')
  await page.keyboard.press('Enter')
  await page.waitForFunction(() => /^hello-42 *$/m.test(document.getElementById('terminal').innerText), null, { timeout: 15_000 })
  const text = await page.innerText('#terminal')
  assert.ok(text.includes('echo hello-$((6*7))'), text)
  // The page refreshes on each of the sandbox's events (a timeout change here): the terminal keeps
  // its shell and opens no other; leaving the page ends the shell (envd keeps a process whose
  // client went away, so the page kills it).
  const shellPid = async () => (await page.textContent('#terminal-status')).match(/Shell pid (\d+)/)?.[1]
  const pid = await shellPid()
  const shells = async () => Number((await sbx.commands.run("pgrep -c -f '^/bin/bash -i -l$' || true")).stdout.trim())
  await sbx.setTimeout(600_000)
  await page.waitForFunction(() => /updated/.test(document.getElementById('sandbox-events').textContent), null, { timeout: 15_000 })
  await new Promise((r) => setTimeout(r, 1500))
  assert.equal(await shellPid(), pid)
  assert.equal(await shells(), 1)
  // The sandbox's samples reach the charts; its creation is among its events.
  await page.waitForSelector('.chart .line', { timeout: 30_000 })
  assert.equal(await page.locator('svg.chart').count(), 3)
  await page.waitForFunction(() => /created/.test(document.getElementById('sandbox-events').textContent))
  await page.waitForFunction(() => document.getElementById('logs').textContent.length > 0)
  await page.evaluate(() => window.scrollTo(0, 0))
  await shot(page, 'sandbox')
  assert.deepEqual(errors, [])
  await page.goto(`${server.apiUrl}/dashboard/#/sandboxes`)
  const deadline = Date.now() + 10_000
  while ((await shells()) !== 0) {
    assert.ok(Date.now() < deadline, 'the terminal\'s shell outlived the page')
    await new Promise((r) => setTimeout(r, 250))
  }
  await page.close()
})

test('the snapshot, pause, resume and kill buttons act on the sandbox', async () => {
  const sbx = await create()
  const id = sbx.sandboxId
  const { page, errors } = await signedIn(`#/sandboxes/${id}`)
  await page.click('[data-action="snapshot"]')
  await page.waitForFunction(() => /Snapshot \S+ taken/.test(document.getElementById('action-note')?.textContent ?? ''), null, { timeout: 60_000 })
  const snapshots = (await rest(`/snapshots?sandboxID=${id}`)).body
  assert.equal(snapshots.length, 1, JSON.stringify(snapshots))
  const note = await page.textContent('#action-note')
  assert.ok(snapshots[0].names.some((n) => note.includes(n.split(':')[0])), `${note} ${JSON.stringify(snapshots)}`)
  // The snapshot is a template in the shared templates dir: not left there.
  const gone = await fetch(`${server.apiUrl}/templates/${encodeURIComponent(snapshots[0].names[0].split(':')[0])}`, {
    method: 'DELETE',
    headers: { 'X-API-Key': server.apiKey },
  })
  assert.equal(gone.status, 204)
  await page.click('[data-action="pause"]')
  await until('paused', async () => (await rest(`/sandboxes/${id}`)).body?.state === 'paused')
  await page.waitForSelector('#facts [data-fact="state"] .badge.paused')
  await page.click('[data-action="resume"]')
  await until('running again', async () => (await rest(`/sandboxes/${id}`)).body?.state === 'running')
  await page.waitForSelector('#facts [data-fact="state"] .badge.running')
  // The terminal opens again on the resumed sandbox.
  await page.waitForFunction(() => /Shell pid \d+/.test(document.getElementById('terminal-status')?.textContent ?? ''), null, { timeout: 20_000 })
  await page.click('[data-action="kill"]')
  await page.click('[data-action="kill now"]')
  await until('killed', async () => (await rest(`/sandboxes/${id}`)).status === 404)
  await page.waitForSelector('#facts dd:has-text("no longer running")')
  const kinds = await page.textContent('#sandbox-events')
  for (const kind of ['paused', 'resumed', 'killed']) assert.match(kinds, new RegExp(kind))
  // Killing a sandbox ends its streams and its last requests get 404s the browser logs as
  // failed loads; no script failed.
  assert.deepEqual(errors.filter((e) => e.startsWith('pageerror')), [])
  assert.equal(await page.isVisible('#banner'), false, await page.textContent('#banner'))
  await page.close()
})

test('the templates page, and a build’s logs followed live while it builds', async () => {
  const name = `dash-build-${randomBytes(3).toString('hex')}`
  const recipe = Template()
    .fromTemplate('base')
    // The name makes the step new (a cached step would have no build to follow).
    .runCmd(`echo ${name}; for i in 1 2 3 4 5 6; do echo dash-step-$((i * 7)); sleep 1; done`)
  const built = Template.build(recipe, name)
  built.catch(() => {}) // awaited below
  const { page, errors } = await signedIn('#/templates')
  try {
    await page.waitForSelector('#template-list tr[data-template="base"]')
    // The new template is listed while it builds (the list refreshes itself).
    const row = await until('the template listed', async () => {
      const all = (await rest('/templates')).body
      return all.find((t) => [...t.names, ...t.aliases].some((n) => n === name || n.startsWith(`${name}:`)))
    })
    await page.waitForSelector(`#template-list tr[data-template="${row.templateID}"]`, { timeout: 20_000 })
    await page.click(`#template-list tr[data-template="${row.templateID}"] a`)
    await page.waitForSelector('#build-list table')
    // Its build's lines arrive without a reload, up to the last step and the ready status.
    await page.waitForFunction(() => document.getElementById('build-logs').textContent.includes('dash-step-42'), null, { timeout: 120_000 })
    await page.waitForSelector('#build-status .badge.ready', { timeout: 60_000 })
    const logs = await page.textContent('#build-logs')
    assert.ok(logs.indexOf('dash-step-7') < logs.indexOf('dash-step-42'), logs)
    await built
    await shot(page, 'template')
    await page.goto(`${server.apiUrl}/dashboard/#/templates`)
    await page.waitForSelector(`#template-list tr[data-template="${row.templateID}"] .badge.ready`)
    await shot(page, 'templates')
    assert.equal(await page.isVisible('#banner'), false, await page.textContent('#banner'))
    assert.deepEqual(errors, [])
    await page.close()
  } finally {
    await built.catch(() => {})
    await fetch(`${server.apiUrl}/templates/${encodeURIComponent(name)}`, { method: 'DELETE', headers: { 'X-API-Key': server.apiKey } })
  }
})

test('a template made on disk (base) has builds but no build logs', async () => {
  const { page, errors } = await signedIn('#/templates/base')
  await page.waitForSelector('#build-list table')
  assert.match(await page.textContent('#build-status'), /Choose a build/)
  assert.deepEqual(errors, [])
  await page.click('#build-list button[data-build]')
  await page.waitForFunction(() => /no build logs/.test(document.getElementById('build-status').textContent))
  assert.equal(await page.isVisible('#banner'), false)
  await page.close()
})

test('the nodes page with the admin token, and its message without one', async () => {
  const { page, errors } = await signedIn('#/nodes')
  await page.waitForSelector('#node-list table, #node-list .empty')
  await page.waitForSelector('#node-events table, #node-events .empty')
  // (Its screenshot, with a node in it, is dashboard_cluster.test.mjs's.)
  assert.equal(await page.isVisible('#banner'), false, await page.textContent('#banner'))
  assert.deepEqual(errors, [])
  await page.close()

  const plain = await signedIn('#/nodes', { admin: false })
  await plain.page.waitForSelector('#nodes-message')
  assert.match(await plain.page.textContent('#nodes-message'), /admin token/)
  assert.deepEqual(plain.errors, [])
  await plain.page.close()
})

test('the webhooks page adds and deletes a webhook', async () => {
  const { page, errors } = await signedIn('#/webhooks')
  await page.waitForSelector('#webhook-list table, #webhook-list .empty')
  await page.fill('#webhook-name', 'dashboard-test')
  await page.fill('#webhook-url', 'https://hooks.example.com/paddock')
  await page.fill('#webhook-secret', 's3cret-s3cret')
  await page.click('#webhook-form button[type="submit"]')
  await page.waitForSelector('#webhook-list tr[data-webhook]')
  const hooks = (await rest('/events/webhooks')).body
  assert.deepEqual(
    hooks.map((w) => [w.name, w.url, w.events]),
    [['dashboard-test', 'https://hooks.example.com/paddock', ['sandbox.lifecycle.created', 'sandbox.lifecycle.killed']]],
  )
  await shot(page, 'webhooks')
  await page.click('#webhook-list [data-action="delete"]')
  await page.waitForSelector('#webhook-list .empty')
  assert.deepEqual((await rest('/events/webhooks')).body, [])
  assert.deepEqual(errors, [])
  await page.close()
})

test('bundle routes: CSP on the page, 404 for unknown files', async () => {
  const page = await fetch(`${server.apiUrl}/dashboard/`)
  assert.equal(page.status, 200)
  const csp = page.headers.get('content-security-policy')
  assert.match(csp, /script-src 'self'/)
  assert.ok(csp.includes(`connect-src 'self' ${server.sandboxUrl}`), csp)
  assert.equal((await fetch(`${server.apiUrl}/dashboard/nope.js`)).status, 404)
  const config = await (await fetch(`${server.apiUrl}/dashboard/config.json`)).json()
  assert.equal(config.sandboxUrl, server.sandboxUrl)
})
