// The official E2B JS SDK (npm `e2b` 2.51.0) against a real `paddock serve`: create, commands,
// envs and users, files (text and 5 MiB binary), list, connect, kill, wrong API key.

import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { after, before, describe, test } from 'node:test'

import { AuthenticationError, CommandExitError, FileType, Sandbox, SandboxError } from 'e2b'

import { PaddockServer } from '../paddock.mjs'

const server = new PaddockServer()
let sbx

async function listAll(opts) {
  const paginator = Sandbox.list(opts)
  const items = []
  while (paginator.hasNext) items.push(...(await paginator.nextItems()))
  return items
}

async function create(opts = {}) {
  const sandbox = await Sandbox.create(opts)
  server.track(sandbox.sandboxId)
  return sandbox
}

before(async () => {
  for (const key of Object.keys(process.env)) if (key.startsWith('E2B_')) delete process.env[key]
  await server.start()
  Object.assign(process.env, server.clientEnv())
  sbx = await create({ timeoutMs: 600_000, envs: { SBX_LEVEL: 'from-create' }, metadata: { suite: 'js' } })
})

after(async () => {
  if (!server.proc) return // start failed; `before` already reported why
  if (sbx) await sbx.kill().catch(() => {})
  await server.stopChecked()
})

describe('commands', () => {
  test('stdout, stderr and exit code 0', async () => {
    const r = await sbx.commands.run('echo out; echo err >&2')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'out\n')
    assert.equal(r.stderr, 'err\n')
  })

  test('non-zero exit throws CommandExitError', async () => {
    await assert.rejects(sbx.commands.run('echo boom >&2; exit 3'), (e) => {
      assert.ok(e instanceof CommandExitError, String(e))
      assert.equal(e.exitCode, 3)
      assert.equal(e.stderr, 'boom\n')
      return true
    })
  })

  test('envs: per command and per sandbox', async () => {
    assert.equal((await sbx.commands.run('echo "$A-$B"', { envs: { A: 'x y', B: '2' } })).stdout, 'x y-2\n')
    assert.equal((await sbx.commands.run('echo $SBX_LEVEL')).stdout, 'from-create\n')
  })

  test('default user and root', async () => {
    const user = await sbx.commands.run('whoami; id -u; echo $HOME; pwd')
    assert.deepEqual(user.stdout.trim().split('\n'), ['user', '1000', '/home/user', '/home/user'])
    const root = await sbx.commands.run('whoami; id -u; echo $HOME', { user: 'root' })
    assert.deepEqual(root.stdout.trim().split('\n'), ['root', '0', '/root'])
  })

  test('cwd', async () => {
    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
  })

  test('streaming callback and background kill', async () => {
    const chunks = []
    await sbx.commands.run('echo a; sleep 0.3; echo b', { onStdout: (d) => chunks.push(d) })
    assert.equal(chunks.join(''), 'a\nb\n')
    const handle = await sbx.commands.run('sleep 120', { background: true })
    assert.ok((await sbx.commands.list()).some((p) => p.pid === handle.pid))
    assert.equal(await sbx.commands.kill(handle.pid), true)
    await assert.rejects(handle.wait(), CommandExitError)
  })
})

describe('files', () => {
  test('write, read, list, exists, remove', async () => {
    const info = await sbx.files.write('/home/user/js/hello.txt', 'hello from js')
    assert.equal(info.path, '/home/user/js/hello.txt')
    assert.equal(await sbx.files.read('/home/user/js/hello.txt'), 'hello from js')
    assert.equal((await sbx.commands.run('cat /home/user/js/hello.txt')).stdout, 'hello from js')
    await sbx.files.makeDir('/home/user/js/sub')
    const entries = await sbx.files.list('/home/user/js')
    const byName = Object.fromEntries(entries.map((e) => [e.name, e]))
    assert.deepEqual(Object.keys(byName).sort(), ['hello.txt', 'sub'])
    assert.equal(byName['hello.txt'].type, FileType.FILE)
    assert.equal(byName['hello.txt'].size, 13)
    assert.equal(byName['hello.txt'].owner, 'user')
    assert.equal(byName.sub.type, FileType.DIR)
    assert.equal(await sbx.files.exists('/home/user/js/hello.txt'), true)
    assert.equal(await sbx.files.exists('/home/user/js/missing.txt'), false)
    await sbx.files.remove('/home/user/js/hello.txt')
    assert.equal(await sbx.files.exists('/home/user/js/hello.txt'), false)
  })

  test('5 MiB binary round trip', async () => {
    const data = randomBytes(5 * 1024 * 1024)
    const digest = createHash('sha256').update(data).digest('hex')
    const ab = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)
    await sbx.files.write('/home/user/js/blob.bin', ab)
    const inside = await sbx.commands.run('sha256sum /home/user/js/blob.bin')
    assert.equal(inside.stdout.split(' ')[0], digest)
    const back = await sbx.files.read('/home/user/js/blob.bin', { format: 'bytes' })
    assert.equal(back.length, data.length)
    assert.equal(createHash('sha256').update(back).digest('hex'), digest)
  })

  test('write as root into /root', async () => {
    await sbx.files.write('/root/js-root.txt', 'root', { user: 'root' })
    assert.equal((await sbx.commands.run('stat -c %U /root/js-root.txt', { user: 'root' })).stdout, 'root\n')
  })
})

describe('lifecycle', () => {
  test('list with metadata filter', async () => {
    const tag = 'js-' + randomBytes(4).toString('hex')
    const other = await create({ metadata: { jsTag: tag } })
    try {
      const found = await listAll({ query: { metadata: { jsTag: tag } } })
      assert.deepEqual(found.map((s) => s.sandboxId), [other.sandboxId])
      assert.equal(found[0].state, 'running')
      assert.deepEqual(found[0].metadata, { jsTag: tag })
    } finally {
      await other.kill()
    }
    assert.deepEqual(await listAll({ query: { metadata: { jsTag: tag } } }), [])
  })

  test('connect then run', async () => {
    await sbx.files.write('/home/user/js/connected.txt', 'same sandbox')
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal(again.sandboxId, sbx.sandboxId)
    assert.equal((await again.commands.run('cat /home/user/js/connected.txt')).stdout, 'same sandbox')
  })

  test('kill', async () => {
    const victim = await create()
    assert.equal(await victim.isRunning(), true)
    assert.equal(await victim.kill(), true)
    assert.equal(await victim.isRunning(), false)
    assert.equal(await Sandbox.kill(victim.sandboxId), false)
    await assert.rejects(victim.commands.run('true'), SandboxError)
  })

  test('wrong API key throws AuthenticationError', async () => {
    await assert.rejects(Sandbox.create({ apiKey: 'e2b_' + '0'.repeat(40) }), AuthenticationError)
  })

  test('unknown template is rejected with its name in the message', async () => {
    await assert.rejects(Sandbox.create('no-such-template-js'), (e) => {
      assert.match(String(e.message), /no-such-template-js/)
      return true
    })
  })
})
