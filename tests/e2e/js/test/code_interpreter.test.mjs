// The official E2B code-interpreter JS SDK (npm `@e2b/code-interpreter` 2.8.0) against a real
// `paddock serve`, as its docs use it: `Sandbox.create()` (the `code-interpreter-v1` template
// every server makes; scripts/test.sh bakes it into the shared templates dir beforehand, so it
// is ready, or the server is finishing it and creates answer 503 "not ready yet" meanwhile).

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { Sandbox } from '@e2b/code-interpreter'

import { PaddockServer } from '../paddock.mjs'

const server = new PaddockServer()
let sbx

before(async () => {
  for (const key of Object.keys(process.env)) if (key.startsWith('E2B_')) delete process.env[key]
  await server.start()
  Object.assign(process.env, server.clientEnv())
  const deadline = Date.now() + 900_000
  for (;;) {
    try {
      sbx = await Sandbox.create({ timeoutMs: 600_000 })
      break
    } catch (e) {
      assert.match(String(e), /not ready yet/)
      assert.ok(Date.now() < deadline, `code-interpreter-v1 was not built in time: ${e}`)
      await new Promise((r) => setTimeout(r, 5000))
    }
  }
  server.track(sbx.sandboxId)
})

after(async () => {
  if (!server.proc) return
  if (sbx) await sbx.kill().catch(() => {})
  await server.stopChecked()
})

describe('code interpreter', () => {
  test('Python: state, streamed output, results, errors', async () => {
    const seen = []
    const first = await sbx.runCode("x = 41\nprint('hello')\nx + 1", { onStdout: (m) => seen.push(m.line) })
    assert.equal(first.text, '42')
    assert.deepEqual(first.logs.stdout, ['hello\n'])
    assert.deepEqual(seen, ['hello\n'])
    assert.equal((await sbx.runCode('x')).text, '41')
    const err = await sbx.runCode('1 / 0')
    assert.equal(err.error?.name, 'ZeroDivisionError')
    const df = await sbx.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert.match(df.results[0].html ?? '', /<table/)
  })

  test('charts come back as PNG and as data', async () => {
    const ex = await sbx.runCode(
      "import matplotlib.pyplot as plt\nplt.bar(['A', 'B'], [3, 4], label='Sold')\nplt.title('Sales')\nplt.show()",
    )
    const shown = ex.results.find((r) => r.png)
    assert.ok(shown, JSON.stringify(ex))
    assert.equal(shown.chart?.type, 'bar')
    assert.equal(shown.chart?.title, 'Sales')
    assert.deepEqual(shown.chart?.elements.map((e) => [e.label, e.value]), [['A', 3], ['B', 4]])
  })

  test('JavaScript, TypeScript, R and Bash', async () => {
    const js = await sbx.runCode("const n = 6; console.log('js'); n * 7", { language: 'js' })
    assert.equal(js.error, undefined, JSON.stringify(js.error))
    assert.equal(js.text, '42')
    assert.deepEqual(js.logs.stdout, ['js\n'])
    assert.equal((await sbx.runCode('n + 1', { language: 'javascript' })).text, '7')
    const ts = await sbx.runCode('const m: number = 2;\nm * 21', { language: 'ts' })
    assert.equal(ts.text, '42', JSON.stringify(ts))
    const r = await sbx.runCode('sum(c(20, 22))', { language: 'r' })
    assert.equal(r.text, '[1] 42', JSON.stringify(r))
    const sh = await sbx.runCode('echo $((6 * 7))', { language: 'bash' })
    assert.deepEqual(sh.logs.stdout, ['42\n'])
  })

  test('contexts: separate, listed, restarted, removed; per-run env vars', async () => {
    const ctx = await sbx.createCodeContext({ cwd: '/tmp' })
    assert.equal(ctx.language, 'python')
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, '/tmp')
    assert.equal((await sbx.runCode('x', { context: ctx })).error?.name, 'NameError')
    const languages = (await sbx.listCodeContexts()).map((c) => c.language)
    assert.ok(languages.includes('python') && languages.includes('javascript'), String(languages))
    await sbx.restartCodeContext(ctx)
    await sbx.removeCodeContext(ctx)
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id))
    const once = await sbx.runCode("import os; os.environ.get('ONCE')", { envs: { ONCE: 'now' } })
    assert.equal(once.text, 'now')
    assert.equal((await sbx.runCode("import os; os.environ.get('ONCE', 'gone')")).text, 'gone')
  })

  test('a run past its timeout is interrupted and the context carries on', async () => {
    await assert.rejects(sbx.runCode('import time; time.sleep(60)', { timeoutMs: 2000 }))
    const started = Date.now()
    assert.equal((await sbx.runCode('1 + 1', { timeoutMs: 30_000 })).text, '2')
    assert.ok(Date.now() - started < 3000)
  })
})
