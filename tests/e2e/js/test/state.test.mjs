// Sandbox state through the official E2B JS SDK (npm `e2b` 2.51.0) against a real `paddock serve`:
// pause in memory (`pause()` + `Sandbox.connect`: the same processes go on with their memory),
// pause to disk (`pause({ keepMemory: false })`: files kept, processes gone), persistent
// snapshots (`createSnapshot` → `Sandbox.create(snapshotId)`, `listSnapshots`, `deleteSnapshot`)
// and fork (`sbx.fork({ count })`: independent children with the parent's files).

import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'

import { Sandbox } from 'e2b'

import { PaddockServer, leakedCgroups, mountsUnder } from '../paddock.mjs'

const server = new PaddockServer()

const COUNTER = '/home/user/counter.txt'
// Appends 1, 2, 3, ... every 100 ms; the count lives only in the process's memory, so a
// restarted process would start again at 1 and a gap would show a lost stretch of time.
const COUNTER_SCRIPT = [
  'import time',
  'i = 0',
  'while True:',
  '    i += 1',
  `    with open('${COUNTER}', 'a') as f:`,
  "        f.write(f'{i}\\n')",
  '    time.sleep(0.1)',
  '',
].join('\n')

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Polls `probe` every 100 ms until it returns something truthy; fails after `timeoutMs`. */
async function waitFor(probe, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value) return value
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(100)
  }
}

/** Whole numbers of a counter file (a line being written at that moment is left out). */
function numbers(text) {
  return text
    .split('\n')
    .slice(0, text.endsWith('\n') ? undefined : -1)
    .filter(Boolean)
    .map(Number)
}

/** Asserts `seq` is exactly 1, 2, ..., n: one process counted, never restarted, never skipped. */
function assertOneRun(seq, what) {
  const want = Array.from({ length: seq.length }, (_, i) => i + 1)
  assert.deepEqual(seq, want, `${what}: not one unbroken count`)
}

async function create(template, opts = {}) {
  const sandbox = template === undefined ? await Sandbox.create(opts) : await Sandbox.create(template, opts)
  server.track(sandbox.sandboxId)
  return sandbox
}

/** Kills every sandbox given (ids or instances), ignoring ones already gone. */
async function killAll(...sandboxes) {
  await Promise.all(
    sandboxes
      .filter((s) => s && !(s instanceof Error))
      .map((s) => Sandbox.kill(typeof s === 'string' ? s : s.sandboxId).catch(() => false)),
  )
}

/** Starts the counter in the background and waits until it has written a few lines. */
async function startCounter(sbx) {
  await sbx.files.write('/home/user/counter.py', COUNTER_SCRIPT)
  const handle = await sbx.commands.run('python3 /home/user/counter.py', { background: true, timeoutMs: 0 })
  await waitFor(
    async () => (await sbx.files.exists(COUNTER)) && numbers(await sbx.files.read(COUNTER)).length >= 5,
    'the counter to start',
  )
  return handle
}

/** The sandbox's counter file as seen from the host (its writable layer), readable while frozen. */
function hostCounterPath(sandboxId) {
  return path.join(server.dataDir, 'sandboxes', sandboxId, 'disk', 'upper', COUNTER.slice(1))
}

/** The raw `GET /sandboxes/{id}` body (the JS SDK's getInfo() leaves `pauseMode` out). */
async function rawInfo(sandboxId) {
  const r = await fetch(`${server.apiUrl}/sandboxes/${sandboxId}`, { headers: { 'X-API-Key': server.apiKey } })
  assert.equal(r.status, 200, await r.clone().text())
  return r.json()
}

async function listSnapshots(opts) {
  const paginator = Sandbox.listSnapshots(opts)
  const items = []
  while (paginator.hasNext) items.push(...(await paginator.nextItems()))
  return items
}

before(async () => {
  for (const key of Object.keys(process.env)) if (key.startsWith('E2B_')) delete process.env[key]
  await server.start()
  Object.assign(process.env, server.clientEnv())
})

after(async () => {
  if (!server.proc) return // start failed; `before` already reported why
  await killAll(...server.createdIds)
  await server.stopChecked()
})

describe('pause in memory', () => {
  test('a running process keeps counting from where it was', async () => {
    const sbx = await create(undefined, { timeoutMs: 300_000 })
    try {
      const handle = await startCounter(sbx)
      const onHost = hostCounterPath(sbx.sandboxId)
      assert.ok(fs.existsSync(onHost), `counter not found on the host at ${onHost}`)

      assert.equal(await sbx.pause(), true)
      assert.equal((await sbx.getInfo()).state, 'paused')
      assert.equal((await rawInfo(sbx.sandboxId)).pauseMode, 'full')
      assert.equal(await sbx.pause(), false, 'pausing a paused sandbox')
      // Frozen: over a whole second nothing is appended (the counter would add ~10 lines).
      const frozen = fs.readFileSync(onHost, 'utf8')
      await sleep(1000)
      assert.equal(fs.readFileSync(onHost, 'utf8'), frozen, 'a paused sandbox kept writing')
      // envd is frozen too; the SDK reads its port as not running.
      assert.equal(await sbx.isRunning(), false)

      const resumed = await Sandbox.connect(sbx.sandboxId)
      assert.equal(resumed.sandboxId, sbx.sandboxId)
      assert.equal((await resumed.getInfo()).state, 'running')
      const pausedAt = numbers(frozen).at(-1)
      await waitFor(
        async () => numbers(await resumed.files.read(COUNTER)).at(-1) >= pausedAt + 5,
        'counting after resume',
      )
      const seq = numbers(await resumed.files.read(COUNTER))
      assertOneRun(seq, 'counter after resume')
      assert.ok(seq.length >= pausedAt + 5)
      // The very same process is still running.
      const pids = (await resumed.commands.list()).map((p) => p.pid)
      assert.ok(pids.includes(handle.pid), `pid ${handle.pid} not in ${JSON.stringify(pids)}`)
    } finally {
      await killAll(sbx)
    }
  })

  test('five pause/connect cycles lose no file and no count', async () => {
    let sbx = await create(undefined, { timeoutMs: 300_000 })
    const id = sbx.sandboxId
    try {
      const handle = await startCounter(sbx)
      const written = new Map()
      let log = ''
      let lastCount = 0
      for (let i = 0; i < 5; i++) {
        const data = Buffer.concat([Buffer.from(`cycle ${i} `.repeat(300 * (i + 1))), randomBytes(4096 + i * 777)])
        const file = `/home/user/cycles/file-${i}.bin`
        await sbx.files.write(file, data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))
        written.set(file, createHash('sha256').update(data).digest('hex'))
        await sbx.commands.run(`printf 'line ${i}\\n' >> /home/user/cycles/log.txt`)
        log += `line ${i}\n`

        assert.equal(await sbx.pause(), true, `pause in cycle ${i}`)
        assert.equal((await Sandbox.getInfo(id)).state, 'paused')
        sbx = await Sandbox.connect(id)
        assert.equal((await sbx.getInfo()).state, 'running')

        // Everything written so far, in every cycle, is there byte for byte.
        for (const [p, digest] of written) {
          const back = await sbx.files.read(p, { format: 'bytes' })
          assert.equal(createHash('sha256').update(back).digest('hex'), digest, `${p} after cycle ${i}`)
        }
        assert.equal(await sbx.files.read('/home/user/cycles/log.txt'), log)
        // The counter goes on past where it was, in one unbroken run.
        const seq = await waitFor(async () => {
          const s = numbers(await sbx.files.read(COUNTER))
          return s.length > lastCount + 2 && s
        }, `counting after cycle ${i}`)
        assertOneRun(seq, `counter after cycle ${i}`)
        lastCount = seq.length
      }
      assert.ok((await sbx.commands.list()).some((p) => p.pid === handle.pid), 'the counter process is gone')
    } finally {
      await killAll(id)
    }
  })
})

describe('pause to disk', () => {
  test('files are kept, processes are not', async () => {
    const sbx = await create(undefined, { timeoutMs: 300_000 })
    const id = sbx.sandboxId
    try {
      const handle = await startCounter(sbx)
      const blob = Buffer.concat(Array.from({ length: 64 }, () => Buffer.from(Array.from({ length: 256 }, (_, i) => i))))
      await sbx.files.write('/home/user/kept.bin', blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.byteLength))
      await sbx.files.write('/root/kept-by-root.txt', 'root was here', { user: 'root' })

      assert.equal(await sbx.pause({ keepMemory: false }), true)
      const info = await sbx.getInfo()
      assert.equal(info.state, 'paused')
      assert.equal((await rawInfo(id)).pauseMode, 'filesystem')
      // Nothing of it runs on the host: no cgroup, no mounted disk.
      assert.deepEqual(leakedCgroups(new Set([id])), [])
      assert.deepEqual(mountsUnder(path.join(server.dataDir, 'sandboxes', id, 'disk')), [])
      assert.equal(await sbx.pause(), false, 'pausing a sandbox paused to disk')
      assert.equal((await Sandbox.getInfo(id)).state, 'paused')

      const resumed = await Sandbox.connect(id)
      assert.equal((await resumed.getInfo()).state, 'running')
      assert.equal((await rawInfo(id)).pauseMode, undefined)
      assert.deepEqual(Buffer.from(await resumed.files.read('/home/user/kept.bin', { format: 'bytes' })), blob)
      assert.equal(await resumed.files.read('/root/kept-by-root.txt', { user: 'root' }), 'root was here')

      // The counter's file is kept as the pause found it; the counter itself is gone.
      const counted = numbers(await resumed.files.read(COUNTER))
      assert.ok(counted.length >= 5, `only ${counted.length} lines kept`)
      assertOneRun(counted, 'counter file after resume from disk')
      assert.ok(!(await resumed.commands.list()).some((p) => p.pid === handle.pid), 'old pid still listed')
      const ps = await resumed.commands.run('ps -eo args= | grep -c "[c]ounter.py" || true')
      assert.equal(ps.stdout.trim(), '0', 'a counter process runs after a resume from disk')
      assert.equal(numbers(await resumed.files.read(COUNTER)).length, counted.length, 'the counter file grew')
      assert.equal((await resumed.commands.run('echo alive')).stdout, 'alive\n')
    } finally {
      await killAll(id)
    }
  })
})

// A user file (with a mode and a symlink), a root-owned tree, and a template file deleted.
const PROBE =
  "cat /home/user/note.txt; echo; stat -c '%U %a' /home/user/note.txt; readlink /home/user/link; " +
  'cat /opt/made-by-root/file; stat -c %U /opt/made-by-root/file; ' +
  'test -e /etc/issue && echo issue-present || echo issue-deleted'
const PROBE_WANT = 'from the parent\nuser 640\nnote.txt\nroot-data\nroot\nissue-deleted\n'

async function prepare(sbx) {
  assert.equal((await sbx.commands.run('test -e /etc/issue && echo yes')).stdout, 'yes\n', 'template has /etc/issue')
  await sbx.files.write('/home/user/note.txt', 'from the parent')
  await sbx.commands.run('chmod 640 /home/user/note.txt && ln -s note.txt /home/user/link')
  await sbx.files.write('/opt/made-by-root/file', 'root-data\n', { user: 'root' })
  await sbx.commands.run('rm /etc/issue', { user: 'root' })
  assert.equal((await sbx.commands.run(PROBE)).stdout, PROBE_WANT)
}

describe('snapshots', () => {
  test('a snapshot starts new sandboxes with the files; list and delete', async () => {
    const parent = await create(undefined, { timeoutMs: 300_000 })
    const name = 'js-snap-' + randomBytes(4).toString('hex')
    let snapshotId
    let child
    try {
      await prepare(parent)
      const snap = await parent.createSnapshot({ name })
      snapshotId = snap.snapshotId
      assert.equal(snap.snapshotId, `${name}:default`)
      assert.deepEqual(snap.names, [name])

      // The parent goes on running, unchanged.
      assert.equal(await parent.isRunning(), true)
      assert.equal((await parent.getInfo()).state, 'running')
      assert.equal((await parent.commands.run(PROBE)).stdout, PROBE_WANT)

      child = await create(snap.snapshotId, { timeoutMs: 120_000 })
      assert.notEqual(child.sandboxId, parent.sandboxId)
      assert.equal((await child.commands.run(PROBE)).stdout, PROBE_WANT)
      assert.equal((await child.getInfo()).templateId, name)
      // The child's writes are its own.
      await child.files.write('/home/user/note.txt', 'child')
      assert.equal(await parent.files.read('/home/user/note.txt'), 'from the parent')

      // Listed by its source sandbox (static and instance forms) and by name.
      const ids = (items) => items.map((s) => s.snapshotId)
      assert.deepEqual(ids(await listSnapshots({ sandboxId: parent.sandboxId })), [snapshotId])
      assert.deepEqual(ids(await parent.listSnapshots().nextItems()), [snapshotId])
      assert.deepEqual(ids(await listSnapshots({ name })), [snapshotId])
      assert.deepEqual(await listSnapshots({ sandboxId: child.sandboxId }), [])

      assert.equal(await Sandbox.deleteSnapshot(snapshotId), true)
      assert.equal(await Sandbox.deleteSnapshot(snapshotId), false)
      snapshotId = undefined
      assert.deepEqual(await listSnapshots({ sandboxId: parent.sandboxId }), [])
      // A sandbox started from it keeps running; new ones cannot start from it.
      assert.equal(await child.files.read('/home/user/note.txt'), 'child')
      await assert.rejects(create(`${name}:default`, { timeoutMs: 30_000 }), (e) => {
        assert.match(String(e.message).toLowerCase(), /not found/)
        return true
      })
    } finally {
      if (snapshotId) await Sandbox.deleteSnapshot(snapshotId).catch(() => false)
      await killAll(parent, child)
    }
  })
})

describe('fork', () => {
  test('three children of a running sandbox diverge without touching the parent', async () => {
    const parent = await create(undefined, {
      timeoutMs: 300_000,
      envs: { FORK_ENV: 'inherited' },
      metadata: { role: 'js-fork-parent' },
    })
    let kids = []
    try {
      await prepare(parent)
      const counter = await startCounter(parent)

      kids = await parent.fork({ count: 3, timeoutMs: 120_000 })
      for (const k of kids) if (k instanceof Sandbox) server.track(k.sandboxId)
      assert.equal(kids.length, 3)
      for (const k of kids) assert.ok(k instanceof Sandbox, `a fork failed: ${k}`)

      const ids = new Set([parent.sandboxId, ...kids.map((k) => k.sandboxId)])
      assert.equal(ids.size, 4, 'fork ids are not distinct')
      const hostnames = await Promise.all(kids.map(async (k) => (await k.commands.run('hostname')).stdout.trim()))
      assert.deepEqual(hostnames, kids.map((k) => k.sandboxId))
      assert.equal((await parent.commands.run('hostname')).stdout.trim(), parent.sandboxId)

      for (const k of kids) {
        assert.equal((await k.commands.run(PROBE)).stdout, PROBE_WANT)
        assert.equal((await k.commands.run('echo $FORK_ENV')).stdout, 'inherited\n')
        const info = await k.getInfo()
        assert.equal(info.state, 'running')
        assert.deepEqual(info.metadata, { role: 'js-fork-parent' })
        // Files, not processes: the copied counter file is there, its writer is not.
        assertOneRun(numbers(await k.files.read(COUNTER)), `counter file in ${k.sandboxId}`)
        const ps = await k.commands.run('ps -eo args= | grep -c "[c]ounter.py" || true')
        assert.equal(ps.stdout.trim(), '0', `a counter process runs in fork ${k.sandboxId}`)
      }

      // Each child writes its own contents, as the user and as root.
      await Promise.all(
        kids.map(async (k, i) => {
          await k.files.write('/home/user/note.txt', `kid ${i}`)
          await k.files.write('/opt/mine', `${i}\n`, { user: 'root' })
          await k.commands.run('rm /opt/made-by-root/file', { user: 'root' })
        }),
      )
      for (const [i, k] of kids.entries()) {
        assert.equal(await k.files.read('/home/user/note.txt'), `kid ${i}`)
        assert.equal((await k.commands.run('cat /opt/mine; ls /opt/made-by-root | wc -l')).stdout, `${i}\n0\n`)
      }
      // The parent is untouched, and its process kept running through the fork.
      assert.equal((await parent.commands.run(PROBE)).stdout, PROBE_WANT)
      assert.equal(await parent.files.exists('/opt/mine'), false)
      assert.ok((await parent.commands.list()).some((p) => p.pid === counter.pid), 'the parent lost its process')
      const atFork = numbers(await kids[0].files.read(COUNTER)).length
      const seq = await waitFor(async () => {
        const s = numbers(await parent.files.read(COUNTER))
        return s.length > atFork + 3 && s
      }, "the parent's counter to go on after the fork")
      assertOneRun(seq, "parent's counter after the fork")
      // The parent's later writes do not reach the children.
      await parent.files.write('/home/user/later.txt', 'after the fork')
      for (const k of kids) assert.equal(await k.files.exists('/home/user/later.txt'), false)
    } finally {
      await killAll(parent, ...kids)
    }
  })
})
