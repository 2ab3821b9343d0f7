// Template builds through the official E2B JS SDK (npm `e2b` 2.51.0) against a real
// `paddock serve` (the JS twin of tests/e2e/python/test_template_build.py): `Template()` from
// `base` with a RUN as root, a COPY of a context directory made here (owner and `mode`), ENV,
// WORKDIR, a RUN that sees the ENV, USER and a start command with `waitForPort`; a sandbox of
// it (files, env, cwd, user, the server up for the first command); an unchanged rebuild served
// from the build cache; a failing RUN as a `BuildError`; deleting the templates.
//
// Nothing is downloaded: the context is a directory made by the test and every step runs on
// this machine.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'

import { BuildError, Sandbox, Template, waitForPort } from 'e2b'

import { PaddockServer } from '../paddock.mjs'

const server = new PaddockServer()
const run = randomBytes(4).toString('hex')
const builtName = `js-built-${run}`
const failingName = `js-fails-${run}`
/** Every template this file asks the server to build; deleted in `after` if still there. */
const templates = new Set()

const ROOT_RUN = 'mkdir -p /opt/js && whoami > /opt/js/made-by'
const USER_RUN = 'echo "$GREETING" > from-build.txt && whoami >> from-build.txt'
const ENVS = { GREETING: 'hello from js', APP_MODE: 'js-test' }

let context

/** The context directory: `app/` with two files and a subdirectory with a third. */
function makeContext() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'paddock-e2e-js-ctx-'))
  fs.mkdirSync(path.join(dir, 'app', 'sub'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'app', 'index.html'), '<h1>built by the js sdk</h1>\n')
  fs.writeFileSync(path.join(dir, 'app', 'notes.txt'), 'context file\n')
  fs.writeFileSync(path.join(dir, 'app', 'sub', 'deep.txt'), 'deep file\n')
  fs.writeFileSync(path.join(dir, 'not-copied.txt'), 'stays out\n')
  return dir
}

function recipe() {
  return Template({ fileContextPath: context })
    .fromTemplate('base')
    .runCmd(ROOT_RUN, { user: 'root' })
    .copy('app', '/srv/app/', { mode: 0o640 })
    .setEnvs(ENVS)
    .setWorkdir('/srv/app')
    .runCmd(USER_RUN)
    .setUser('user')
    .setStartCmd('python3 -m http.server 8000', waitForPort(8000))
}

/** Builds `template` as `name`; returns the build info, the log messages and the seconds taken. */
async function build(template, name, options = {}) {
  templates.add(name)
  const logs = []
  const t0 = Date.now()
  const info = await Template.build(template, name, { ...options, onBuildLogs: (e) => logs.push(e.message) })
  return { info, logs, seconds: (Date.now() - t0) / 1000 }
}

/** `DELETE /templates/{name}` with the API key; the HTTP status. */
async function deleteTemplate(name) {
  const r = await fetch(`${server.apiUrl}/templates/${encodeURIComponent(name)}`, {
    method: 'DELETE',
    headers: { 'X-API-Key': server.apiKey },
  })
  await r.arrayBuffer()
  return r.status
}

async function out(sbx, cmd, opts) {
  return (await sbx.commands.run(cmd, opts)).stdout.trim()
}

/** The step titles (`[i/n] RUN ...`) of a build's log, without the `CACHED ` prefix. */
function steps(logs, { cached }) {
  return logs
    .filter((m) => m.startsWith('CACHED ') === cached)
    .map((m) => (cached ? m.slice('CACHED '.length) : m))
    .filter((m) => /^\[\d+\/\d+\] /.test(m))
    .map((m) => m.replace(/^\[\d+\/\d+\] /, ''))
}

/** The file-changing steps of `recipe()`, as the build log names them. */
const FILE_STEPS = [`RUN (as root) ${ROOT_RUN}`, 'COPY app /srv/app/', 'WORKDIR /srv/app', `RUN ${USER_RUN}`]

before(async () => {
  for (const key of Object.keys(process.env)) if (key.startsWith('E2B_')) delete process.env[key]
  context = makeContext()
  await server.start()
  Object.assign(process.env, server.clientEnv())
})

after(async () => {
  if (context) fs.rmSync(context, { recursive: true, force: true })
  if (!server.proc) return // start failed; `before` already reported why
  await Promise.all([...server.createdIds].map((id) => Sandbox.kill(id).catch(() => false)))
  // Templates a failed test left behind (the last test deletes them when all goes well).
  for (const name of templates) await deleteTemplate(name).catch(() => {})
  await server.stopChecked()
})

describe('template build with the JS SDK', () => {
  let first

  test('builds every step (skipCache) and names them in the logs', async () => {
    // skipCache: the steps run here even if an earlier run left them in the shared build
    // cache (and replace those cached layers rather than adding new ones).
    first = await build(recipe(), builtName, { skipCache: true, cpuCount: 1, memoryMB: 512 })
    console.log(`first build: ${first.seconds.toFixed(1)} s`)
    assert.equal(first.info.name, builtName)
    assert.ok(first.info.templateId && first.info.buildId, JSON.stringify(first.info))
    assert.deepEqual(steps(first.logs, { cached: true }), [], first.logs.join('\n'))
    const ran = steps(first.logs, { cached: false })
    for (const s of FILE_STEPS) assert.ok(ran.includes(s), `step '${s}' not in the log:\n${first.logs.join('\n')}`)
    assert.equal(await Template.exists(builtName), true)
  })

  test('a sandbox of it has the files, env, workdir, user and the running server', async () => {
    assert.ok(first, 'the build failed')
    const sbx = await Sandbox.create(builtName, { timeoutMs: 300_000 })
    server.track(sbx.sandboxId)
    try {
      // The start command already listens: the very first command finds the server up.
      assert.equal(await out(sbx, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/"), '200')
      assert.match(await out(sbx, 'curl -s http://127.0.0.1:8000/index.html'), /built by the js sdk/)
      // RUN as root.
      assert.equal(await out(sbx, 'cat /opt/js/made-by'), 'root')
      assert.equal(await out(sbx, "stat -c '%U' /opt/js/made-by"), 'root')
      // COPY of the directory: its contents (subdirectory included), owned by `user`, files 0640.
      assert.equal(await out(sbx, 'cat /srv/app/notes.txt'), 'context file')
      assert.equal(await out(sbx, 'cat /srv/app/sub/deep.txt'), 'deep file')
      assert.equal(await out(sbx, 'ls /srv/app | sort | tr "\\n" " "'), 'from-build.txt index.html notes.txt sub')
      assert.equal(await out(sbx, 'test -e /srv/app/not-copied.txt && echo yes || echo no'), 'no')
      for (const f of ['index.html', 'notes.txt', 'sub/deep.txt']) {
        assert.equal(await out(sbx, `stat -c '%U %a' /srv/app/${f}`), 'user 640', f)
      }
      assert.equal(await out(sbx, "stat -c '%U %F' /srv/app/sub"), 'user directory')
      assert.equal(await out(sbx, "stat -c '%U' /srv/app"), 'user')
      // ENV: seen by a later RUN of the build and by the sandbox's commands.
      assert.equal(await out(sbx, 'cat /srv/app/from-build.txt'), 'hello from js\nuser')
      assert.equal(await out(sbx, 'echo "$GREETING/$APP_MODE"'), 'hello from js/js-test')
      // WORKDIR and USER.
      assert.equal(await out(sbx, 'pwd'), '/srv/app')
      assert.equal(await out(sbx, 'whoami'), 'user')
      // Resources given to the build apply to its sandboxes.
      const info = await sbx.getInfo()
      assert.equal(info.cpuCount, 1)
      assert.equal(info.memoryMB, 512)
    } finally {
      await sbx.kill().catch(() => {})
    }
  })

  test('an unchanged rebuild takes every file-changing step from the cache', async () => {
    assert.ok(first, 'the build failed')
    const again = await build(recipe(), builtName)
    console.log(`cached rebuild: ${again.seconds.toFixed(1)} s`)
    assert.deepEqual(steps(again.logs, { cached: true }), FILE_STEPS, again.logs.join('\n'))
    const rebuilt = steps(again.logs, { cached: false }).filter((s) => /^(RUN|COPY|WORKDIR) /.test(s))
    assert.deepEqual(rebuilt, [], again.logs.join('\n'))
    assert.equal(again.info.templateId, first.info.templateId)
  })

  test('a failing runCmd rejects with a BuildError naming the exit code and the output', async () => {
    // The marker is computed by the shell, so it can only reach the message as output.
    const t = Template()
      .fromTemplate('base')
      .runCmd('echo first-line')
      .runCmd('echo js-marker-$((6 * 7)); echo js-err >&2; exit 9')
    await assert.rejects(build(t, failingName), (e) => {
      assert.ok(e instanceof BuildError, `${e?.constructor?.name}: ${e}`)
      const message = String(e.message)
      assert.match(message, /exit code 9/)
      const output = message.split('exit code 9')[1]
      assert.match(output, /js-marker-42/, message)
      assert.match(output, /js-err/, message)
      return true
    })
  })

  test('the templates are deleted with DELETE /templates/{name}', async () => {
    assert.equal(await deleteTemplate(builtName), 204)
    templates.delete(builtName)
    assert.equal(await Template.exists(builtName), false)
    await assert.rejects(Sandbox.create(builtName), (e) => {
      assert.match(String(e.message), new RegExp(builtName))
      return true
    })
    // The failed build published nothing; its record (if any) goes too.
    assert.ok([204, 404].includes(await deleteTemplate(failingName)))
    templates.delete(failingName)
    assert.equal(await Template.exists(failingName), false)
  })
})
