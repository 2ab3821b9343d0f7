// Warm pools (issue 6) through the official E2B JS SDK (npm `e2b` 2.51.0) against a real
// `paddock serve` with its default pool (2 sandboxes per template, filled after the template's
// first create): a create served by the pool gets the caller's env vars, metadata and envd
// token, and the pool refills after a burst larger than it. Every hand-over is checked in the
// server log ("sandbox running (from the warm pool)" with the id) and in GET /metrics
// (paddock_warm_pool_hits_total), so no test can pass on the cold path by accident.

import assert from 'node:assert/strict'
import fs from 'node:fs'
import { after, before, describe, test } from 'node:test'

import { Sandbox } from 'e2b'

import { PaddockServer } from '../paddock.mjs'

const POOL = 2 // `paddock serve`'s default --warm-pool-size
const server = new PaddockServer()

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Polls `probe` every 100 ms until it returns something truthy; fails after `timeoutMs`. */
async function waitFor(probe, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value) return value
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(100)
  }
}

/** GET /metrics as { series (with labels): value }. */
async function metrics() {
  const r = await fetch(`${server.apiUrl}/metrics`, { headers: { 'X-API-Key': server.apiKey } })
  const text = await r.text()
  assert.equal(r.status, 200, text)
  const found = {}
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    found[line.slice(0, at)] = Number(line.slice(at + 1))
  }
  return found
}

const ready = (m, template = 'base') => m[`paddock_warm_pool_ready{template="${template}"}`]
const filling = (m, template = 'base') => m[`paddock_warm_pool_filling{template="${template}"}`]
const hits = (m) => m.paddock_warm_pool_hits_total
const misses = (m) => m.paddock_warm_pool_misses_total

/** Waits until base's pool has POOL ready and none filling; returns those metrics. */
async function poolFull() {
  return waitFor(async () => {
    const m = await metrics()
    return ready(m) === POOL && filling(m) === 0 ? m : null
  }, `${POOL} warm sandboxes of base ready`)
}

const log = () => fs.readFileSync(server.logPath, 'utf8')
const handedOver = (id) => new RegExp(`sandbox running \\(from the warm pool\\) sandbox_id=${id}\\b`).test(log())
const startedCold = (id) => new RegExp(`sandbox running sandbox_id=${id}\\b`).test(log())

async function create(opts = {}) {
  const sandbox = await Sandbox.create(opts)
  server.track(sandbox.sandboxId)
  return sandbox
}

/** A raw envd RPC through the proxy with `token` as X-Access-Token (none if undefined). */
function statHome(sbx, token) {
  const headers = {
    'Content-Type': 'application/json',
    'Connect-Protocol-Version': '1',
    'E2b-Sandbox-Id': sbx.sandboxId,
    'E2b-Sandbox-Port': '49983',
  }
  if (token !== undefined) headers['X-Access-Token'] = token
  return fetch(`${server.sandboxUrl}/filesystem.Filesystem/Stat`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ path: '/home/user' }),
  })
}

before(async () => {
  for (const key of Object.keys(process.env)) if (key.startsWith('E2B_')) delete process.env[key]
  await server.start()
  Object.assign(process.env, server.clientEnv())
  // No pool until base is wanted: the first create is a miss and starts the pool.
  assert.equal(ready(await metrics()), undefined)
  const first = await create()
  assert.ok(startedCold(first.sandboxId), 'the first create is cold')
  await first.kill()
})

after(async () => {
  if (!server.proc) return // start failed; `before` already reported why
  await Promise.all([...server.createdIds].map((id) => Sandbox.kill(id).catch(() => false)))
  await server.stopChecked()
})

describe('warm pool', () => {
  test("a hand-over gets the caller's env vars, metadata and token", async () => {
    const before = await poolFull()
    const metadata = { owner: 'js-test', n: '1' }
    const sbx = await create({ envs: { CALLER_ENV: 'from-create js' }, metadata, timeoutMs: 120_000 })
    const other = await create({ envs: { CALLER_ENV: 'someone else' } })
    try {
      const id = sbx.sandboxId
      assert.ok(handedOver(id) && handedOver(other.sandboxId), server.logTail(20))
      assert.equal(hits(await metrics()) - hits(before), 2)
      assert.notEqual(id, other.sandboxId)

      const out = await sbx.commands.run('echo "$CALLER_ENV|$E2B_SANDBOX_ID"; hostname')
      assert.equal(out.stdout, `from-create js|${id}\n${id}\n`)
      assert.equal((await other.commands.run('echo $CALLER_ENV')).stdout, 'someone else\n')
      assert.deepEqual((await sbx.getInfo()).metadata, metadata)
      assert.deepEqual((await other.getInfo()).metadata, {})

      // envd accepts the token the SDK got for this sandbox, and no other.
      const token = sbx.envdAccessToken
      assert.ok(token && token !== other.envdAccessToken)
      assert.equal((await statHome(sbx, undefined)).status, 401)
      assert.equal((await statHome(sbx, 'x'.repeat(token.length))).status, 401)
      assert.equal((await statHome(sbx, other.envdAccessToken)).status, 401)
      const ok = await statHome(sbx, token)
      assert.equal(ok.status, 200, await ok.clone().text())
      assert.equal((await ok.json()).entry.owner, 'user')

      await sbx.files.write('/home/user/note.txt', 'written through the SDK')
      assert.equal(await sbx.files.read('/home/user/note.txt'), 'written through the SDK')
    } finally {
      await Promise.all([sbx.kill(), other.kill()])
    }
  })

  test('the pool refills after a burst larger than it', async () => {
    const before = await poolFull()
    const burst = 3 * POOL
    const results = await Promise.allSettled(
      Array.from({ length: burst }, (_, i) => create({ envs: { BURST_INDEX: String(i) }, timeoutMs: 120_000 })),
    )
    const burstDone = Date.now()
    const made = results.filter((r) => r.status === 'fulfilled').map((r) => r.value)
    try {
      assert.deepEqual(results.filter((r) => r.status === 'rejected').map((r) => String(r.reason)), [])
      assert.equal(new Set(made.map((s) => s.sandboxId)).size, burst)
      for (const [i, s] of made.entries()) {
        assert.equal((await s.commands.run('echo $BURST_INDEX')).stdout, `${i}\n`)
      }
      const m = await metrics()
      const h = hits(m) - hits(before)
      const mi = misses(m) - misses(before)
      assert.equal(h + mi, burst, 'every create of the burst is a hit or a miss')
      assert.ok(h >= POOL, `the pool was full when the burst began, yet only ${h} hits`)
      assert.equal(made.filter((s) => handedOver(s.sandboxId)).length, h)
      assert.equal(made.filter((s) => startedCold(s.sandboxId)).length, mi)
    } finally {
      await Promise.all(made.map((s) => s.kill()))
    }
    const m = await poolFull()
    console.log(`pool of ${POOL} full again ${Date.now() - burstDone} ms after the burst's creates returned`)
    assert.equal(m.paddock_warm_pools_claimed, 0)
    assert.equal(m.paddock_warm_pool_fill_failures_total, before.paddock_warm_pool_fill_failures_total)
  })
})
