// The browser harness itself: Debian's Chromium starts headless under playwright-core and
// renders a page served on loopback (a failure here is the machine, not the dashboard).

import assert from 'node:assert/strict'
import http from 'node:http'
import { test } from 'node:test'

import { launch, watchErrors } from './chromium.mjs'

test('chromium renders a page served on loopback', async () => {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end('<!doctype html><title>probe</title><button id=b onclick="this.textContent=\'clicked\'">go</button>')
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { context, close } = await launch()
  try {
    const page = await context.newPage()
    const errors = watchErrors(page)
    await page.goto(`http://127.0.0.1:${server.address().port}/`)
    await page.click('#b')
    assert.equal(await page.textContent('#b'), 'clicked')
    assert.deepEqual(errors, [])
  } finally {
    await close()
    server.close()
  }
})
